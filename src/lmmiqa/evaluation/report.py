"""The result of one evaluation run: :class:`EvalReport` (frozen, JSON-safe) and its Markdown rendering.

``report.json`` holds :meth:`EvalReport.to_dict`; :meth:`EvalReport.from_dict` reads it back (``lmmiqa report``).
Every PLCC is labelled: ``plcc`` is raw (no fit), ``plcc_4pl`` after the 4-parameter logistic fit (VQEG,
METHODS §7), ``plcc_5pl`` after the 5-parameter fit (§5.3); ``fit_converged`` says whether each fit converged
or the documented fallback map was used. ``oriented`` says whether predictions were negated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lmmiqa.types import json_safe

#: bump when the meaning of a field changes
REPORT_SCHEMA = 1


@dataclass(frozen=True)
class EvalReport:
    """Agreement of one method with human opinion on one dataset split.

    Attributes:
        method: registered method name (or ``module:Class``). model: model id(s), or ``None``.
        preset: the method's preset the scorer was built over (``"paper"``; ``lmmiqa methods --presets`` lists its
            values), or ``None`` for lmmiqa's defaults.
        dataset: dataset record name. split: split specification. labels: label file.
        n: items with a prediction used in the metrics. n_failed: items that could not be scored.
        n_total: items in the (possibly limited) selection. partial: true when ``limit`` cut the split.
        limit: the ``--limit`` value, or ``None``.
        srcc, krcc, plcc: Spearman, Kendall τ-b, raw Pearson.
        plcc_4pl, plcc_5pl: Pearson after the 4PL / 5PL logistic fit; rmse, rmse_5pl: RMSE after them (MOS units).
        ci: bootstrap 95 % intervals ``{"srcc": [lo, hi], "plcc": [lo, hi] (raw PLCC), "unit": ..., ...}``.
        fit_converged: ``{"logistic4": bool, "logistic5": bool}``. fits: full fit records (params, fallback).
        oriented: ``{"negated_predictions": bool, "reason": str}``.
        method_higher_is_better, dataset_higher_is_better: the two directions.
        synthetic: the labels are pseudo-MOS. n_missing: image files skipped as missing.
        failures: first few ``{"image", "error"}`` of failed items.
        run_dir: where the run's files are (``None`` for in-memory evaluations).
        seconds_per_image: mean ``timings.total`` (or sum of timings) per scored item, when reported.
        covered_mass: ``{"median", "n", "n_low", "threshold"}`` of the items' ``details.covered_mass`` (the level
            tokens' share of the next-token probability; a low median means the prompt, chat template or model
            does not fit, see :mod:`lmmiqa.methods.coverage`), or ``{}`` when the method reports none.
        overlap: ``{"n", "of", "allowed"}``: how many evaluated images are also in the method's reference or
            training data (IQARAG bank, LEAF student), evaluated anyway only with ``allow_overlap``; ``{}`` when the
            method has no such data.
        created: ISO time the report was made. versions: package versions.
    """

    method: str
    model: Any
    dataset: str
    split: str
    n: int
    n_failed: int
    srcc: float
    krcc: float
    plcc: float
    plcc_4pl: float
    plcc_5pl: float
    rmse: float
    rmse_5pl: float
    ci: dict[str, Any] = field(default_factory=dict)
    fit_converged: dict[str, bool] = field(default_factory=dict)
    fits: dict[str, Any] = field(default_factory=dict)
    oriented: dict[str, Any] = field(default_factory=dict)
    method_higher_is_better: bool = True
    dataset_higher_is_better: bool = True
    n_total: int = 0
    partial: bool = False
    limit: int | None = None
    labels: str | None = None
    synthetic: bool = False
    n_missing: int = 0
    failures: tuple[dict[str, str], ...] = ()
    run_dir: str | None = None
    seconds_per_image: float | None = None
    covered_mass: dict[str, Any] = field(default_factory=dict)
    overlap: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = REPORT_SCHEMA
    preset: str | None = None

    @property
    def mean(self) -> float:
        """(SRCC + PLCC after the 4PL fit) / 2, the usual one-number summary."""
        return (self.srcc + self.plcc_4pl) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (NaN becomes ``None``)."""
        out = {f.name: json_safe(getattr(self, f.name)) for f in fields(self)}
        out["mean_srcc_plcc4"] = json_safe(self.mean)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of :meth:`to_dict` (``None`` metrics become NaN)."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for k in ("srcc", "krcc", "plcc", "plcc_4pl", "plcc_5pl", "rmse", "rmse_5pl"):
            v = kw.get(k)
            kw[k] = float("nan") if v is None else float(v)
        kw["failures"] = tuple(kw.get("failures") or ())
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read ``report.json`` (or the ``report.json`` inside a run folder)."""
        from lmmiqa.errors import DataError

        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError as err:
            raise DataError(f"no report at {p} (has the run finished? `lmmiqa eval` writes it at the end)") from err
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise DataError(f"{p} is not an lmmiqa report: {err}") from err

    def fell_back(self, name: str) -> str | None:
        """The map used instead of the ``logistic4``/``logistic5`` fit when it did not converge ("a line" or "a
        constant"), else None."""
        if (self.fit_converged or {}).get(name, True):
            return None
        why = str(((self.fits or {}).get(name) or {}).get("fallback") or "")
        return "a constant" if why.startswith("constant") else "a line"

    def _fell_back(self, name: str) -> str:
        used = self.fell_back(name)
        return f" (**fell back to {used}**)" if used else ""

    def to_markdown(self) -> str:
        """A short human-readable report."""
        lines = [f"# {self.method} on {self.dataset} ({self.split})", ""]
        if self.synthetic:
            lines += ["**Synthetic labels**: scores are pseudo-MOS derived from distortion severity, not human "
                      "opinion.", ""]
        if self.partial:
            lines += [f"**Partial run**: only the first {self.limit} of the split's items were evaluated "
                      "(`--limit`).", ""]
        model = ", ".join(self.model) if isinstance(self.model, list) else (self.model or "-")
        ci = self.ci or {}
        preset = (f"{self.preset} (its values: `lmmiqa methods {self.method} --presets`)" if self.preset
                  else "none (lmmiqa's defaults)")
        lines += [
            f"- model: {model}",
            f"- preset: {preset}",
            f"- labels: {self.labels or '-'}",
            f"- items: n = {self.n} scored, {self.n_failed} failed, {self.n_total} selected"
            + (f", {self.n_missing} missing files skipped" if self.n_missing else ""),
            f"- direction: {(self.oriented or {}).get('reason', '-')}",
            "",
            "| metric | value | 95 % CI |",
            "|---|---|---|",
            f"| SRCC | {_f(self.srcc)} | {_ci(ci.get('srcc'))} |",
            f"| KRCC (τ-b) | {_f(self.krcc)} | |",
            f"| PLCC (raw, no fit) | {_f(self.plcc)} | {_ci(ci.get('plcc'))} |",
            f"| PLCC after 4PL fit{self._fell_back('logistic4')} | {_f(self.plcc_4pl)} | |",
            f"| PLCC after 5PL fit{self._fell_back('logistic5')} | {_f(self.plcc_5pl)} | |",
            f"| RMSE after 4PL fit{self._fell_back('logistic4')} | {_f(self.rmse)} | |",
            f"| RMSE after 5PL fit{self._fell_back('logistic5')} | {_f(self.rmse_5pl)} | |",
            "",
            f"Bootstrap: {ci.get('n_boot', 0)} resamples over {ci.get('unit', 'image')}s "
            f"({ci.get('n_units', '-')} units), seed {ci.get('seed', '-')}; the PLCC interval is for raw PLCC.",
            "",
        ]
        for name in ("logistic4", "logistic5"):
            fit = (self.fits or {}).get(name) or {}
            conv = self.fit_converged.get(name)
            state = "converged" if conv else f"did not converge; fallback: {fit.get('fallback')}"
            params = ", ".join(_f(p, 6) for p in fit.get("params") or [])
            lines.append(f"- {name} fit {state}; parameters: [{params}]")
        if self.seconds_per_image is not None:
            lines += ["", f"Speed: {self.seconds_per_image:.4f} s per image (mean of per-item timings)."]
        lines += _covered_mass_lines(self.covered_mass)
        if self.overlap:
            n, of = self.overlap.get("n", 0), self.overlap.get("of", self.n_total)
            lines += ["", f"Overlap with the method's reference/training data: {n} of {of} evaluated images"
                      + (" — **evaluated anyway (--allow-overlap): their own labels leak into these numbers**."
                         if n else " (checked).")]
        if self.failures:
            lines += ["", "## First failures", ""]
            lines += [f"- `{f.get('image')}`: {f.get('error')}" for f in self.failures]
        lines += ["", f"_created {self.created}; lmmiqa {self.versions.get('lmmiqa', '?')}_", ""]
        return "\n".join(lines)


def covered_mass_summary(values: Any, threshold: float | None = None) -> dict[str, Any]:
    """Median covered mass of the scored items (``details.covered_mass``), how many are below ``threshold``
    (default :data:`lmmiqa.methods.coverage.COVERED_MASS_THRESHOLD`); ``{}`` when no item reports one."""
    import numpy as np

    from lmmiqa.methods.coverage import COVERED_MASS_THRESHOLD

    thr = COVERED_MASS_THRESHOLD if threshold is None else float(threshold)
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {}
    return {"median": float(np.median(v)), "n": int(v.size), "n_low": int((v < thr).sum()), "threshold": thr}


def _covered_mass_lines(cm: dict[str, Any]) -> list[str]:
    if not cm or cm.get("median") is None:
        return []
    med, thr = float(cm["median"]), float(cm.get("threshold", 0.5))
    lines = [
        "",
        f"Covered mass (the level tokens' share of the next-token probability): median {med:.4f} over "
        f"{cm.get('n')} items, {cm.get('n_low')} below {thr:g}.",
    ]
    if med < thr:
        lines += [
            "",
            f"**Low covered mass**: the median is below {thr:g}, so the model mostly wanted to write something other "
            "than a level; the prompt, chat template or model probably does not fit (a thinking template, a model "
            "that answers in words, random weights) and the scores above are a softmax over unlikely tokens.",
        ]
    return lines


def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.{nd}f}"


def _ci(pair: Any) -> str:
    if not pair or any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in pair):
        return "n/a"
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"
