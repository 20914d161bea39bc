"""GMSD: gradient magnitude similarity deviation.

W. Xue, L. Zhang, X. Mou and A. C. Bovik, "Gradient magnitude similarity deviation: a highly efficient
perceptual image quality index", IEEE TIP 23(2), 2014. After the authors' MATLAB code on MATLAB ``rgb2gray``
at 0–255: 2×2 average filter (``conv2(..., 'same')``, zero padding) and decimation by 2, Prewitt gradients
divided by 3, gradient magnitude similarity ``(2·m1·m2 + T)/(m1² + m2² + T)`` with T = 170, and the standard
deviation (N − 1) of that map. 0 means identical; larger is worse.
"""

from __future__ import annotations

import numpy as np

from lmmiqa.tools._matlab import rgb2gray
from lmmiqa.tools.base import FR, Tool, luminance, require_size

T = 170.0
PREWITT_X = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def _average_down2(x: np.ndarray) -> np.ndarray:
    """``conv2(x, ones(2)/4, 'same')`` (zero padding after the last row/column), then ``x(1:2:end, 1:2:end)``.

    Only the kept pixels are computed, with the same additions in the same order as the full filter (a zero
    from the padding is skipped, which leaves the sum unchanged).
    """
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape
    hb, wb = h // 2, w // 2  # output rows/columns that have a second input row/column
    f = x[0::2, 0::2].copy()
    f[:hb] += x[1::2, 0::2]
    f[:, :wb] += x[0::2, 1::2]
    f[:hb, :wb] += x[1::2, 1::2]
    f /= 4.0
    return f


def prewitt_magnitude(img: np.ndarray) -> np.ndarray:
    """``sqrt(gx² + gy²)`` with ``gx = conv2(img, [1 0 -1; 1 0 -1; 1 0 -1]/3, 'same')`` and ``gy`` its
    transpose (zero padding; correlation orientation as the authors' code), from row and column sums."""
    h, w = img.shape
    p = np.zeros((h + 2, w + 2))
    p[1:-1, 1:-1] = img
    cols = p[0:h] + p[1 : h + 1]
    cols += p[2 : h + 2]  # vertical 3-sums, (h, w + 2)
    gx = cols[:, 0:w] - cols[:, 2 : w + 2]
    rows = p[:, 0:w] + p[:, 1 : w + 1]
    rows += p[:, 2 : w + 2]  # horizontal 3-sums, (h + 2, w)
    gy = rows[0:h] - rows[2 : h + 2]
    gx *= gx
    gy *= gy
    gx += gy
    gx /= 9.0  # (a/3)² + (b/3)² = (a² + b²)/9
    return np.sqrt(gx, out=gx)


def _gms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The similarity map of two already averaged-and-decimated grey images."""
    m1 = prewitt_magnitude(x)
    m2 = prewitt_magnitude(y)
    num = m1 * m2
    num *= 2.0
    num += T
    m1 *= m1
    m2 *= m2
    m1 += m2
    m1 += T
    num /= m1
    return num


def gms_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The gradient magnitude similarity map of two grey 0–255 images at half resolution (pure function)."""
    return _gms(_average_down2(a), _average_down2(b))


def gmsd(a: np.ndarray, b: np.ndarray) -> float:
    """GMSD of two grey 0–255 images (pure function): the sample standard deviation of :func:`gms_map`."""
    return float(np.std(gms_map(a, b), ddof=1))


#: input rows converted and averaged together by :func:`grey_down2` (even, so 2×2 blocks are not split)
ROW_BLOCK = 64


def grey_down2(rgb: np.ndarray) -> np.ndarray:
    """``_average_down2(rgb2gray(rgb))`` of a uint8 H×W×3 image, a block of rows at a time (the full-size grey
    image never exists; the same values, as every step works on single pixels or 2×2 blocks)."""
    h = rgb.shape[0]
    return np.concatenate(
        [_average_down2(rgb2gray(rgb[r0 : min(h, r0 + ROW_BLOCK)])) for r0 in range(0, h, ROW_BLOCK)]
    )


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
        if rgb.ndim == 3 and rgb.dtype == np.uint8 and ref.ndim == 3 and ref.dtype == np.uint8:
            return float(np.std(_gms(grey_down2(rgb), grey_down2(ref)), ddof=1))
        return gmsd(luminance(rgb, "gray"), luminance(ref, "gray"))
