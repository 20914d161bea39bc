"""LEAF calibration (METHODS §3.3): a monotone map from student output to a MOS scale, fitted on a few labels.

The student is trained on teacher judgments only, so its raw output is in the teacher's (oriented) unit. A
small labelled subset (``fraction`` of the data, or ``n`` images, drawn with a seed) fixes the map to the MOS
scale of a dataset; the rest is held out to report the fit honestly (SRCC and PLCC of the calibrated output).

Maps (:data:`CALIBRATION_KINDS`), all increasing in the student's quality direction:

* ``logistic`` (default): the 4-parameter logistic of :func:`lmmiqa.evaluation.logistic.fit_logistic4`; when
  that fit cannot be used (too few labels, no convergence) it returns its documented least-squares line, and
  the calibration records ``converged: false`` and why. When few labels make the fit collapse into a near-step
  (scale below ``MIN_LOGISTIC_SCALE`` = 0.1 standard deviations of the outputs), it is refitted with that floor
  (``optimizer: trf-min-scale`` and a ``note`` in the stored parameters);
* ``isotonic``: scikit-learn's isotonic regression (piecewise linear between its thresholds, clipped outside);
* ``linear``: a least-squares line.

A map that would have to *decrease* (the student ranks the labelled images against the MOS: negative SRCC on
the calibration subset, or a fitted logistic/line that decreases) is refused with a
:class:`~lmmiqa.errors.DataError`. For lower-is-better labels (DMOS) the map is fitted from the negated student
output, so the calibrated score follows the dataset's direction and the scorer reports ``higher_is_better``
accordingly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.distill.artifact import CALIBRATION_KINDS, Calibration
from lmmiqa.errors import ConfigError, DataError, require
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

#: smallest scale |β4| of a calibration logistic, in standard deviations of the student outputs
MIN_LOGISTIC_SCALE = 0.1


def fit_calibration(
    raw: Any,
    mos: Any,
    kind: str = "logistic",
    *,
    higher_is_better: bool = True,
    scale: tuple[float, float] | None = None,
) -> Calibration:
    """Fit an increasing map (in the student's quality direction) from ``raw`` student outputs to ``mos``.

    Args:
        raw: student outputs (higher = better quality).
        mos: labels, same length (non-finite pairs are dropped).
        kind: ``logistic`` (default), ``isotonic`` or ``linear``.
        higher_is_better: direction of ``mos``; false (DMOS) fits from the negated output.
        scale: the MOS scale to report; default: the range of the labels.

    Raises:
        DataError: fewer than 2 finite pairs, or the best map decreases (the student disagrees with the labels).
    """
    if kind not in CALIBRATION_KINDS:
        raise ConfigError(f"unknown calibration {kind!r}; known: {', '.join(CALIBRATION_KINDS)}")
    sign = 1.0 if higher_is_better else -1.0
    x = sign * np.asarray(raw, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ConfigError(f"raw outputs and labels differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        raise DataError(f"calibration needs at least 2 labelled images with a student output, got {x.size}")
    if scale is None:
        scale = (float(np.min(y)), float(np.max(y)))
    from lmmiqa.evaluation.correlation import srcc

    rho = srcc(x, y)
    if math.isfinite(rho) and rho < 0:
        raise DataError(
            f"the student's output runs against the labels on the calibration subset (SRCC {rho:.3f}); an "
            "increasing map cannot be fitted. Check the label direction (--lower-better) and the teacher"
        )
    if kind == "logistic":
        from lmmiqa.evaluation.logistic import fit_logistic4

        fit = fit_logistic4(x, y)
        if fit.kind == "logistic4" and fit.params[3] < MIN_LOGISTIC_SCALE * float(np.std(x)):
            fit = _refit_min_scale(x, y, fit)
        params = fit.to_dict()
        if fit.optimizer == "trf-min-scale":
            params["note"] = (f"the unbounded fit was a near-step; refitted with its scale bounded below by "
                              f"{MIN_LOGISTIC_SCALE} x the std of the student outputs")
        increasing = _increasing(fit.predict, x)
    elif kind == "isotonic":
        sklearn_iso = require("sklearn.isotonic", "train", "isotonic calibration")
        iso = sklearn_iso.IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
        params = {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}
        increasing = True
    else:
        if float(np.ptp(x)) == 0.0:
            raise DataError("the student gave every calibration image the same output; a line cannot be fitted")
        a, b = np.polyfit(x, y, 1)
        params = {"a": float(a), "b": float(b)}
        increasing = a >= 0
    if not increasing:
        raise DataError(
            f"the best {kind} map from the student's output to the labels decreases (SRCC {rho:.3f} on "
            f"{x.size} calibration images); use more labels or another map"
        )
    return Calibration(kind=kind, params=params, input_sign=sign, higher_is_better=higher_is_better,
                       scale=(float(scale[0]), float(scale[1])))


def _refit_min_scale(x: np.ndarray, y: np.ndarray, fit: Any) -> Any:
    """Refit the 4-parameter logistic with its scale ``|β4|`` ≥ :data:`MIN_LOGISTIC_SCALE`·std(x).

    With few labels the least-squares 4PL can collapse into a step (every image then gets one of two scores);
    the bounded fit keeps the map smooth. Returns ``fit`` unchanged when the bounded fit fails.
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    from lmmiqa.evaluation.logistic import FitResult, logistic4

    mx, sx, my, sy = float(np.mean(x)), float(np.std(x)), float(np.mean(y)), float(np.std(y))
    u, v = (x - mx) / sx, (y - my) / sy
    lo = MIN_LOGISTIC_SCALE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(logistic4, u, v, p0=[float(np.max(v)), float(np.min(v)), 0.0, max(0.25, lo)],
                                bounds=([-50.0, -50.0, -50.0, lo], [50.0, 50.0, 50.0, 50.0]), method="trf",
                                max_nfev=20_000)
    except (RuntimeError, ValueError) as err:
        log.warning("bounded logistic refit failed (%s); keeping the near-step fit", err)
        return fit
    c1, c2, c3, c4 = (float(p) for p in popt)
    params = (my + sy * c1, my + sy * c2, mx + sx * c3, sx * c4)
    sse = float(np.sum((y - logistic4(x, *params)) ** 2))
    return FitResult("logistic4", params, True, None, int(x.size), sse, "logistic4", "trf-min-scale")


def _increasing(predict: Any, x: np.ndarray) -> bool:
    grid = np.linspace(float(np.min(x)), float(np.max(x)), 64)
    y = np.asarray(predict(grid), dtype=np.float64)
    return bool(y[-1] >= y[0] - 1e-12)


def choose_subset(n: int, *, fraction: float | None = None, count: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of the calibration subset among ``n`` items: ``count`` items, or ``round(fraction·n)``, seeded.

    Returns:
        int64 indices (sorted). At least 2, at most ``n``.
    """
    if (fraction is None) == (count is None):
        raise ConfigError("give exactly one of fraction and n (the number of calibration labels)")
    if fraction is not None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        k = round(float(fraction) * n)
    else:
        k = int(count)  # type: ignore[arg-type]
        if k < 2:
            raise ConfigError(f"n must be >= 2, got {k}")
        if k > n:
            raise DataError(f"asked for {k} calibration labels but only {n} labelled image(s) have a student output")
    k = max(2, min(k, n))
    if n < 2:
        raise DataError(f"calibration needs at least 2 labelled images with a student output, got {n}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(perm[:k])


# --------------------------------------------------------------------------- the command


@dataclass
class CalibrateConfig:
    """Options of :func:`calibrate_student`.

    Attributes:
        kind: ``logistic`` (default), ``isotonic`` or ``linear``.
        fraction: share of the labelled images used to fit (default 0.1 when ``n`` is not given).
        n: number of labelled images used to fit (instead of ``fraction``).
        seed: seed of the subset draw.
        device: ``auto``, ``cpu``, ``cuda``, …
        batch_size: images per student batch.
        progress: progress bar on stderr.
    """

    kind: str = "logistic"
    fraction: float | None = None
    n: int | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in CALIBRATION_KINDS:
            raise ConfigError(f"unknown calibration {self.kind!r}; known: {', '.join(CALIBRATION_KINDS)}")
        if self.fraction is not None and self.n is not None:
            raise ConfigError("give either fraction or n, not both")
        if self.fraction is None and self.n is None:
            self.fraction = 0.1
        if self.fraction is not None and not 0.0 < float(self.fraction) <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.n is not None and int(self.n) < 2:
            raise ConfigError(f"n must be >= 2, got {self.n}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate_student` fitted and how well it does on the held-out remainder."""

    calibration: Calibration
    n_calibration: int
    n_heldout: int
    n_failed: int
    heldout: dict[str, float]
    calibration_fit: dict[str, float]
    dataset: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {"calibration": self.calibration.to_dict(), "n_calibration": self.n_calibration,
             "n_heldout": self.n_heldout, "n_failed": self.n_failed, "heldout": self.heldout,
             "calibration_fit": self.calibration_fit, "dataset": self.dataset, "seconds": self.seconds, **self.extra}
        )


def fit_metrics(pred: Any, mos: Any) -> dict[str, float]:
    """SRCC, PLCC (of the calibrated output, no further fit) and RMSE; NaN when undefined."""
    from lmmiqa.evaluation.correlation import plcc, rmse, srcc

    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    return {"n": int(np.sum(np.isfinite(pred) & np.isfinite(mos))), "srcc": srcc(pred, mos),
            "plcc": plcc(pred, mos), "rmse": rmse(pred, mos)}


def calibrate_raw(
    raw: Any,
    mos: Any,
    config: CalibrateConfig,
    *,
    higher_is_better: bool = True,
    scale: tuple[float, float] | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    """Draw the calibration subset, fit, and measure on the held-out remainder (pure: no files).

    Returns:
        ``(calibration, info)`` with ``info`` = ``n_calibration``, ``n_heldout``, ``heldout`` and
        ``calibration_fit`` metrics, ``indices`` (positions of the calibration subset among the finite pairs).
    """
    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    sub = choose_subset(len(valid), fraction=config.fraction, count=config.n, seed=config.seed)
    cal_idx = valid[sub]
    held = np.setdiff1d(valid, cal_idx)
    calib = fit_calibration(x[cal_idx], y[cal_idx], config.kind, higher_is_better=higher_is_better, scale=scale)
    info = {
        "n_calibration": len(cal_idx),
        "n_heldout": len(held),
        "calibration_fit": fit_metrics(calib.apply(x[cal_idx]), y[cal_idx]),
        "heldout": fit_metrics(calib.apply(x[held]), y[held]) if len(held) else
        {"n": 0, "srcc": math.nan, "plcc": math.nan, "rmse": math.nan},
        "indices": cal_idx,
    }
    return calib, info


def calibrate_student(student: str | os.PathLike[str], dataset: Any, config: CalibrateConfig | None = None) -> CalibrationReport:
    """Calibrate a trained student on a labelled dataset and store ``calibration.json`` in its folder.

    Args:
        student: the student artifact folder (``lmmiqa distill train --out``).
        dataset: a :class:`lmmiqa.data.loader.Dataset` (from ``--dataset``/``--labels``, already split).
        config: options.

    Returns:
        The :class:`CalibrationReport` (also written into ``calibration.json`` under ``report``).
    """
    from lmmiqa.distill.artifact import CALIBRATION_FILE, StudentArtifact, write_json
    from lmmiqa.methods.leaf import LEAF, LEAFConfig

    config = config or CalibrateConfig()
    t0 = time.perf_counter()
    art = StudentArtifact.load(student)
    if len(dataset) == 0:
        raise DataError("the dataset (after the split) has no images to calibrate on")
    scorer = LEAF(LEAFConfig(student=str(art.path), device=config.device, batch_size=config.batch_size,
                             calibrated=False))
    results = scorer.score(dataset.paths(), progress=config.progress)
    raw = np.array([r.score if r.ok else np.nan for r in results], dtype=np.float64)
    n_failed = int(np.sum(~np.isfinite(raw)))
    for r in results:
        if not r.ok:
            log.warning("calibration: %s: %s", r.image, r.error)
    mos = dataset.scores()
    calib, info = calibrate_raw(raw, mos, config, higher_is_better=dataset.higher_is_better,
                                scale=dataset.score_range)
    report = CalibrationReport(
        calibration=calib,
        n_calibration=info["n_calibration"],
        n_heldout=info["n_heldout"],
        n_failed=n_failed,
        heldout=info["heldout"],
        calibration_fit=info["calibration_fit"],
        dataset=dataset.summary(),
        seconds=time.perf_counter() - t0,
        extra={"subset": {"fraction": config.fraction, "n": config.n, "seed": config.seed,
                          "images": [dataset.items[i].id for i in info["indices"]]}},
    )
    data = {**calib.to_dict(), "report": {k: v for k, v in report.to_dict().items() if k != "calibration"}}
    write_json(Path(art.path) / CALIBRATION_FILE, data)
    return report
