"""SSIM and MS-SSIM after the authors' MATLAB code, on MATLAB ``rgb2gray`` at 0–255.

* SSIM — Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE TIP 13(4), 2004; ``ssim_index.m``: 11×11 Gaussian window
  (σ = 1.5), K = (0.01, 0.03), L = 255, 'valid' filtering, mean of the SSIM map, no automatic downsampling.
* MS-SSIM — Z. Wang, E. P. Simoncelli and A. C. Bovik, "Multiscale structural similarity for image quality
  assessment", Asilomar 2003; ``msssim.m``: 5 scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333),
  contrast–structure terms at scales 1–4 and full SSIM at scale 5, 2×2 average (symmetric padding) and
  decimation between scales, product combination.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmmiqa.tools._matlab import gaussian_valid
from lmmiqa.tools.base import FR, Tool, ToolError, luminance, require_size

K1, K2, L = 0.01, 0.03, 255.0
WINDOW = 11
SIGMA = 1.5
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ssim_maps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The SSIM map and the contrast–structure map ('valid' region) of two grey images (pure function)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2

    def filt(img: np.ndarray) -> np.ndarray:
        return gaussian_valid(img, WINDOW, SIGMA)

    mu1, mu2 = filt(x), filt(y)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(x * x) - mu1_sq
    s2 = filt(y * y) - mu2_sq
    s12 = filt(x * y) - mu12
    cs = (2.0 * s12 + c2) / (s1 + s2 + c2)
    lum = (2.0 * mu12 + c1) / (mu1_sq + mu2_sq + c1)
    return lum * cs, cs


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey 0–255 images (pure function); 1 for identical images."""
    return float(ssim_maps(a, b)[0].mean())


def _down2(x: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` followed by ``x(1:2:end, 1:2:end)``."""
    p = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    f = (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4.0
    return f[::2, ::2]


def ms_ssim_terms(a: np.ndarray, b: np.ndarray, levels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast–structure at each scale (pure function)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    ms, mcs = [], []
    for level in range(levels):
        s, cs = ssim_maps(x, y)
        ms.append(float(s.mean()))
        mcs.append(float(cs.mean()))
        if level < levels - 1:
            x, y = _down2(x), _down2(y)
    return np.asarray(ms), np.asarray(mcs)


def ms_ssim(a: np.ndarray, b: np.ndarray, weights: tuple[float, ...] = MS_WEIGHTS) -> float:
    """MS-SSIM of two grey 0–255 images (pure function): ``Π_{j<M} cs_j^{w_j} · ssim_M^{w_M}``.

    Raises:
        ValueError: a term is negative (anti-correlated images), where the fractional power is undefined.
    """
    ms, mcs = ms_ssim_terms(a, b, len(weights))
    terms = np.concatenate([mcs[:-1], ms[-1:]])
    if np.any(terms < 0):
        scale = int(np.argmax(terms < 0)) + 1
        raise ValueError(
            f"MS-SSIM is undefined: the {'SSIM' if scale == len(weights) else 'contrast-structure'} term at "
            f"scale {scale} is negative ({terms[scale - 1]:.4f}); the images are anti-correlated"
        )
    return float(np.prod(terms ** np.asarray(weights)))


class SSIM(Tool):
    """SSIM (Wang et al. 2004): local luminance, contrast and structure similarity to the reference."""

    name = "ssim"
    kind = FR
    higher_is_better = True
    typical_range = (0.3, 1.0)
    bounds = (-1.0, 1.0)
    description = (
        "Structural similarity to the reference at one scale: sensitive to blur, noise, compression and "
        "structural loss, less to uniform brightness/contrast shifts; 1 means identical."
    )
    citation = "Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        require_size(self.name, rgb.shape, WINDOW, WINDOW, "an 11×11 window")
        assert ref is not None
        return ssim(luminance(rgb, "gray"), luminance(ref, "gray"))


class MSSSIM(Tool):
    """MS-SSIM (Wang et al. 2003): SSIM over five scales, weighted as fitted to human judgements."""

    name = "ms_ssim"
    kind = FR
    higher_is_better = True
    typical_range = (0.5, 1.0)
    bounds = (0.0, 1.0)
    description = (
        "Multi-scale structural similarity to the reference: like SSIM but over five scales, so it weighs "
        "coarse structure and viewing distance better; robust for blur, noise and compression."
    )
    citation = "Wang, Simoncelli & Bovik, Asilomar 2003"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        side = WINDOW * 2 ** (len(MS_WEIGHTS) - 1)
        require_size(self.name, rgb.shape, side, side, "an 11×11 window at the 5th scale")
        assert ref is not None
        try:
            value = ms_ssim(luminance(rgb, "gray"), luminance(ref, "gray"))
        except ValueError as err:
            raise ToolError(f"ms_ssim: {err}") from err
        return value, {}
