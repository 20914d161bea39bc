"""Natural-scene-statistics building blocks shared by NIQE and BRISQUE (pure functions).

Mean-subtracted contrast-normalized (MSCN) coefficients and moment-matching fits of the generalized Gaussian
(GGD) and asymmetric generalized Gaussian (AGGD) distributions, as in Mittal, Moorthy & Bovik, "No-reference
image quality assessment in the spatial domain", IEEE TIP 2012 (BRISQUE), and Mittal, Soundararajan & Bovik,
"Making a 'completely blind' image quality analyzer", IEEE SPL 2012 (NIQE). The shape parameter is looked up on
the grid 0.2:0.001:10 used by the original MATLAB releases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmmiqa.tools._matlab import correlate_same_replicate, correlate_same_zero


@dataclass(frozen=True)
class ShapeTables:
    """Moment-ratio lookup tables over the shape grid.

    Attributes:
        gamma: the candidate shape parameters (0.2, 0.201, ..., 10).
        r_ggd: ``Γ(1/γ)Γ(3/γ)/Γ(2/γ)²`` (GGD: E[x²]/E[|x|]² as a function of the shape).
        r_aggd: ``Γ(2/γ)²/(Γ(1/γ)Γ(3/γ))`` (AGGD: its reciprocal).
    """

    gamma: np.ndarray
    r_ggd: np.ndarray
    r_aggd: np.ndarray


def compute_shape_tables() -> ShapeTables:
    """The tables the MATLAB releases compute on every call, in double precision."""
    from scipy.special import gamma as G

    g = 0.2 + 0.001 * np.arange(9801, dtype=np.float64)
    r_ggd = G(1.0 / g) * G(3.0 / g) / G(2.0 / g) ** 2
    return ShapeTables(g, r_ggd, 1.0 / r_ggd)


def _mean_sq(v: np.ndarray) -> np.float64:
    """Mean of squares (NaN for an empty selection, as MATLAB's ``mean([])``); a numpy float, so that a later
    division by zero gives inf/NaN like MATLAB instead of raising."""
    return np.float64(np.mean(v * v)) if v.size else np.float64(np.nan)


def estimate_ggd(vec: np.ndarray, tables: ShapeTables) -> tuple[float, float]:
    """GGD shape and standard deviation of ``vec`` (BRISQUE ``estimateggdparam``).

    Returns ``(shape, sigma)``; the shape minimizes ``|E[x²]/E[|x|]² − r_ggd(γ)|`` over the grid.
    """
    v = np.asarray(vec, dtype=np.float64).ravel()
    sigma_sq = _mean_sq(v)
    e_abs = np.float64(np.mean(np.abs(v)))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = sigma_sq / (e_abs * e_abs)
    idx = int(np.argmin(np.abs(rho - tables.r_ggd))) if np.isfinite(rho) else 0
    return float(tables.gamma[idx]), float(np.sqrt(sigma_sq))


def estimate_aggd(vec: np.ndarray, tables: ShapeTables) -> tuple[float, float, float]:
    """AGGD shape and left/right standard deviations of ``vec`` (``estimateaggdparam`` of NIQE and BRISQUE).

    Returns ``(shape, left_std, right_std)``. Like MATLAB, an undefined ratio (no negative or no positive
    values) yields the first grid shape (0.2) and NaN deviations, which NIQE then ignores.
    """
    v = np.asarray(vec, dtype=np.float64).ravel()
    left = np.sqrt(_mean_sq(v[v < 0]))
    right = np.sqrt(_mean_sq(v[v > 0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        gh = left / right
        mean_abs = np.float64(np.mean(np.abs(v)))
        rhat = mean_abs * mean_abs / _mean_sq(v)
        rnorm = rhat * (gh**3 + 1.0) * (gh + 1.0) / (gh * gh + 1.0) ** 2
    idx = int(np.argmin((tables.r_aggd - rnorm) ** 2)) if np.isfinite(rnorm) else 0
    return float(tables.gamma[idx]), float(left), float(right)


#: ``|I − μ|`` below this many grey levels is floating-point noise of the local mean in flat regions
FLAT_TOLERANCE = 1e-8


def mscn(img: np.ndarray, window: np.ndarray, padding: str) -> np.ndarray:
    """MSCN coefficients ``(I − μ)/(σ + 1)`` with local Gaussian-weighted mean and deviation.

    In a flat region the local mean equals the pixel value up to rounding, and the sign of that rounding
    residue (which differs between platforms and libraries) decides on which side of the AGGD those pixels
    fall. Residues below :data:`FLAT_TOLERANCE` are therefore set to exactly zero: this makes the features
    identical everywhere and brings them closest to the MATLAB releases (baboon NIQE 5.729574 against the
    published 5.72957).

    Args:
        img: 2-D float image in 0..255.
        window: normalized Gaussian window (7×7, σ = 7/6 in both releases).
        padding: ``"replicate"`` (NIQE: ``imfilter(..., 'replicate')``) or ``"zero"`` (BRISQUE: ``filter2``).
    """
    filt = {"replicate": correlate_same_replicate, "zero": correlate_same_zero}[padding]
    mu = filt(img, window)
    sigma = np.sqrt(np.abs(filt(img * img, window) - mu * mu))
    diff = img - mu
    diff[np.abs(diff) < FLAT_TOLERANCE] = 0.0
    return diff / (sigma + 1.0)
