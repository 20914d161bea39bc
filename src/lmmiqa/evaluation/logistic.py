"""Monotone logistic maps from predictions to MOS (pure functions).

Two forms, both from METHODS.md:

* 4-parameter (VQEG, §7): ``ŷ = (β1 − β2) / (1 + exp(−(x − β3)/|β4|)) + β2``,
  started at ``[max y, min y, mean x, std x / 4]``.
* 5-parameter (standard form, §5.3): ``ŷ = β1·(1/2 − 1/(1 + exp(β2·(x − β3)))) + β4·x + β5``.

Both are evaluated through :func:`scipy.special.expit`, which never overflows. Fits run in standardized
coordinates (x and y shifted to zero mean and unit standard deviation) and the parameters are mapped back, so
that the optimizer sees well-conditioned problems whatever the units of the predictions are.

**Optimizer.** Levenberg–Marquardt without bounds first (the classic procedure). When it does not converge
(the best curve often lies at infinity: an ever larger, ever flatter sigmoid), the fit is retried with the
trust-region reflective method inside ``±BOUND`` (50) in standardized units; ``FitResult.optimizer`` says which
one produced the parameters. Both count as converged.

**Fallback (documented behaviour).** When a logistic fit cannot be used — fewer than ``p + 1`` finite points
(``p`` = number of parameters), constant predictions, both optimizers failing, or non-finite results — the
fit falls back to an ordinary least-squares *line* ``ŷ = a·x + b`` (or, for constant ``x``, to the constant
``ŷ = mean y``). The returned :class:`FitResult` then has ``converged=False`` and ``fallback`` says which map
was used and why. For the 5-parameter form a line is exactly representable (``β1 = 0``), so its ``params``
always plug into :func:`logistic5`; for the 4-parameter form use :meth:`FitResult.predict`, which dispatches on
:attr:`FitResult.kind`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

ArrayLike = Any

#: most function evaluations allowed to the optimizer
MAXFEV = 20_000


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """4-parameter logistic ``(b1 − b2)/(1 + exp(−(x − b3)/|b4|)) + b2`` (numerically stable).

    ``b1`` is the upper and ``b2`` the lower asymptote (for increasing data), ``b3`` the midpoint and ``|b4|``
    the scale. ``b4 = 0`` is treated as the smallest positive float (a step).
    """
    x = np.asarray(x, dtype=np.float64)
    scale = max(abs(float(b4)), np.finfo(np.float64).tiny)
    with np.errstate(over="ignore", invalid="ignore"):
        z = (x - b3) / scale
    return (b1 - b2) * expit(z) + b2


def logistic5(x: ArrayLike, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """5-parameter logistic ``b1·(1/2 − 1/(1 + exp(b2·(x − b3)))) + b4·x + b5`` (numerically stable).

    Uses the identity ``1/(1 + exp(z)) = expit(−z)``, so large ``|b2·(x − b3)|`` saturate instead of
    overflowing. This is the standard form; AgenticIQA's printed formula lacks the ``1 +`` (a misprint).
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = b2 * (x - b3)
    return b1 * (0.5 - expit(-z)) + b4 * x + b5


