"""Correlation metrics between predictions and opinion scores (pure functions).

Conventions (METHODS.md §7), each with a defined outcome for degenerate input:

* **Non-finite values.** Pairs where the prediction or the MOS is NaN/inf are dropped; :func:`compute_metrics`
  counts them as failed items (``n_failed``).
* **Too few pairs.** With fewer than :data:`MIN_N` (3) finite pairs every correlation is NaN (two points are
  always perfectly correlated, which says nothing). Logistic fits need 5 (4PL) or 6 (5PL) pairs, else they fall
  back to a line (see :mod:`lmmiqa.evaluation.logistic`). Bootstrap intervals need :data:`MIN_BOOT_UNITS` units.
* **Constant input.** A correlation with a constant side is undefined: NaN, without a warning.
* **Ties.** SRCC uses average ranks (as :func:`scipy.stats.spearmanr`); KRCC is Kendall's τ-b, which corrects for
  ties on both sides (as :func:`scipy.stats.kendalltau`).
* **Direction.** :func:`orient` negates predictions when the method's and the dataset's score directions differ,
  so that a method that agrees with humans always gets positive correlations, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmmiqa.evaluation.logistic import FitResult, fit_logistic4, fit_logistic5

ArrayLike = Any

#: fewest finite pairs for which correlations are defined
MIN_N = 3
#: fewest resampling units (images or references) for a bootstrap interval
MIN_BOOT_UNITS = 5


def finite_pairs(pred: ArrayLike, mos: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred, mos, keep)``: the finite pairs as float64 arrays and the boolean mask that selected them."""
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predictions and MOS must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], keep


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < MIN_N:
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    sxx = float(np.dot(xc, xc))
    syy = float(np.dot(yc, yc))
    if sxx <= 0.0 or syy <= 0.0:
        return float("nan")
    r = float(np.dot(xc, yc)) / np.sqrt(sxx * syy)
    return float(np.clip(r, -1.0, 1.0))


def plcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Pearson linear correlation of the raw predictions (no fit). NaN when undefined (see module doc)."""
    x, y, _ = finite_pairs(pred, mos)
    return _pearson(x, y)


def srcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties). NaN when undefined."""
    from scipy.stats import rankdata

    x, y, _ = finite_pairs(pred, mos)
    if x.size < MIN_N:
        return float("nan")
    return _pearson(rankdata(x), rankdata(y))


def krcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Kendall rank correlation τ-b (tie-corrected). NaN when undefined."""
    from scipy.stats import kendalltau

    x, y, _ = finite_pairs(pred, mos)
    if x.size < MIN_N or np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


def rmse(pred: ArrayLike, mos: ArrayLike) -> float:
    """Root mean squared error between (already mapped) predictions and MOS; NaN with no finite pair."""
    x, y, _ = finite_pairs(pred, mos)
    if x.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((x - y) ** 2)))


def fitted_plcc(pred: ArrayLike, mos: ArrayLike, kind: str = "logistic4") -> tuple[float, float, FitResult]:
    """PLCC and RMSE after mapping predictions to MOS with a logistic fit.

    The PLCC keeps the direction of the predictions: Pearson's r between the fitted values and the MOS is
    always ≥ 0 (a least-squares map turns a falling relation into a rising one), so it is given the sign of the
    map itself (of the fitted values against the predictions). Predictions that run against the MOS (raw PLCC
    −0.95) thus get a fitted PLCC near −0.95, never +0.95 — with a converged logistic as with its fallback line.

    Args:
        kind: ``logistic4`` (VQEG, METHODS §7) or ``logistic5`` (§5.3).

    Returns:
        ``(plcc, rmse, fit)``; ``fit.converged`` is false when the documented fallback map was used.
    """
    x, y, _ = finite_pairs(pred, mos)
    if kind == "logistic4":
        fit = fit_logistic4(x, y)
    elif kind == "logistic5":
        fit = fit_logistic5(x, y)
    else:
        from lmmiqa.errors import ConfigError

        raise ConfigError(f"unknown fit {kind!r}; known: logistic4, logistic5")
    yhat = fit.predict(x)
    r = _pearson(yhat, y)
    direction = _pearson(x, yhat)  # +1 for a rising map, -1 for a falling one (NaN: a constant map)
    if np.isfinite(r) and np.isfinite(direction) and direction < 0:
        r = -r
    return r, rmse(yhat, y), fit


# --------------------------------------------------------------------------- direction


@dataclass(frozen=True)
class Orientation:
    """What was done to make "higher correlation = better agreement".

    Attributes:
        negated: true when predictions were multiplied by −1 before computing metrics.
        reason: why (or why not), in words, for reports.
    """

    negated: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"negated_predictions": self.negated, "reason": self.reason}


def orient(method_higher_is_better: bool, dataset_higher_is_better: bool) -> Orientation:
    """Decide whether predictions must be negated so that agreement gives positive correlations.

    Predictions are negated exactly when the two directions differ (a lower-is-better tool on a MOS dataset, or
    a higher-is-better method on a DMOS dataset). The MOS itself is never changed, so fitted RMSE stays in the
    dataset's unit.
    """
    m = "higher-is-better" if method_higher_is_better else "lower-is-better"
    d = "MOS (higher is better)" if dataset_higher_is_better else "DMOS (lower is better)"
    if method_higher_is_better == dataset_higher_is_better:
        return Orientation(False, f"method scores are {m} and labels are {d}: no negation")
    return Orientation(True, f"method scores are {m} but labels are {d}: predictions negated")


# --------------------------------------------------------------------------- bootstrap


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", ac, bc)
    den = np.sqrt(np.einsum("ij,ij->i", ac, ac) * np.einsum("ij,ij->i", bc, bc))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def bootstrap_replicates(
    pred: ArrayLike,
    mos: ArrayLike,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of SRCC and raw PLCC: ``{"srcc": array[n_boot], "plcc": array[n_boot]}``.

    Resamples images with replacement or, when ``groups`` is given (e.g. reference image per item), whole groups
    with replacement (a cluster bootstrap: all items of a drawn group enter together). Non-finite pairs are
    dropped first. Replicates that are undefined (constant resample) are NaN.
    """
    from scipy.stats import rankdata

    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predictions and MOS must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    rng = np.random.default_rng(int(seed))
    out_s = np.full(n_boot, np.nan)
    out_p = np.full(n_boot, np.nan)
    if groups is None:
        n = x.size
        chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(b, n))
            xs, ys = x[idx], y[idx]
            out_p[start : start + b] = _rowwise_pearson(xs, ys)
            out_s[start : start + b] = _rowwise_pearson(rankdata(xs, axis=1), rankdata(ys, axis=1))
        return {"srcc": out_s, "plcc": out_p}
    g = np.asarray([str(v) for v in groups], dtype=object)
    if g.size != keep.size:
        raise ValueError(f"groups must have one entry per item, got {g.size} for {keep.size}")
    g = g[keep]
    uniq, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(uniq.size)]
    for i in range(n_boot):
        drawn = rng.integers(0, uniq.size, size=uniq.size)
        idx = np.concatenate([members[k] for k in drawn])
        xs, ys = x[idx], y[idx]
        out_p[i] = _pearson(xs, ys)
        out_s[i] = _pearson(rankdata(xs), rankdata(ys)) if xs.size >= MIN_N else np.nan
    return {"srcc": out_s, "plcc": out_p}


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; NaNs when more than half of them are undefined."""
    r = np.asarray(replicates, dtype=np.float64)
    ok = r[np.isfinite(r)]
    if ok.size == 0 or ok.size < 0.5 * r.size:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    pred: ArrayLike,
    mos: ArrayLike,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Seeded bootstrap percentile intervals for SRCC and raw PLCC.

    Returns:
        ``{"srcc": [lo, hi], "plcc": [lo, hi], "level": 0.95, "n_boot": 1000, "seed": 0, "unit": "image" |
        "group", "n_units": …}``; intervals are NaN when fewer than :data:`MIN_BOOT_UNITS` units exist or
        ``n_boot`` is 0.
    """
    x, _y, keep = finite_pairs(pred, mos)
    unit = "image" if groups is None else "group"
    n_units = int(x.size) if groups is None else len({str(g) for g, k in zip(groups, keep) if k})
    out: dict[str, Any] = {"level": level, "n_boot": int(n_boot), "seed": int(seed), "unit": unit,
                           "n_units": n_units}
    if n_boot <= 0 or n_units < MIN_BOOT_UNITS:
        out["srcc"] = [float("nan"), float("nan")]
        out["plcc"] = [float("nan"), float("nan")]
        return out
    reps = bootstrap_replicates(pred, mos, groups=groups, n_boot=n_boot, seed=seed)
    out["srcc"] = list(percentile_interval(reps["srcc"], level))
    out["plcc"] = list(percentile_interval(reps["plcc"], level))
    return out


