"""``lmmiqa reproduce``: a paper's evaluation protocol on the datasets a user has, beside the paper's numbers.

For a method and the datasets given (``{name: folder}``), :func:`reproduce`:

1. takes the method's published rows (:mod:`lmmiqa.reproduce.published`) and its ``paper`` preset (refusing a
   method that has neither; ``preset=None`` runs lmmiqa's defaults against the same numbers);
2. splits each dataset as the rows' protocol says (official test split, whole dataset, seeded 80/20 splits, or
   IQARAG's 10 % reference bank / 90 % evaluated, building that bank);
3. scores with :func:`lmmiqa.evaluation.runner.evaluate` — resumable run folders under ``out/<dataset>/`` — once
   per set of options (the union of the splits' test parts when the options are the same for every split), and
   computes each split's :class:`~lmmiqa.evaluation.report.EvalReport` from the predictions;
4. aggregates splits (median), bootstraps 95 % intervals (over images, or reference images for synthetic sets;
   the median's interval from the medians of the splits' replicates), and compares: the difference measured −
   published and whether the published value lies in the interval.

Options may hold ``{seed}`` and ``{dataset}`` placeholders, filled per split (e.g. a LEAF student per split:
``--dataset-option spaq:student=students/spaq-{seed}``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.data.loader import Dataset, load_dataset
from lmmiqa.data.records import get_record
from lmmiqa.data.splits import seeded_split_mask
from lmmiqa.errors import ConfigError, DataError
from lmmiqa.evaluation.correlation import bootstrap_replicates, percentile_interval
from lmmiqa.evaluation.report import EvalReport
from lmmiqa.evaluation.runner import (
    PREDICTIONS_FILE,
    PredictionStore,
    build_report,
    evaluate,
    package_versions,
)
from lmmiqa.reproduce.published import Protocol, Published, methods_with_numbers, published_for
from lmmiqa.reproduce.report import REPORT_JSON, REPORT_MD, ReproduceReport, write_report

log = logging.getLogger(__name__)

#: the names of ``preset`` that mean lmmiqa's own defaults
DEFAULT_PRESET_NAMES = ("default", "defaults", "none", "lmmiqa")
#: the 10 % reference part of IQARAG's protocol (ref:test = 1:9)
REFERENCE_FRACTION = 0.1
#: marker file of a synthetic ladder (``lmmiqa synth``): such a folder given for a real dataset is a stand-in
SYNTHETIC_MARKER = "SYNTHETIC.txt"


@dataclass(frozen=True)
class Part:
    """One evaluated split of one dataset.

    Attributes:
        dataset: registered dataset name. protocol: the row's protocol. label: the split's name
            (``official:test``, ``all``, ``seed:3:test``, ``ref10:seed:0:test``). seed: its seed, or None.
        data: the evaluated items. reference: the reference part (IQARAG's bank), or None.
    """

    dataset: str
    protocol: Protocol
    label: str
    seed: int | None
    data: Dataset
    reference: Dataset | None = None


# --------------------------------------------------------------------------- splits (pure)


def protocol_parts(ds: Dataset, protocol: Protocol, limit: int | None = None) -> list[Part]:
    """The evaluated parts of ``ds`` under ``protocol`` (each cut to its first ``limit`` items when given)."""

    def cut(d: Dataset) -> Dataset:
        return d.head(int(limit)) if limit is not None else d

    if protocol.kind == "official-test":
        return [Part(ds.name, protocol, "official:test", None, cut(ds.select("official:test")))]
    if protocol.kind == "full":
        return [Part(ds.name, protocol, "all", None, cut(ds.select("all")))]
    parts = []
    for seed in range(int(protocol.n_splits)):
        if protocol.kind == "random-80-20":
            label = f"seed:{seed}:test"
            parts.append(Part(ds.name, protocol, label, seed, cut(ds.select(label))))
        else:  # reference-10-90: the 10 % reference part is the bank, the 90 % rest is evaluated
            test = seeded_split_mask(ds.groups(), seed, "test", test_fraction=1.0 - REFERENCE_FRACTION)
            parts.append(Part(ds.name, protocol, f"ref10:seed:{seed}:test", seed,
                              cut(ds.subset(test, f"ref10:seed:{seed}:test")),
                              ds.subset(~test, f"ref10:seed:{seed}:reference")))
    return parts


def fill_placeholders(value: Any, **context: Any) -> Any:
    """``value`` with ``{seed}``/``{dataset}`` in its strings replaced (recursively in lists and dicts)."""
    if isinstance(value, str):
        out = value
        for key, v in context.items():
            out = out.replace("{" + key + "}", "" if v is None else str(v))
        return out
    if isinstance(value, Mapping):
        return {k: fill_placeholders(v, **context) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fill_placeholders(v, **context) for v in value)
    return value


def median_of_splits(values: list[float]) -> float:
    """The median of the splits' values (NaN splits left out; NaN when none is finite)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def compare(published: float | None, measured: float, interval: tuple[float, float]) -> dict[str, Any]:
    """``{"published", "measured", "ci", "diff", "within"}``: diff = measured − published; within: the published
    value lies in the interval (None when either is undefined)."""
    lo, hi = interval
    ok = published is not None and np.isfinite(measured)
    within = bool(lo <= published <= hi) if ok and np.isfinite(lo) and np.isfinite(hi) else None  # type: ignore[operator]
    return {
        "published": published,
        "measured": float(measured),
        "ci": [float(lo), float(hi)],
        "diff": float(measured - published) if ok else None,  # type: ignore[operator]
        "within": within,
    }


# --------------------------------------------------------------------------- the entry point


def reproduce(
    method: str,
    datasets: Mapping[str, str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    preset: str | None = "paper",
    options: Mapping[str, Any] | None = None,
    dataset_options: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str | os.PathLike[str]] | None = None,
    bank_encoder: str | None = None,
    limit: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
    force: bool = False,
    skip_missing: bool = False,
    plot: bool = True,
    engine: str = "local",
    engine_options: dict[str, Any] | None = None,
    verbose: bool = False,
) -> ReproduceReport:
    """Run ``method``'s paper protocol on ``datasets`` and compare with the published numbers.

    Args:
        method: a registered method (or alias), or ``package.module:Class`` whose class has ``published`` rows.
        datasets: dataset name (or alias) -> folder (the ``--root`` of that dataset; see
            :meth:`~lmmiqa.data.records.DatasetRecord.layout`).
        out: the run folder (resumable: each dataset's evaluations are ``lmmiqa eval`` run folders inside it).
        preset: the method's preset (default ``"paper"``); None or ``"default"``: lmmiqa's defaults.
        options: method options for every dataset (explicit options override the preset's values).
        dataset_options: per dataset, further method options (e.g. an IQARAG ``bank`` or a LEAF ``student``);
            ``{seed}`` and ``{dataset}`` are filled per split.
        labels: per dataset, a label file to read instead of the one in its folder.
        bank_encoder: IQARAG: the encoder of the reference banks built for the ``reference-10-90`` protocol
            (default ``vision-tower``: the scored model's own, the paper's best).
        limit: evaluate only the first ``limit`` items of each split (a partial check; the report says so).
        n_boot, seed: bootstrap resamples and seed of the 95 % intervals.
        batch_size, progress, force, skip_missing, plot, engine, engine_options, verbose: as for
            :func:`lmmiqa.evaluation.runner.evaluate`.

    Raises:
        ConfigError: no published numbers, no paper preset, a dataset without a published number for the method,
            or a run folder holding another configuration (without ``force``).
        ConfigError: a missing dataset folder or label file (the message says how the folder must look).
        DataError: missing image files (without ``skip_missing``) or a malformed label file.
    """
    from lmmiqa import registry
    from lmmiqa.presets import get_preset

    canonical = registry.canonical("method", method) if ":" not in method else method
    cls = registry.resolve_method(canonical)
    rows = published_for(canonical, cls)
    if not rows:
        raise ConfigError(
            f"lmmiqa has no published numbers for {canonical}; methods with a paper's table: "
            f"{', '.join(methods_with_numbers())}"
        )
    if preset is not None and preset.strip().lower() in DEFAULT_PRESET_NAMES:
        preset = None
    if preset is not None:
        presets = getattr(cls, "presets", {}) or {}
        if preset.strip().lower() == "paper" and "paper" not in presets:
            raise ConfigError(
                f"{canonical} has no `paper` preset, so lmmiqa cannot run its paper's settings (`lmmiqa methods "
                f"--presets` lists the presets there are); `--preset default` (preset=None) compares lmmiqa's "
                "defaults with the published numbers instead"
            )
        preset = get_preset(presets, preset, f"method {canonical!r}").name
    if not datasets:
        raise ConfigError(f"give at least one dataset (--dataset NAME=DIR); {canonical}'s paper reports "
                          f"{', '.join(_row_datasets(rows))}")
    given = {registry.canonical("dataset", name): Path(root) for name, root in datasets.items()}
    runnable = {d for r in rows if r.runnable for d in r.datasets}
    unknown = sorted(set(given) - runnable)
    if unknown:
        raise ConfigError(
            f"{canonical}'s paper has no number lmmiqa can reproduce on {', '.join(unknown)}; datasets with one: "
            f"{', '.join(sorted(runnable))}"
        )
    per_ds_opts = {registry.canonical("dataset", k): dict(v) for k, v in (dataset_options or {}).items()}
    stray = sorted(set(per_ds_opts) - set(given))
    if stray:
        raise ConfigError(f"options given for dataset(s) not given: {', '.join(stray)} (add --dataset NAME=DIR)")
    label_files = {registry.canonical("dataset", k): v for k, v in (labels or {}).items()}
    rundir = Path(out)
    rundir.mkdir(parents=True, exist_ok=True)
    say = _say if verbose else (lambda text: log.info("%s", text))

    loaded = {name: _load(name, root, label_files.get(name), skip_missing) for name, root in sorted(given.items())}
    measured: dict[str, dict[str, Any]] = {}
    for name, ds in loaded.items():
        for protocol in _protocols(rows, name):
            key = f"{name}/{protocol.kind}"
            measured[key] = _measure(
                cls, canonical, ds, protocol, rundir / name, preset=preset, options=dict(options or {}),
                dataset_options=per_ds_opts.get(name, {}), bank_encoder=bank_encoder, limit=limit, n_boot=n_boot,
                seed=seed, batch_size=batch_size, progress=progress, force=force, plot=plot, engine=engine,
                engine_options=engine_options, say=say,
            )
            measured[key]["root"] = str(given[name])
            measured[key]["synthetic_standin"] = (given[name] / SYNTHETIC_MARKER).is_file() and not ds.synthetic
    report = ReproduceReport(
        method=canonical,
        preset=preset,
        model=next((m["model"] for m in measured.values()), None),
        rows=tuple(_row_result(r, measured, set(given)) for r in rows),
        datasets=measured,
        n_boot=int(n_boot),
        seed=int(seed),
        limit=int(limit) if limit is not None else None,
        run_dir=str(rundir),
        versions=package_versions(),
        created=_now(),
        preset_summary=_preset_summary(cls, preset),
    )
    write_report(rundir, report, plot=plot)
    say(f"wrote {rundir / REPORT_MD}, {rundir / REPORT_JSON}" + (", comparison.png" if plot else ""))
    return report


# --------------------------------------------------------------------------- steps


def _say(text: str) -> None:
    log.info("%s", text)
    print(f"lmmiqa reproduce: {text}", file=sys.stderr)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _row_datasets(rows: tuple[Published, ...]) -> list[str]:
    return sorted({d for r in rows for d in r.datasets})


def _preset_summary(cls: Any, preset: str | None) -> str | None:
    if preset is None:
        return None
    p = (getattr(cls, "presets", {}) or {}).get(preset)
    return f"{p.summary} ({p.reference})" if p is not None else None


def _protocols(rows: tuple[Published, ...], dataset: str) -> list[Protocol]:
    """The distinct protocols (by kind) of the runnable rows that involve ``dataset``, in table order."""
    out: list[Protocol] = []
    for r in rows:
        if r.runnable and dataset in r.datasets and r.protocol.kind not in {p.kind for p in out}:
            out.append(r.protocol)
    return out


def _load(name: str, root: Path, labels: str | os.PathLike[str] | None, skip_missing: bool) -> Dataset:
    """The dataset in ``root``; a missing folder or label file says how the folder must look."""
    record = get_record(name)
    if not root.is_dir():
        raise ConfigError(f"{name}: folder {root} not found; {record.layout()}")
    label_path = Path(labels) if labels is not None else root / record.label_file
    if not label_path.is_file():
        raise ConfigError(f"{name}: no label file {label_path}; {record.layout()} (or give the label file: "
                          f"--labels {name}=CSV)")
    try:
        return load_dataset(name, root=root, labels=label_path, check_files=True, skip_missing=skip_missing)
    except DataError as err:
        raise DataError(f"{name}: {err}. {record.layout()[0].upper()}{record.layout()[1:]}") from err


def _measure(cls: Any, method: str, ds: Dataset, protocol: Protocol, folder: Path, *, preset: str | None,
             options: dict[str, Any], dataset_options: dict[str, Any], bank_encoder: str | None, limit: int | None,
             n_boot: int, seed: int, batch_size: int | None, progress: bool | None, force: bool, plot: bool,
             engine: str, engine_options: dict[str, Any] | None, say: Any) -> dict[str, Any]:
    """Score every part of ``ds`` under ``protocol`` and return the dataset's measurement (JSON-safe)."""
    from lmmiqa.evaluation.runner import make_scorer

    parts = protocol_parts(ds, protocol, limit)
    say(f"{ds.name}: {protocol.describe()}: {', '.join(f'{p.label} ({len(p.data)} images)' for p in parts)}")
    resolved = []
    for part in parts:
        opts = fill_placeholders({**options, **dataset_options}, seed=part.seed, dataset=ds.name)
        if part.reference is not None and "bank" not in opts:
            opts["bank"] = str(_reference_bank(cls, method, part, folder, preset=preset, options=opts,
                                               encoder=bank_encoder, force=force, progress=progress, say=say))
        resolved.append((part, opts))
    groups: dict[str, list[tuple[Part, dict[str, Any]]]] = {}
    for part, opts in resolved:
        groups.setdefault(json.dumps(opts, sort_keys=True, default=str), []).append((part, opts))

    reports: list[tuple[Part, EvalReport, np.ndarray, np.ndarray]] = []
    model: Any = None
    for members in groups.values():
        single = len(members) == 1
        sub = protocol.kind if single and len(parts) == 1 else (
            f"{protocol.kind}-seed{members[0][0].seed}" if single else protocol.kind)
        union_paths = {p for part, _ in members for p in part.data.paths()}
        union = ds.subset([p in union_paths for p in ds.paths()],
                          members[0][0].label if single else f"union({','.join(m[0].label for m in members)})")
        scorer = make_scorer(method, preset=preset, **members[0][1])
        say(f"{ds.name}: scoring {len(union)} images into {folder / sub} (resumable)")
        run = evaluate(scorer, union, out=folder / sub, n_boot=n_boot if single else 0, seed=seed, plot=plot and single,
                       batch_size=batch_size, progress=progress, force=force, engine=engine,
                       engine_options=engine_options, verbose=False)
        model = run.model
        records = PredictionStore(folder / sub / PREDICTIONS_FILE).load(repair=False)
        for part, _ in members:
            rep, pred, mos, _fit = build_report(
                part.data, records, method=run.method, model=run.model,
                method_higher_is_better=run.method_higher_is_better, preset=run.preset, n_boot=n_boot, seed=seed,
                run_dir=str(folder / sub),
            )
            if limit is not None:
                rep = dataclasses.replace(rep, partial=True, limit=int(limit))
            reports.append((part, rep, pred, mos))
    reports.sort(key=lambda x: (x[0].seed if x[0].seed is not None else -1))
    return _aggregate(ds, protocol, reports, n_boot=n_boot, seed=seed, model=model)


def _aggregate(ds: Dataset, protocol: Protocol, reports: list[tuple[Part, EvalReport, np.ndarray, np.ndarray]], *,
               n_boot: int, seed: int, model: Any) -> dict[str, Any]:
    """One dataset's numbers: per split, and the median over splits with bootstrap intervals."""
    reps_s, reps_p = [], []
    for part, _rep, pred, mos in reports:
        groups = part.data.groups() if (part.data.full_reference or part.data.synthetic) else None
        if n_boot > 0:
            r = bootstrap_replicates(pred, mos, groups=groups, n_boot=n_boot, seed=seed)
            reps_s.append(r["srcc"])
            reps_p.append(r["plcc"])
    srcc = median_of_splits([rep.srcc for _, rep, _, _ in reports])
    plcc = median_of_splits([rep.plcc for _, rep, _, _ in reports])
    nan2 = (float("nan"), float("nan"))
    if reps_s:
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate columns stay NaN
                med_s = np.nanmedian(np.vstack(reps_s), axis=0)
                med_p = np.nanmedian(np.vstack(reps_p), axis=0)
        srcc_ci, plcc_ci = percentile_interval(med_s), percentile_interval(med_p)
    else:
        med_s = med_p = np.zeros(0)
        srcc_ci = plcc_ci = nan2
    return {
        "dataset": ds.name,
        "title": ds.record.title,
        "protocol": protocol.to_dict(),
        "model": model,
        "n_splits": len(reports),
        "srcc": srcc,
        "plcc": plcc,
        "plcc_4pl": median_of_splits([rep.plcc_4pl for _, rep, _, _ in reports]),
        "srcc_ci": list(srcc_ci),
        "plcc_ci": list(plcc_ci),
        "n": int(np.median([rep.n for _, rep, _, _ in reports])) if reports else 0,
        "n_failed": int(sum(rep.n_failed for _, rep, _, _ in reports)),
        "partial": any(rep.partial for _, rep, _, _ in reports),
        "synthetic": ds.synthetic,
        "splits": [
            {"split": part.label, "n": rep.n, "n_failed": rep.n_failed, "srcc": rep.srcc, "plcc": rep.plcc,
             "plcc_4pl": rep.plcc_4pl, "ci": rep.ci, "run_dir": rep.run_dir}
            for part, rep, _, _ in reports
        ],
        "_replicates": {"srcc": med_s, "plcc": med_p},
    }


def _reference_bank(cls: Any, method: str, part: Part, folder: Path, *, preset: str | None, options: dict[str, Any],
                    encoder: str | None, force: bool, progress: bool | None, say: Any) -> Path:
    """Build (or reuse) the reference bank of an IQARAG split from its reference part."""
    from lmmiqa.presets import field_default
    from lmmiqa.retrieval.bank import Bank, build_bank
    from lmmiqa.retrieval.encoders import EncoderSpec, create_encoder

    assert part.reference is not None
    opts = cls.preset_options(preset, dict(options))
    model = opts.get("model") or field_default(cls.config_cls, "model")[1]
    spec = EncoderSpec.parse(encoder or "vision-tower", model=model if (encoder or "vision-tower") == "vision-tower"
                             else None)
    out = folder / f"bank-seed{part.seed}"
    if (out / "bank.json").is_file() and not force:
        bank = Bank.load(out, index=False)
        same = bank.encoder.to_dict() == spec.to_dict() and [it.id for it in bank.items] == part.reference.ids()
        if same:
            say(f"{part.dataset}: reusing the reference bank {out} ({bank.count} images)")
            return out
        raise ConfigError(f"{out} holds a bank of other images or another encoder; --force rebuilds it")
    say(f"{part.dataset}: building the reference bank {out} from {len(part.reference)} images ({spec.spec})")
    enc = create_encoder(spec, device=str(opts.get("device", "auto")), dtype=str(opts.get("dtype", "auto")))
    build_bank(out, part.reference, enc, force=force, progress=progress)
    return out


def _row_result(row: Published, measured: dict[str, dict[str, Any]], given: set[str]) -> dict[str, Any]:
    """One published row beside what was measured (or why it was not)."""
    out: dict[str, Any] = {"published": row.to_dict()}
    if not row.runnable:
        return {**out, "status": "not runnable", "reason": row.why_not}
    missing = [d for d in row.datasets if d not in given]
    if missing:
        return {**out, "status": "not run", "reason": f"dataset(s) not given: {', '.join(missing)} (--dataset NAME=DIR)"}
    ms = [measured[f"{d}/{row.protocol.kind}"] for d in row.datasets]
    if not row.is_average:
        m = ms[0]
        return {**out, "status": "compared", "n": m["n"], "n_splits": m["n_splits"], "plcc_4pl": m["plcc_4pl"],
                "srcc": compare(row.srcc, m["srcc"], tuple(m["srcc_ci"])),
                "plcc": compare(row.plcc, m["plcc"], tuple(m["plcc_ci"])),
                "partial": m["partial"], "synthetic_standin": m["synthetic_standin"]}
    value = float(np.mean([(m["srcc"] + m["plcc"]) / 2.0 for m in ms]))
    reps = [m["_replicates"] for m in ms]
    if all(r["srcc"].size for r in reps):
        boot = np.mean([(r["srcc"] + r["plcc"]) / 2.0 for r in reps], axis=0)
        ci = percentile_interval(boot)
    else:
        ci = (float("nan"), float("nan"))
    return {**out, "status": "compared", "n": int(sum(m["n"] for m in ms)), "n_splits": max(m["n_splits"] for m in ms),
            "mean": compare(row.mean, value, ci), "partial": any(m["partial"] for m in ms),
            "synthetic_standin": any(m["synthetic_standin"] for m in ms),
            "per_dataset": {m["dataset"]: {"srcc": m["srcc"], "plcc": m["plcc"]} for m in ms}}


__all__ = ["Part", "compare", "fill_placeholders", "median_of_splits", "protocol_parts", "reproduce"]
