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
from collections.abc import Sequence
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
            "increasing map cannot be fitted"
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


def student_fidelity(artifact: Any) -> dict[str, Any] | None:
    """The student's fidelity to its teacher recorded by training (``training.json``), or ``None``."""
    from lmmiqa.distill.artifact import TRAINING_FILE

    path = Path(artifact.path) / TRAINING_FILE
    if not path.is_file():
        return None
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    fid = data.get("fidelity")
    if fid is None and data.get("history"):
        val = data["history"][-1].get("val_srcc_vs_teacher")
        fid = {"val_srcc": val, "n_val": data.get("n_val")} if val is not None else None
    return fid


def likely_cause(artifact: Any) -> str:
    """Why a student may rank labelled images against their MOS, from what training recorded."""
    from lmmiqa.distill.train import LOW_FIDELITY

    fid = student_fidelity(artifact) or {}
    key = "val_srcc" if fid.get("val_srcc") is not None else "train_srcc"
    v = fid.get(key)
    where = "held-out" if key == "val_srcc" else "training"
    if v is None or not math.isfinite(float(v)):
        return ("Training recorded no fidelity to the teacher (an older student folder), so the cause cannot be "
                "told apart: either the student did not learn its teacher (retrain with --val-fraction to see its "
                "SRCC to the teacher), or the teacher ranks these images against the labels (label direction: "
                "--lower-better; or a teacher unsuited to this data)")
    if abs(float(v)) < LOW_FIDELITY:
        return (f"Likely cause: the student did not learn its teacher (SRCC {float(v):+.3f} against the teacher on "
                f"{where} images, below {LOW_FIDELITY}); retrain it (more teacher-judged images, more --epochs, "
                "--resize-mode crops) before calibrating. The label direction is probably not the problem")
    return (f"The student follows its teacher (SRCC {float(v):+.3f} on {where} images), so the teacher itself ranks "
            "these images against the labels: check the label direction (--lower-better for DMOS) or use a "
            "teacher suited to this data")


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


def choose_subset(n: int, *, fraction: float | None = None, count: int | None = None, seed: int = 0,
                  groups: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the calibration subset among ``n`` items: ``count`` items, or ``round(fraction·n)``, seeded.

    With ``groups`` (the reference image of each item, as the evaluation splits use them: KADID, TID, CSIQ,
    LIVE), whole groups are drawn in a seeded order until the subset holds at least that many items, so that no
    reference image has distortions on both sides of the calibration/held-out boundary; at least one group is
    left out when there are two or more.

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
    if groups is not None:
        if len(groups) != n:
            raise ConfigError(f"groups has {len(groups)} entries for {n} items")
        uniq = sorted(set(groups))
        if 1 < len(uniq) < n:
            members: dict[str, list[int]] = {}
            for i, g in enumerate(groups):
                members.setdefault(g, []).append(i)
            chosen: list[int] = []
            for j in np.random.default_rng(int(seed)).permutation(len(uniq))[: len(uniq) - 1]:
                chosen += members[uniq[j]]
                if len(chosen) >= k:
                    break
            return np.sort(np.asarray(chosen, dtype=np.int64))
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
        preset: the preset these options were built over (:func:`calibrate_config`; recorded in
            ``calibration.json``), or None.
    """

    kind: str = "logistic"
    fraction: float | None = None
    n: int | None = None
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    progress: bool | None = None
    preset: str | None = None

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


def calibrate_config(preset: str | None = None, **options: Any) -> CalibrateConfig:
    """A :class:`CalibrateConfig` from keyword options over the values of ``preset`` (``"paper"``: 10 % of the
    labels, :data:`lmmiqa.distill.presets.CALIBRATE_PAPER`); explicit options (not None) win. An explicit ``n``
    replaces the preset's ``fraction`` (the two are alternatives)."""
    from lmmiqa.config import build_config
    from lmmiqa.distill.presets import CALIBRATE, STAGE_PRESETS
    from lmmiqa.presets import apply_preset, get_preset

    opts = apply_preset(STAGE_PRESETS[CALIBRATE], preset, options, f"`lmmiqa {CALIBRATE}`")
    if preset is not None:
        if options.get("n") is not None and options.get("fraction") is None:
            opts.pop("fraction", None)
        opts["preset"] = get_preset(STAGE_PRESETS[CALIBRATE], preset, f"`lmmiqa {CALIBRATE}`").name
    return build_config(CalibrateConfig, opts, what=f"`lmmiqa {CALIBRATE}`")


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
    groups: Sequence[str] | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    """Draw the calibration subset, fit, and measure on the held-out remainder (pure: no files).

    Returns:
        ``(calibration, info)`` with ``info`` = ``n_calibration``, ``n_heldout``, ``heldout`` and
        ``calibration_fit`` metrics, ``indices`` (positions of the calibration subset among the finite pairs).
        ``groups`` (reference image per item) draws the subset by whole groups (:func:`choose_subset`).
    """
    x = np.asarray(raw, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    sub = choose_subset(len(valid), fraction=config.fraction, count=config.n, seed=config.seed,
                        groups=[groups[i] for i in valid] if groups is not None else None)
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
    groups = dataset.groups() if dataset.full_reference else None
    try:
        calib, info = calibrate_raw(raw, mos, config, higher_is_better=dataset.higher_is_better,
                                    scale=dataset.score_range, groups=groups)
    except DataError as err:
        raise DataError(f"{err}. {likely_cause(art)}") from err
    report = CalibrationReport(
        calibration=calib,
        n_calibration=info["n_calibration"],
        n_heldout=info["n_heldout"],
        n_failed=n_failed,
        heldout=info["heldout"],
        calibration_fit=info["calibration_fit"],
        dataset=dataset.summary(),
        seconds=time.perf_counter() - t0,
        extra={"preset": config.preset,
               "subset": {"fraction": config.fraction, "n": config.n, "seed": config.seed,
                          "by": "reference image" if groups is not None else "image",
                          "images": [dataset.items[i].id for i in info["indices"]],
                          "paths": [dataset.items[i].path for i in info["indices"]]},
               "student_fidelity": student_fidelity(art)},
    )
    fid = report.extra["student_fidelity"] or {}
    low = [v for v in (fid.get("val_srcc"), fid.get("train_srcc")) if v is not None and math.isfinite(float(v))]
    from lmmiqa.distill.train import LOW_FIDELITY

    if low and abs(float(low[0])) < LOW_FIDELITY:
        msg = (f"the student barely follows its teacher (SRCC {float(low[0]):+.3f}); this calibration maps mostly "
               "noise. " + likely_cause(art))
        log.warning("%s", msg)
        report.extra["warnings"] = [msg]
    data = {**calib.to_dict(), "report": {k: v for k, v in report.to_dict().items() if k != "calibration"}}
    write_json(Path(art.path) / CALIBRATION_FILE, data)
    return report
