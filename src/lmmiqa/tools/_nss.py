"""Natural-scene-statistics building blocks shared by NIQE and BRISQUE (pure functions).

Mean-subtracted contrast-normalized (MSCN) coefficients and moment-matching fits of the generalized Gaussian
(GGD) and asymmetric generalized Gaussian (AGGD) distributions, as in Mittal, Moorthy & Bovik, "No-reference
image quality assessment in the spatial domain", IEEE TIP 2012 (BRISQUE), and Mittal, Soundararajan & Bovik,
"Making a 'completely blind' image quality analyzer", IEEE SPL 2012 (NIQE). The shape parameter is looked up on
the grid 0.2:0.001:10 used by the original MATLAB releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmiqa.tools._matlab import (
    correlate_same_replicate,
    correlate_same_zero,
    gaussian_factor,
    separable_same,
)


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


def estimate_ggd(vec: np.ndarray, tables: ShapeTables) -> tuple[float, float]:
    """GGD shape and standard deviation of ``vec`` (BRISQUE ``estimateggdparam``).

    Returns ``(shape, sigma)``; the shape minimizes ``|E[x²]/E[|x|]² − r_ggd(γ)|`` over the grid.
    """
    v = np.ascontiguousarray(vec, dtype=np.float64).ravel()
    if v.size == 0:
        return float(tables.gamma[0]), float("nan")
    sigma_sq = np.float64(np.dot(v, v)) / v.size
    e_abs = np.float64(np.abs(v).sum()) / v.size
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = sigma_sq / (e_abs * e_abs)
    idx = int(np.argmin(np.abs(rho - tables.r_ggd))) if np.isfinite(rho) else 0
    return float(tables.gamma[idx]), float(np.sqrt(sigma_sq))


def _nearest_index(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``argmin((table − x)²)`` for each ``x`` over a non-decreasing ``table`` (first index on ties), by binary
    search instead of a scan of the whole table; 0 where ``x`` is not finite, as the scan would give."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    xs = np.where(finite, x, 0.0)
    k = np.searchsorted(table, xs, side="left")
    hi = np.minimum(k, len(table) - 1)
    lo = np.maximum(k - 1, 0)
    lo = np.searchsorted(table, table[lo], side="left")  # first of a run of equal entries, as argmin takes
    d_lo = (table[lo] - xs) ** 2
    d_hi = (table[hi] - xs) ** 2
    idx = np.where(d_hi < d_lo, hi, lo)
    return np.where(finite, idx, 0)


def _is_sorted(table: np.ndarray) -> bool:
    return bool(np.all(table[1:] >= table[:-1]))


def _aggd_moments(v: np.ndarray, axis: int | None) -> tuple[np.ndarray, ...]:
    """``(n_neg, Σ neg², n_pos, Σ pos², Σ|v|, n)`` along ``axis`` (``None``: all of ``v``), without copying
    the selected values out: the negative part ``min(v, 0)`` and positive part ``max(v, 0)`` are summed and
    counted whole (exact zeros count in neither side, as with MATLAB's ``vec(vec<0)``)."""
    part = np.minimum(v, 0.0)
    n_neg = np.count_nonzero(part, axis=axis)
    if axis is None:
        ss_neg = np.dot(part, part)
    else:
        ss_neg = np.einsum("ij,ij->i", part, part)
    abs_sum = -part.sum(axis=axis)
    np.maximum(v, 0.0, out=part)
    n_pos = np.count_nonzero(part, axis=axis)
    ss_pos = np.dot(part, part) if axis is None else np.einsum("ij,ij->i", part, part)
    abs_sum = abs_sum + part.sum(axis=axis)
    n = v.shape[axis] if axis is not None else v.size
    return n_neg, ss_neg, n_pos, ss_pos, abs_sum, n


def _aggd_from_moments(
    n_neg: Any, ss_neg: Any, n_pos: Any, ss_pos: Any, abs_sum: Any, n: int, tables: ShapeTables
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape (grid lookup), left and right deviations from :func:`_aggd_moments` (scalars or per row)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.sqrt(np.float64(ss_neg) / n_neg)  # NaN when there is no negative value, as MATLAB
        right = np.sqrt(np.float64(ss_pos) / n_pos)
        gh = left / right
        mean_abs = np.float64(abs_sum) / n
        rhat = mean_abs * mean_abs / ((np.float64(ss_neg) + ss_pos) / n)
        rnorm = rhat * (gh**3 + 1.0) * (gh + 1.0) / (gh * gh + 1.0) ** 2
    rnorm = np.atleast_1d(rnorm)
    if _is_sorted(tables.r_aggd):
        idx = _nearest_index(tables.r_aggd, rnorm)
    else:
        idx = np.array([int(np.argmin((tables.r_aggd - r) ** 2)) if np.isfinite(r) else 0 for r in rnorm])
    return tables.gamma[idx], left, right


def estimate_aggd(vec: np.ndarray, tables: ShapeTables) -> tuple[float, float, float]:
    """AGGD shape and left/right standard deviations of ``vec`` (``estimateaggdparam`` of NIQE and BRISQUE).

    Returns ``(shape, left_std, right_std)``. Like MATLAB, an undefined ratio (no negative or no positive
    values) yields the first grid shape (0.2) and NaN deviations, which NIQE then ignores. Values that are
    exactly zero count in neither side (MATLAB ``vec(vec<0)``, ``vec(vec>0)``) but in the overall moments.
    The shape is the grid point nearest in moment ratio (binary search in the monotone table, the same
    index as MATLAB's full scan); sums may differ from MATLAB's order in the last bits.
    """
    v = np.ascontiguousarray(vec, dtype=np.float64).ravel()
    shape, left, right = _aggd_from_moments(*_aggd_moments(v, None), tables)
    return float(shape[0]), float(left), float(right)


def estimate_aggd_rows(rows: np.ndarray, tables: ShapeTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`estimate_aggd` of every row of a 2-D array at once (NIQE's patches): ``(shape, left, right)``."""
    v = np.ascontiguousarray(rows, dtype=np.float64)
    return _aggd_from_moments(*_aggd_moments(v, 1), tables)


#: ``|I − μ|`` below this many grey levels is floating-point noise of the local mean in flat regions
FLAT_TOLERANCE = 1e-8


def mscn(img: np.ndarray, window: np.ndarray, padding: str) -> np.ndarray:
    """MSCN coefficients ``(I − μ)/(σ + 1)`` with local Gaussian-weighted mean and deviation.

    In a flat region the local mean equals the pixel value up to rounding, and the sign of that rounding
    residue (which differs between platforms, libraries and summation orders) decides on which side of the
    AGGD those pixels fall. Residues below :data:`FLAT_TOLERANCE` are therefore set to exactly zero: this makes
    the features identical everywhere (the 2-D and the separable filter give the same features) and brings
    them closest to the MATLAB releases (see :mod:`lmmiqa.tools.brisque` for what remains on I08/I19).

    Args:
        img: 2-D float image in 0..255.
        window: normalized Gaussian window (7×7, σ = 7/6 in both releases); applied in two 1-D passes when it
            is an ``fspecial`` Gaussian (same values to 1e-12), else as a 2-D correlation.
        padding: ``"replicate"`` (NIQE: ``imfilter(..., 'replicate')``) or ``"zero"`` (BRISQUE: ``filter2``).
    """
    mode = {"replicate": "nearest", "zero": "constant"}[padding]
    g = gaussian_factor(window)
    if g is not None:

        def filt(x: np.ndarray) -> np.ndarray:
            return separable_same(x, g, mode)
    else:
        filt2 = {"nearest": correlate_same_replicate, "constant": correlate_same_zero}[mode]

        def filt(x: np.ndarray) -> np.ndarray:
            return filt2(x, window)

    img = np.asarray(img, dtype=np.float64)
    mu = filt(img)
    second = filt(img * img)
    return normalize_contrast(img, mu, second, flat_tolerance=FLAT_TOLERANCE)


#: rows processed together by :func:`normalize_contrast` (keeps its temporaries in cache)
ROW_BLOCK = 64


def normalize_contrast(
    img: np.ndarray, mu: np.ndarray, second: np.ndarray, flat_tolerance: float | None = None
) -> np.ndarray:
    """``(I − μ) / (sqrt(|E[I²] − μ²|) + 1)`` from the local mean ``μ`` and local second moment ``E[I²]``.

    Overwrites ``mu`` with the result and ``second`` with the denominators, a block of rows at a time (the
    same operations per pixel as whole-array arithmetic, with the temporaries in cache). With
    ``flat_tolerance``, residues ``|I − μ|`` below it are set to exactly zero first (see :func:`mscn`).
    """
    h = img.shape[0]
    for r0 in range(0, h, ROW_BLOCK):
        r1 = min(h, r0 + ROW_BLOCK)
        m, s, x = mu[r0:r1], second[r0:r1], img[r0:r1]
        s -= m * m
        np.abs(s, out=s)
        np.sqrt(s, out=s)
        s += 1.0
        np.subtract(x, m, out=m)
        if flat_tolerance is not None:
            m[(m < flat_tolerance) & (m > -flat_tolerance)] = 0.0
        m /= s
    return mu