# --------------------------------------------------------------------------- everything at once


@dataclass(frozen=True)
class Metrics:
    """All agreement metrics of one set of predictions against MOS (after orientation).

    Attributes:
        n: finite pairs used. n_failed: items without a usable prediction (or MOS).
        srcc, krcc, plcc: rank and raw linear correlations.
        plcc_4pl, rmse: PLCC and RMSE (MOS units) after the 4-parameter logistic fit.
        plcc_5pl, rmse_5pl: the same after the 5-parameter fit.
        fit4, fit5: the fits (parameters, convergence, fallback).
        ci: bootstrap intervals (see :func:`bootstrap_ci`; PLCC interval is for raw PLCC).
        orientation: whether predictions were negated, and why.
    """

    n: int
    n_failed: int
    srcc: float
    krcc: float
    plcc: float
    plcc_4pl: float
    rmse: float
    plcc_5pl: float
    rmse_5pl: float
    fit4: FitResult
    fit5: FitResult
    ci: dict[str, Any] = field(default_factory=dict)
    orientation: Orientation = field(default_factory=lambda: Orientation(False, "not oriented"))


def compute_metrics(
    pred: ArrayLike,
    mos: ArrayLike,
    *,
    groups: Sequence[str] | None = None,
    method_higher_is_better: bool = True,
    dataset_higher_is_better: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Metrics:
    """Every metric of METHODS §7 for one prediction vector.

    Args:
        pred: predictions (NaN for failed items).
        mos: opinion scores, same length.
        groups: bootstrap unit per item (reference image for synthetic sets); ``None`` = images.
        method_higher_is_better, dataset_higher_is_better: directions, for :func:`orient`.
        n_boot, seed, level: bootstrap settings.
    """
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    ori = orient(method_higher_is_better, dataset_higher_is_better)
    if ori.negated:
        x = -x
    xf, yf, keep = finite_pairs(x, y)
    p4, r4, fit4 = fitted_plcc(xf, yf, "logistic4")
    p5, r5, fit5 = fitted_plcc(xf, yf, "logistic5")
    return Metrics(
        n=int(xf.size),
        n_failed=int((~keep).sum()),
        srcc=srcc(xf, yf),
        krcc=krcc(xf, yf),
        plcc=plcc(xf, yf),
        plcc_4pl=p4,
        rmse=r4,
        plcc_5pl=p5,
        rmse_5pl=r5,
        fit4=fit4,
        fit5=fit5,
        ci=bootstrap_ci(x, y, groups=groups, n_boot=n_boot, seed=seed, level=level),
        orientation=ori,
    )
