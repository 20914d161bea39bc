"""PSNR: peak signal-to-noise ratio over the RGB channels at 0–255.

``PSNR = 10·log10(255² / MSE)`` with the mean squared error over all pixels and the three channels (the
convention of scikit-image's ``peak_signal_noise_ratio`` on RGB arrays and of MATLAB ``psnr`` on RGB images).
Identical images give ``+inf``.
"""

from __future__ import annotations

import numpy as np

from lmmiqa.tools.base import FR, Tool

PEAK = 255.0


def squared_error_sum(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ (a − b)²`` (pure function); exact integer arithmetic for 8-bit images (no float64 copies)."""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.dtype == np.uint8 and y.dtype == np.uint8:
        d = np.subtract(x, y, dtype=np.int32)
        np.multiply(d, d, out=d)  # ≤ 255², summed in int64: exact
        return float(d.sum(dtype=np.int64))
    d = x.astype(np.float64) - y.astype(np.float64)
    return float(np.sum(d * d))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB between two arrays of the same shape (pure function); ``inf`` when they are identical.

    For 8-bit images the squared differences are summed as integers, which is exact; the mean is the same
    float64 number as summing float64 squares (every partial sum is an integer below 2⁵³), so the value is
    the same as computing in float64, only faster.
    """
    x = np.asarray(a)
    mse = squared_error_sum(a, b) / x.size if x.size else float("nan")
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


class PSNR(Tool):
    """PSNR: pixel-wise fidelity to the reference, in dB."""

    name = "psnr"
    kind = FR
    higher_is_better = True
    typical_range = (15.0, 50.0)
    description = (
        "Pixel-wise fidelity to the reference (dB): sensitive to any numeric change, e.g. noise, "
        "compression error, colour/brightness shifts; blind to how visible the change is, so it ranks "
        "different distortion types poorly. Infinite for identical images."
    )
    citation = "peak signal-to-noise ratio"

    def _measure(self, rgb: np.ndarray, ref: np.ndarray | None) -> float:
        assert ref is not None  # guaranteed by Tool.measure for full-reference tools
        return psnr(rgb, ref)
