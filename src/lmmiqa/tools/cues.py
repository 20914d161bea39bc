"""Simple measurable no-reference cues an agent can call to check one specific property of an image.

Each cue is a pure function of an 8-bit RGB array plus a small :class:`~lmmiqa.tools.base.Tool` around it:

* ``sharpness`` — variance of the Laplacian of the grey image (Pech-Pacheco et al., "Diatom autofocusing in
  brightfield microscopy: a comparative study", ICPR 2000);
* ``noise`` — Immerkær's fast noise standard-deviation estimate ("Fast noise variance estimation", CVIU 64(2),
  1996);
* ``contrast`` — RMS contrast, the standard deviation of grey levels scaled to [0, 1] (Peli, "Contrast in
  complex images", JOSA A 7(10), 1990);
* ``exposure`` — fraction of clipped pixels (crushed shadows and blown highlights), with mean brightness;
* ``colorfulness`` — Hasler & Süsstrunk, "Measuring colourfulness in natural images", SPIE HVEI 2003;
* ``blockiness`` — ratio of grey-level jumps across the 8×8 JPEG grid to jumps elsewhere (in the spirit of
  Wu & Yuen's block-edge impairment metric, "A generalized block-edge impairment metric for video coding",
  IEEE SPL 4(11), 1997).

They measure one property each and are not quality scores by themselves; their default maps to 1–5 are fitted
on a synthetic ladder of the one distortion each targets (see :mod:`lmmiqa.tools.maps`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmmiqa.tools._matlab import RGB2GRAY
from lmmiqa.tools.base import NR, Tool, require_size

#: grey levels at or below / at or above which a pixel counts as clipped
DARK_CLIP = 2.0
BRIGHT_CLIP = 253.0
JPEG_BLOCK = 8


def grey(rgb: np.ndarray) -> np.ndarray:
    """Unrounded grey levels 0–255 (``rgb2gray`` weights) as float64."""
    x = np.asarray(rgb, dtype=np.float64)
    if x.ndim == 2:
        return x
    return RGB2GRAY[0] * x[..., 0] + RGB2GRAY[1] * x[..., 1] + RGB2GRAY[2] * x[..., 2]


def laplacian_variance(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image, over interior pixels (grey levels²)."""
    g = grey(rgb)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def immerkaer_sigma(rgb: np.ndarray) -> float:
    """Immerkær's noise standard deviation estimate (grey levels).

    ``σ = sqrt(π/2) / (6 (W − 2)(H − 2)) · Σ |I ∗ N|`` with ``N = [[1, −2, 1], [−2, 4, −2], [1, −2, 1]]``, a
    difference of two Laplacians that cancels most image structure. Texture inflates it somewhat.
    """
    g = grey(rgb)
    c = g[1:-1, 1:-1]
    edges = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    corners = g[:-2, :-2] + g[:-2, 2:] + g[2:, :-2] + g[2:, 2:]
    conv = corners - 2.0 * edges + 4.0 * c
    h, w = g.shape
    return float(np.sqrt(np.pi / 2.0) * np.abs(conv).sum() / (6.0 * (w - 2) * (h - 2)))


def rms_contrast(rgb: np.ndarray) -> float:
    """RMS contrast: standard deviation of grey levels scaled to [0, 1] (0 for a uniform image, at most 0.5)."""
    return float(grey(rgb).std() / 255.0)


