"""GMSD: gradient magnitude similarity deviation.

W. Xue, L. Zhang, X. Mou and A. C. Bovik, "Gradient magnitude similarity deviation: a highly efficient
perceptual image quality index", IEEE TIP 23(2), 2014. After the authors' MATLAB code on MATLAB ``rgb2gray``
at 0–255: 2×2 average filter (``conv2(..., 'same')``, zero padding) and decimation by 2, Prewitt gradients
divided by 3, gradient magnitude similarity ``(2·m1·m2 + T)/(m1² + m2² + T)`` with T = 170, and the standard
deviation (N − 1) of that map. 0 means identical; larger is worse.
"""

from __future__ import annotations

import numpy as np

from lmmiqa.tools._matlab import correlate_same_zero
from lmmiqa.tools.base import FR, Tool, luminance, require_size

T = 170.0
PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def _average_down2(x: np.ndarray) -> np.ndarray:
    """``conv2(x, ones(2)/4, 'same')`` (zero padding after the last row/column), then ``x(1:2:end, 1:2:end)``.

    Only the kept pixels are computed (same additions in the same order as the full filter).
    """
    p = np.pad(x, ((0, 1), (0, 1)))
    h, w = (x.shape[0] + 1) // 2, (x.shape[1] + 1) // 2
    f = p[0 : 2 * h : 2, 0 : 2 * w : 2] + p[1 : 2 * h + 1 : 2, 0 : 2 * w : 2]
    f += p[0 : 2 * h : 2, 1 : 2 * w + 1 : 2]
    f += p[1 : 2 * h + 1 : 2, 1 : 2 * w + 1 : 2]
    f /= 4.0
    return f


def gms_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The gradient magnitude similarity map of two grey 0–255 images at half resolution (pure function)."""
    x = _average_down2(np.asarray(a, dtype=np.float64))
    y = _average_down2(np.asarray(b, dtype=np.float64))

    def magnitude(img: np.ndarray) -> np.ndarray:
        gx = correlate_same_zero(img, PREWITT_X)
        gy = correlate_same_zero(img, PREWITT_X.T)
        return np.sqrt(gx * gx + gy * gy)

    m1, m2 = magnitude(x), magnitude(y)
    return (2.0 * m1 * m2 + T) / (m1 * m1 + m2 * m2 + T)


def gmsd(a: np.ndarray, b: np.ndarray) -> float:
    """GMSD of two grey 0–255 images (pure function): the sample standard deviation of :func:`gms_map`."""
    return float(np.std(gms_map(a, b), ddof=1))


class GMSD(Tool):
    """GMSD (Xue et al. 2014): how unevenly local gradient magnitudes differ from the reference."""

    name = "gmsd"
    kind = FR
    higher_is_better = False
    typical_range = (0.0, 0.35)
    bounds = (0.0, 1.0)
    description = (
        "Gradient magnitude similarity deviation from the reference: fast and accurate for edge and texture "
        "damage (blur, noise, compression, ringing); 0 means identical, larger is worse."
    )
    citation = "Xue, Zhang, Mou & Bovik, IEEE TIP 2014"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        require_size(self.name, rgb.shape, 4, 4, "2× downsampling and 3×3 gradients")
        assert ref is not None
        return gmsd(luminance(rgb, "gray"), luminance(ref, "gray"))
