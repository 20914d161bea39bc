"""PIQE: Perception-based Image Quality Evaluator.

N. Venkatanath, D. Praneeth, Maruthi Chandrasekhar Bh, S. S. Channappayya and S. S. Medasani, "Blind image
quality evaluation using perception based features", National Conference on Communications (NCC), 2015.
Follows the reference implementation in MATLAB's Image Processing Toolbox (``piqe``): the grey image is padded
(replicate, bottom/right) to a multiple of 16, MSCN coefficients use a 7×7 Gaussian (σ = 7/6, replicate
padding), and each 16×16 block whose MSCN variance exceeds 0.1 is "active". An active block is distorted by a
*noticeable artefact* when some 6-pixel segment of one of its four edges has a standard deviation below 0.1,
and by *noise* when its deviation exceeds twice its centre–surround dispersion ratio β. The score is
``100 · (Σ distortion + 1)/(active blocks + 1)``, 0 (best) to 100.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmmiqa.tools._matlab import gaussian_1d, separable_same
from lmmiqa.tools._nss import normalize_contrast
from lmmiqa.tools.base import NR, Tool, luminance

BLOCK = 16
ACTIVITY_THRESHOLD = 0.1
IMPAIRED_THRESHOLD = 0.1
SEGMENT = 6


def _segment_std(edges: np.ndarray) -> np.ndarray:
    """Sample standard deviation of every run of ``SEGMENT`` consecutive pixels along the last axis."""
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(edges, SEGMENT, axis=-1).std(axis=-1, ddof=1)


def piqe_blocks(grey: np.ndarray) -> dict[str, np.ndarray]:
    """Per-block quantities of PIQE (pure function): variance, activity, artefact and noise flags.

    Returns arrays of shape (block rows, block columns): ``variance``, ``active``, ``artifact``, ``noise``.
    """
    img = np.asarray(grey, dtype=np.float64)
    h, w = img.shape
    if h % BLOCK or w % BLOCK:
        img = np.pad(img, ((0, (-h) % BLOCK), (0, (-w) % BLOCK)), mode="edge")
    g = gaussian_1d(7, 7.0 / 6.0)  # fspecial('gaussian', 7, 7/6), applied in two 1-D passes
    norm = normalize_contrast(img, separable_same(img, g, "nearest"), separable_same(img * img, g, "nearest"))
    nby, nbx = norm.shape[0] // BLOCK, norm.shape[1] // BLOCK
    blocks = np.ascontiguousarray(norm.reshape(nby, BLOCK, nbx, BLOCK).transpose(0, 2, 1, 3))
    variance = blocks.reshape(nby, nbx, -1).var(axis=-1, ddof=1)
    active = variance > ACTIVITY_THRESHOLD

    # the distortion tests only matter for active blocks (the reference implementation skips the others)
    act = blocks[active]  # (active blocks, 16, 16)
    edges = np.stack([act[:, 0, :], act[:, :, -1], act[:, -1, :], act[:, :, 0]])  # (4, active, 16)
    artifact_act = (_segment_std(edges) < IMPAIRED_THRESHOLD).any(axis=(0, 2))

    # centre = the two middle columns; the surround leaves out columns 8 and 10 (1-based), as the reference
    # implementation deletes column 8 and then column 9 of what remains
    centre = np.concatenate([act[:, :, 7], act[:, :, 8]], axis=-1)
    surround = act[:, :, [c for c in range(BLOCK) if c not in (7, 9)]].reshape(act.shape[0], BLOCK * (BLOCK - 2))
    block_sigma = np.sqrt(variance[active])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = centre.std(axis=-1, ddof=1) / surround.std(axis=-1, ddof=1)
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        beta = np.abs(block_sigma - ratio) / np.maximum(block_sigma, ratio)
        noise_act = block_sigma > 2.0 * beta
    artifact = np.zeros_like(active)
    noise = np.zeros_like(active)
    artifact[active] = artifact_act
    noise[active] = noise_act
    return {"variance": variance, "active": active, "artifact": artifact, "noise": noise}


def pool_blocks(blocks: dict[str, np.ndarray]) -> float:
    """The PIQE score from :func:`piqe_blocks`: an artefact block adds ``1 − variance``, a noisy block adds
    ``variance``; ``100 · (Σ + 1)/(active + 1)``."""
    var, active = blocks["variance"], blocks["active"]
    dist = np.where(blocks["artifact"], 1.0 - var, 0.0) + np.where(blocks["noise"], var, 0.0)
    return float((dist[active].sum() + 1.0) / (1.0 + active.sum()) * 100.0)


def piqe_score(grey: np.ndarray) -> float:
    """PIQE of a 0–255 grey image (pure function), 0 (best) to 100."""
    return pool_blocks(piqe_blocks(grey))


class PIQE(Tool):
    """PIQE (Venkatanath et al. 2015): block-wise artefact and noise detection in spatially active regions."""

    name = "piqe"
    kind = NR
    higher_is_better = False
    typical_range = (0.0, 100.0)
    bounds = (0.0, 100.0)
    description = (
        "Block-wise perceptual distortion: finds busy 16×16 blocks and flags blocking/sudden artefacts at "
        "block edges and Gaussian-like noise; good at compression blocking and noise, localizes them. "
        "Uniform images score 100 (worst)."
    )
    citation = "Venkatanath et al., NCC 2015"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        b = piqe_blocks(luminance(rgb, "gray"))
        return pool_blocks(b), {
            "active_blocks": int(b["active"].sum()),
            "artifact_blocks": int(b["artifact"].sum()),
            "noise_blocks": int(b["noise"].sum()),
            "blocks": int(b["active"].size),
        }
