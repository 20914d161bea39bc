"""PSNR: peak signal-to-noise ratio over the RGB channels at 0–255.

``PSNR = 10·log10(255² / MSE)`` with the mean squared error over all pixels and the three channels (the
convention of scikit-image's ``peak_signal_noise_ratio`` on RGB arrays and of MATLAB ``psnr`` on RGB images).
Identical images give ``+inf``.
"""

from __future__ import annotations

import numpy as np

from lmmiqa.tools.base import FR, Tool

PEAK = 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB between two arrays of the same shape (pure function); ``inf`` when they are identical."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
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