def exposure_stats(rgb: np.ndarray) -> dict[str, float]:
    """Clipping and brightness: ``clipped`` (fraction of pixels at ≤ 2 or ≥ 253 grey), ``dark``, ``bright``,
    and ``mean_brightness`` (0–255)."""
    g = np.rint(grey(rgb))
    dark = float(np.mean(g <= DARK_CLIP))
    bright = float(np.mean(g >= BRIGHT_CLIP))
    return {"clipped": dark + bright, "dark": dark, "bright": bright, "mean_brightness": float(g.mean())}


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness ``sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²)`` (0 for grey images)."""
    x = np.asarray(rgb, dtype=np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def blockiness_ratio(rgb: np.ndarray, block: int = JPEG_BLOCK) -> float:
    """Mean absolute grey-level jump across ``block`` grid lines over the mean jump elsewhere (both axes).

    About 1 for images without block artefacts, above 1 when the grid shows. By convention 1 for an image with
    no jumps at all, and ``inf`` when the only jumps are on the grid.
    """
    g = grey(rgb)
    dx = np.abs(np.diff(g, axis=1))  # dx[:, j] is the jump between columns j and j+1
    dy = np.abs(np.diff(g, axis=0))
    on_x = (np.arange(dx.shape[1]) % block) == block - 1
    on_y = (np.arange(dy.shape[0]) % block) == block - 1
    grid = np.concatenate([dx[:, on_x].ravel(), dy[on_y, :].ravel()])
    rest = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y, :].ravel()])
    g_mean, r_mean = float(grid.mean()), float(rest.mean())
    if r_mean == 0.0:
        return 1.0 if g_mean == 0.0 else float("inf")
    return g_mean / r_mean


# --------------------------------------------------------------------------- tools


class Sharpness(Tool):
    """Sharpness cue: variance of the Laplacian (Pech-Pacheco et al. 2000)."""

    name = "sharpness"
    kind = NR
    higher_is_better = True
    typical_range = (0.0, 2000.0)
    description = (
        "Sharpness/focus cue: variance of the Laplacian (fine detail energy). Low means blurred or "
        "defocused; content-dependent (flat scenes are low) and inflated by noise."
    )
    citation = "Pech-Pacheco et al., ICPR 2000"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        require_size(self.name, rgb.shape, 3, 3, "a 3×3 Laplacian")
        return laplacian_variance(rgb)


class Noise(Tool):
    """Noise cue: Immerkær's noise standard deviation estimate (1996)."""

    name = "noise"
    kind = NR
    higher_is_better = False
    typical_range = (0.0, 30.0)
    description = (
        "Noise level estimate (standard deviation of additive noise in grey levels, Immerkær): high means "
        "visible sensor/Gaussian noise or grain; fine texture also raises it a little."
    )
    citation = "Immerkær, CVIU 1996"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        require_size(self.name, rgb.shape, 3, 3, "a 3×3 mask")
        return immerkaer_sigma(rgb)


class Contrast(Tool):
    """Contrast cue: RMS contrast (Peli 1990)."""

    name = "contrast"
    kind = NR
    higher_is_better = True
    typical_range = (0.05, 0.35)
    bounds = (0.0, 0.5)
    description = (
        "Global contrast cue (RMS contrast, std of grey levels in [0, 1]): low means flat, hazy or washed-out "
        "tones; depends on content (a foggy scene is low by nature)."
    )
    citation = "Peli, JOSA A 1990"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        return rms_contrast(rgb)


class Exposure(Tool):
    """Exposure cue: fraction of clipped (crushed or blown-out) pixels, with mean brightness."""

    name = "exposure"
    kind = NR
    higher_is_better = False
    typical_range = (0.0, 0.3)
    bounds = (0.0, 1.0)
    description = (
        "Exposure/brightness cue: fraction of pixels clipped to black or white (lost shadow/highlight "
        "detail); details give the dark and bright fractions and mean brightness (0–255) to tell under- "
        "from over-exposure."
    )
    citation = "clipped-pixel fraction"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        stats = exposure_stats(rgb)
        return stats["clipped"], {k: v for k, v in stats.items() if k != "clipped"}


class Colorfulness(Tool):
    """Colourfulness cue (Hasler & Süsstrunk 2003)."""

    name = "colorfulness"
    kind = NR
    higher_is_better = True
    typical_range = (0.0, 120.0)
    description = (
        "Colourfulness (Hasler–Süsstrunk): low means greyish, faded or desaturated colours, high means vivid; "
        "0 for greyscale images. Content-dependent."
    )
    citation = "Hasler & Süsstrunk, SPIE HVEI 2003"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        return colorfulness(rgb)


class Blockiness(Tool):
    """JPEG blockiness cue: jumps across the 8×8 grid relative to jumps elsewhere."""

    name = "blockiness"
    kind = NR
    higher_is_better = False
    typical_range = (1.0, 2.0)
    description = (
        "JPEG blocking cue: how much stronger grey-level jumps are on the 8×8 coding grid than elsewhere "
        "(about 1 = no blocking, higher = visible blocks). Only meaningful for images whose grid was not "
        "shifted by cropping or resizing after compression."
    )
    citation = "after Wu & Yuen, IEEE SPL 1997"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        require_size(self.name, rgb.shape, 2 * JPEG_BLOCK, 2 * JPEG_BLOCK, "at least one 8×8 grid line each way")
        return blockiness_ratio(rgb)