@dataclass(frozen=True)
class FitResult:
    """Outcome of fitting a map from predictions ``x`` to MOS ``y``.

    Attributes:
        kind: ``"logistic4"``, ``"logistic5"``, ``"linear"`` (``params = (a, b)``, ``ŷ = a·x + b``) or
            ``"constant"`` (``params = (c,)``). For fallbacks of :func:`fit_logistic5` the kind stays
            ``"logistic5"`` with ``β1 = 0`` (a line is a 5PL), so the parameters plug into :func:`logistic5`.
        params: the parameters of ``kind``, in the order of the function signature.
        converged: true when the logistic fit itself succeeded; false when a fallback was used.
        fallback: ``None`` on success, else which map was used instead and why.
        n: number of finite (x, y) pairs the fit used.
        sse: sum of squared residuals of the returned map on those pairs.
        requested: the fit that was asked for (``logistic4`` / ``logistic5``).
        optimizer: ``lm`` (Levenberg–Marquardt, unbounded) or ``trf-bounded`` (the bounded retry); empty for
            fallbacks.
    """

    kind: str
    params: tuple[float, ...]
    converged: bool
    fallback: str | None = None
    n: int = 0
    sse: float = float("nan")
    requested: str = field(default="", compare=False)
    optimizer: str = ""

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Apply the fitted map to ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "logistic4":
            return logistic4(x, *self.params)
        if self.kind == "logistic5":
            return logistic5(x, *self.params)
        if self.kind == "linear":
            a, b = self.params
            return a * x + b
        if self.kind == "constant":
            return np.full_like(x, self.params[0])
        raise ValueError(f"unknown fit kind {self.kind!r}; known: logistic4, logistic5, linear, constant")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary."""
        from lmmiqa.types import json_safe

        return {
            "kind": self.kind,
            "requested": self.requested or self.kind,
            "params": json_safe(list(self.params)),
            "converged": self.converged,
            "fallback": self.fallback,
            "n": self.n,
            "sse": json_safe(self.sse),
            "optimizer": self.optimizer,
        }


def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _linear_fallback(x: np.ndarray, y: np.ndarray, requested: str, why: str) -> FitResult:
    """Least-squares line (or constant for constant x / empty input), expressed for ``requested``."""
    n = int(x.size)
    if n == 0:
        return FitResult("constant", (float("nan"),), False, f"constant NaN ({why}; no finite pairs)", 0,
                         float("nan"), requested)
    if n < 2 or float(np.ptp(x)) == 0.0:
        c = float(np.mean(y))
        sse = float(np.sum((y - c) ** 2))
        reason = why if why == "constant predictions" else f"{why}; predictions are constant"
        if requested == "logistic5":
            return FitResult("logistic5", (0.0, 0.0, 0.0, 0.0, c), False, f"constant mean(y) ({reason})", n,
                             sse, requested)
        return FitResult("constant", (c,), False, f"constant mean(y) ({reason})", n, sse, requested)
    a, b = np.polyfit(x, y, 1)
    a, b = float(a), float(b)
    sse = float(np.sum((y - (a * x + b)) ** 2))
    if requested == "logistic5":
        return FitResult("logistic5", (0.0, 0.0, 0.0, a, b), False, f"least-squares line ({why})", n, sse,
                         requested)
    return FitResult("linear", (a, b), False, f"least-squares line ({why})", n, sse, requested)


#: bounds of the retry, in standardized coordinates (x and y with zero mean and unit standard deviation)
BOUND = 50.0


def _curve_fit(
    func: Any, u: np.ndarray, v: np.ndarray, p0: Sequence[float], bounds: tuple[list[float], list[float]]
) -> tuple[np.ndarray | None, str, str]:
    """Fit in standardized coordinates; return ``(params, optimizer, "")`` or ``(None, "", reason)``.

    First Levenberg–Marquardt without bounds (the classic procedure). When it does not converge — typically
    because the best curve lies at infinity, e.g. an ever steeper or ever larger sigmoid — retry with the
    trust-region reflective method inside ``bounds`` (``optimizer="trf-bounded"``).
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    reasons = []
    for method in ("lm", "trf"):
        kw: dict[str, Any] = {"maxfev": MAXFEV} if method == "lm" else {"max_nfev": MAXFEV, "bounds": bounds}
        start = list(p0) if method == "lm" else list(np.clip(p0, bounds[0], bounds[1]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                popt, _pcov, _info, mesg, ier = curve_fit(
                    func, u, v, p0=start, method=method, full_output=True, **kw
                )
        except (RuntimeError, ValueError, FloatingPointError) as err:
            reasons.append(f"{method}: {err}")
            continue
        if ier not in (1, 2, 3, 4):
            reasons.append(f"{method}: did not converge ({mesg})")
            continue
        if not np.all(np.isfinite(popt)):
            reasons.append(f"{method}: non-finite parameters")
            continue
        return np.asarray(popt, dtype=np.float64), ("lm" if method == "lm" else "trf-bounded"), ""
    return None, "", "optimizer failed: " + "; ".join(reasons)


def fit_logistic4(x: ArrayLike, y: ArrayLike) -> FitResult:
    """Fit :func:`logistic4` mapping predictions ``x`` to MOS ``y``.

    Start ``[max y, min y, mean x, std x / 4]`` (METHODS.md §7). Non-finite pairs are dropped. Needs at least 5
    finite pairs and non-constant ``x``; otherwise, or when the optimizer fails, the documented fallback is
    returned (see the module docstring).
    """
    x, y = _finite_pairs(x, y)
    n = int(x.size)
    if n < 5:
        return _linear_fallback(x, y, "logistic4", f"too few points for a 4-parameter fit: n={n} < 5")
    sx, sy = float(np.std(x)), float(np.std(y))
    if sx == 0.0:
        return _linear_fallback(x, y, "logistic4", "constant predictions")
    if sy == 0.0:
        c = float(y[0])
        return FitResult("constant", (c,), False, "constant mean(y) (MOS is constant)", n, 0.0, "logistic4")
    mx, my = float(np.mean(x)), float(np.mean(y))
    u, v = (x - mx) / sx, (y - my) / sy
    p0 = [float(np.max(v)), float(np.min(v)), 0.0, 0.25]  # = [max y, min y, mean x, std x / 4] standardized
    b = BOUND
    popt, optimizer, why = _curve_fit(logistic4, u, v, p0, ([-b, -b, -b, 1e-6], [b, b, b, b]))
    if popt is None:
        return _linear_fallback(x, y, "logistic4", why)
    c1, c2, c3, c4 = popt
    params = (my + sy * c1, my + sy * c2, mx + sx * c3, sx * abs(c4))
    pred = logistic4(x, *params)
    if not np.all(np.isfinite(pred)):
        return _linear_fallback(x, y, "logistic4", "fitted curve is not finite")
    sse = float(np.sum((y - pred) ** 2))
    return FitResult("logistic4", tuple(float(p) for p in params), True, None, n, sse, "logistic4", optimizer)


def fit_logistic5(x: ArrayLike, y: ArrayLike) -> FitResult:
    """Fit :func:`logistic5` mapping predictions ``x`` to MOS ``y``.

    Start (standardized coordinates): amplitude ``β1 = sign(r)·(max y − min y)``, slope ``β2 = 1/std x``,
    midpoint ``β3 = mean x``, ``β4 = 0``, ``β5 = mean y`` (r = Pearson correlation). Needs at least 6 finite
    pairs and non-constant ``x``; otherwise, or when the optimizer fails, the fallback is a line expressed as a
    5PL with ``β1 = 0`` (see the module docstring).
    """
    x, y = _finite_pairs(x, y)
    n = int(x.size)
    if n < 6:
        return _linear_fallback(x, y, "logistic5", f"too few points for a 5-parameter fit: n={n} < 6")
    sx, sy = float(np.std(x)), float(np.std(y))
    if sx == 0.0:
        return _linear_fallback(x, y, "logistic5", "constant predictions")
    mx, my = float(np.mean(x)), float(np.mean(y))
    if sy == 0.0:
        return FitResult("logistic5", (0.0, 0.0, 0.0, 0.0, my), False, "constant mean(y) (MOS is constant)", n,
                         0.0, "logistic5")
    u, v = (x - mx) / sx, (y - my) / sy
    r = float(np.mean(u * v))
    sign = 1.0 if r >= 0 else -1.0
    p0 = [sign * float(np.ptp(v)), 1.0, 0.0, 0.0, 0.0]
    b = BOUND
    popt, optimizer, why = _curve_fit(logistic5, u, v, p0, ([-b, -b, -b, -b, -b], [b, b, b, b, b]))
    if popt is None:
        return _linear_fallback(x, y, "logistic5", why)
    c1, c2, c3, c4, c5 = popt
    b1 = sy * c1
    b2 = c2 / sx
    b3 = mx + sx * c3
    b4 = sy * c4 / sx
    b5 = my + sy * c5 - sy * c4 * mx / sx
    params = (b1, b2, b3, b4, b5)
    pred = logistic5(x, *params)
    if not np.all(np.isfinite(pred)):
        return _linear_fallback(x, y, "logistic5", "fitted curve is not finite")
    sse = float(np.sum((y - pred) ** 2))
    return FitResult("logistic5", tuple(float(p) for p in params), True, None, n, sse, "logistic5", optimizer)
