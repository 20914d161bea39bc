"""Resumable evaluation of a scorer on a dataset split (``lmmiqa eval`` and :func:`lmmiqa.evaluate`).

A run folder (RUNDIR) holds:

* ``config.json`` — method, model, scorer options, dataset, split, limit, versions. Re-running with a different
  configuration is refused unless ``force=True`` (which starts over).
* ``predictions.jsonl`` — one :meth:`ScoreResult.to_dict` per line, appended batch by batch, each batch flushed
  and ``fsync``'d. A run killed at any moment loses at most the batch in flight; a torn last line is cut off when
  the run resumes, and items already in the file are never scored again (no duplicate lines).
* ``report.json`` / ``report.md`` / ``scatter.png`` — written at the end from the predictions.

The scoring loop is pluggable: an *engine* is a function ``engine(scorer, pending, on_results, *, batch_size,
progress)`` that scores the pending image paths in any order and calls ``on_results(list[ScoreResult])`` as
results arrive (from one thread). :data:`ENGINES` maps names to engines; ``local`` uses
:meth:`Scorer.iter_score`. Another engine (e.g. Ray) is one function plus one entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.data.loader import Dataset, load_dataset
from lmmiqa.errors import ConfigError, DataError, LmmiqaError
from lmmiqa.evaluation.correlation import compute_metrics
from lmmiqa.evaluation.report import EvalReport, covered_mass_summary
from lmmiqa.types import ScoreResult, json_safe

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SCATTER_PNG = "scatter.png"
LOCK_FILE = ".lock"

#: scorer options that change speed, not results (not compared on resume)
PERFORMANCE_OPTIONS = frozenset({"batch_size", "decode_workers"})
#: failures listed in reports
MAX_FAILURES_LISTED = 5

OnResults = Callable[[list[ScoreResult]], None]
Engine = Callable[..., None]


# --------------------------------------------------------------------------- engines


def local_engine(
    scorer: Any,
    pending: list[str],
    on_results: OnResults,
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> None:
    """Score ``pending`` in this process with :meth:`Scorer.iter_score`, batch by batch.

    The progress bar (stderr, with rate and ETA) is shown when ``progress`` is true, or by default when stderr is
    a terminal.
    """
    for batch in scorer.iter_score(pending, batch_size=batch_size, progress=progress):
        on_results(batch)


def ray_engine(scorer: Any, pending: list[str], on_results: OnResults, **options: Any) -> None:
    """Score ``pending`` on a Ray actor pool, one model per actor; see :func:`lmmiqa.distributed.ray_engine`
    for the options (``address``, ``actors``, ``gpus_per_actor``, ...). Needs the ``ray`` extra."""
    from lmmiqa.distributed import ray_engine as _ray_engine

    _ray_engine(scorer, pending, on_results, **options)


#: engine name -> engine function
ENGINES: dict[str, Engine] = {"local": local_engine, "ray": ray_engine}


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``; UnknownNameError lists the valid ones."""
    from lmmiqa.errors import UnknownNameError

    if name not in ENGINES:
        raise UnknownNameError("engine", name, ENGINES)
    return ENGINES[name]


# --------------------------------------------------------------------------- predictions file


class PredictionStore:
    """``predictions.jsonl``: append-only, one result per line, crash-safe.

    :meth:`load` reads every complete line and cuts off a torn last line (an interrupted write). A malformed line
    in the middle of the file is an error (the file was edited or corrupted), as is an image appearing twice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self, repair: bool = True) -> dict[str, dict[str, Any]]:
        """``image -> result dict`` for every complete line; with ``repair`` fix an interrupted tail.

        Writes are sequential, so an interruption can only leave a partial *last* line (no newline after it).
        A tail that is a complete result missing only its newline is kept (and the newline added); any other
        tail is cut off. Every line before it must be a result.
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1  # end of the last complete line (0 when none)
        body, tail = data[:cut], data[cut:]
        out: dict[str, dict[str, Any]] = {}
        for i, raw in enumerate(body.split(b"\n")[:-1], start=1):
            if not raw.strip():
                continue
            rec = _parse_line(raw)
            if rec is None:
                raise DataError(f"{self.path}: line {i} is not a result; the file is corrupted")
            if rec["image"] in out:
                raise DataError(f"{self.path}: image {rec['image']!r} appears twice (line {i})")
            out[rec["image"]] = rec
        if tail.strip():
            rec = _parse_line(tail)
            if rec is not None and rec["image"] not in out:
                out[rec["image"]] = rec
                if repair:
                    with self.path.open("ab") as f:
                        f.write(b"\n")
                        f.flush()
                        os.fsync(f.fileno())
            else:
                log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path,
                            len(tail))
                if repair:
                    with self.path.open("r+b") as f:
                        f.truncate(cut)
                        f.flush()
                        os.fsync(f.fileno())
        elif tail and repair:  # trailing whitespace without newline
            with self.path.open("r+b") as f:
                f.truncate(cut)
        return out

    def append(self, results: list[ScoreResult]) -> None:
        """Append results as one write, then flush and fsync."""
        if not results:
            return
        text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def rewrite_without(self, keys: set[str]) -> int:
        """Atomically rewrite the file without the results for ``keys``; returns how many were dropped."""
        records = self.load()
        kept = [r for k, r in records.items() if k not in keys]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return len(records) - len(kept)


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("image"), str) else None


# --------------------------------------------------------------------------- run config


def package_versions() -> dict[str, str]:
    """Versions of lmmiqa, Python and the packages that influence scores (read from metadata; nothing imported)."""
    from importlib import metadata

    from lmmiqa._version import __version__

    out = {"lmmiqa": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "pillow", "torch", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


@dataclass(frozen=True)
class RunConfig:
    """What a run folder evaluates; saved as ``config.json``.

    Attributes:
        method: method name. model: model id(s). options: the scorer's full config (``describe()["config"]``).
        preset: the preset the scorer was built over (``"paper"``), or ``None`` for lmmiqa's defaults.
        dataset: the dataset summary (name, labels, root, split, columns, direction ...).
        limit: ``--limit``, or ``None``. engine: engine name. n_boot, seed: bootstrap settings.
        versions: package versions when the run started. created: ISO time.
    """

    method: str
    model: Any
    options: dict[str, Any]
    dataset: dict[str, Any]
    limit: int | None
    engine: str
    n_boot: int
    seed: int
    versions: dict[str, str]
    created: str
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "method": self.method,
                "preset": self.preset,
                "model": self.model,
                "options": self.options,
                "dataset": self.dataset,
                "split": self.dataset.get("split"),
                "limit": self.limit,
                "engine": self.engine,
                "n_boot": self.n_boot,
                "seed": self.seed,
                "versions": self.versions,
                "created": self.created,
            }
        )

    @staticmethod
    def fingerprint(d: dict[str, Any]) -> dict[str, Any]:
        """The parts of a saved config that must match for a resume (results would differ otherwise)."""
        ds = d.get("dataset") or {}
        opts = {f"options.{k}": v for k, v in (d.get("options") or {}).items() if k not in PERFORMANCE_OPTIONS}
        return json_safe(
            {
                "method": d.get("method"),
                "model": d.get("model"),
                **opts,
                "dataset.name": ds.get("name"),
                "dataset.labels": ds.get("labels"),
                "dataset.root": ds.get("root"),
                "dataset.split": ds.get("split"),
                "dataset.image_column": ds.get("image_column"),
                "dataset.score_column": ds.get("score_column"),
                "dataset.ref_column": ds.get("ref_column"),
                "dataset.higher_is_better": ds.get("higher_is_better"),
            }
        )


def _dataset_resize(scorer: Any, ds: Dataset, enabled: bool) -> dict[str, Any]:
    """Apply the dataset record's evaluation resize to the scorer (``config.input_resize``) and say what was done:
    ``{"input_resize", "source", "protocol"}``; the method's own ``input_resize`` wins."""
    protocol = getattr(ds.record, "eval_resize", None)
    cfg = getattr(scorer, "config", None)
    own = getattr(cfg, "input_resize", None)
    if own:
        return {"input_resize": own, "source": "method option", "protocol": protocol}
    if protocol and enabled:
        if cfg is None or not hasattr(cfg, "input_resize"):
            raise ConfigError(
                f"{ds.name} is evaluated with its inputs resized ({protocol}), but {type(scorer).__name__} has no "
                "input_resize option; pass dataset_resize=False (--no-dataset-resize) to score the images as published"
            )
        from lmmiqa.backends.pixels import parse_resize

        parse_resize(protocol)
        cfg.input_resize = protocol
        return {"input_resize": protocol, "source": "dataset protocol", "protocol": protocol}
    return {"input_resize": None, "source": "--no-dataset-resize" if protocol else "none", "protocol": protocol}


def _say(verbose: bool, text: str) -> None:
    log.info("%s", text)
    if verbose:
        print(f"lmmiqa eval: {text}", file=sys.stderr)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _run_lock(rundir: Path) -> Iterator[None]:
    """Exclusive lock on the run folder, so two processes never append to the same predictions file.

    The lock file is removed on every exit (success, error, interruption) while the lock is still held; a
    process that opened the file just before its removal notices that its file is no longer the one at the path
    and locks the new one instead, so two processes never both hold "the" lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = rundir / LOCK_FILE
    while True:
        f = path.open("a")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            f.close()
            raise ConfigError(f"{rundir} is in use by another lmmiqa eval process") from err
        try:
            current = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()  # the previous holder removed it after we opened it: lock the file now at the path
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        f.close()


def _n_scored(preds: Path) -> int:
    """How many items of a predictions file have a score (0 when there is no file)."""
    try:
        records = PredictionStore(preds).load(repair=False)
    except DataError:
        return 1  # a damaged file is not "empty": never discard it without --force
    return sum(1 for r in records.values() if r.get("error") is None and r.get("score") is not None)


def _prepare_rundir(rundir: Path, config: RunConfig, force: bool, verbose: bool = False) -> None:
    """Create or validate the run folder; with ``force`` start it over.

    A folder whose run scored nothing (it failed before its first result, e.g. a model that could not be loaded)
    holds nothing to protect: a run with another configuration replaces it without ``force``.
    """
    rundir.mkdir(parents=True, exist_ok=True)
    cfg_path = rundir / CONFIG_FILE
    preds = rundir / PREDICTIONS_FILE
    new = config.to_dict()
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            if not force:
                raise DataError(f"{cfg_path} is not valid JSON; pass --force to start the run over") from err
            old = {}
        a, b = RunConfig.fingerprint(old), RunConfig.fingerprint(new)
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        replace_empty = bool(diff) and not force and _n_scored(preds) == 0
        if replace_empty:
            _say(verbose, f"{rundir} holds an earlier run that scored nothing; replacing it with this "
                 f"configuration ({', '.join(diff)} changed)")
        if diff and not force and not replace_empty:
            details = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
            raise ConfigError(
                f"{rundir} holds a run with a different configuration ({details}); use another folder, or "
                "--force to discard its predictions and start over"
            )
        if not diff:
            # same run: keep the original creation time, record current versions
            new["created"] = old.get("created", new["created"])
            new["versions_resumed"] = config.versions
            new["versions"] = old.get("versions", config.versions)
        else:
            if not replace_empty:
                log.warning("%s: configuration changed (%s); --force: starting over", rundir, ", ".join(diff))
            _clear_outputs(rundir)
    elif preds.exists() and preds.stat().st_size > 0:
        if not force:
            raise ConfigError(
                f"{rundir} has {PREDICTIONS_FILE} but no {CONFIG_FILE}: not a run folder lmmiqa can resume; "
                "use another folder, or --force to discard it"
            )
        _clear_outputs(rundir)
    _write_atomic(cfg_path, json.dumps(new, indent=2) + "\n")


def _clear_outputs(rundir: Path) -> None:
    for name in (PREDICTIONS_FILE, REPORT_JSON, REPORT_MD, SCATTER_PNG):
        with contextlib.suppress(FileNotFoundError):
            (rundir / name).unlink()


# --------------------------------------------------------------------------- scorer construction


def make_scorer(method: str, **options: Any) -> Any:
    """A scorer from a registered method name, or from ``package.module:Class`` (a plugin's Scorer subclass)."""
    from lmmiqa import registry

    return registry.resolve_method(method).from_options(**options)


# --------------------------------------------------------------------------- metrics from predictions


def _seconds(rec: dict[str, Any]) -> float | None:
    t = rec.get("timings") or {}
    if "total" in t and t["total"] is not None:
        return float(t["total"])
    vals = [float(v) for v in t.values() if isinstance(v, (int, float))]
    return sum(vals) if vals else None


def build_report(
    dataset: Dataset,
    records: dict[str, dict[str, Any]],
    *,
    method: str,
    model: Any,
    method_higher_is_better: bool,
    preset: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    n_split: int | None = None,
    run_dir: str | None = None,
    versions: dict[str, str] | None = None,
) -> tuple[EvalReport, np.ndarray, np.ndarray, Any]:
    """Compute the :class:`EvalReport` of ``records`` (image -> result dict) on the items of ``dataset``.

    Items of ``dataset`` without a record, or whose record has an error or no score, count as failed.

    Returns:
        ``(report, oriented predictions, mos, 4PL fit)`` — the arrays are what the scatter plot shows.
    """
    paths = dataset.paths()
    mos = dataset.scores()
    pred = np.full(len(paths), np.nan)
    failures: list[dict[str, str]] = []
    hib: set[bool] = set()
    secs: list[float] = []
    masses: list[Any] = []
    for i, p in enumerate(paths):
        rec = records.get(p)
        if rec is None:
            failures.append({"image": p, "error": "no prediction"})
            continue
        if rec.get("error") is not None or rec.get("score") is None:
            failures.append({"image": p, "error": str(rec.get("error") or "no score")})
            continue
        pred[i] = float(rec["score"])
        hib.add(bool(rec.get("higher_is_better", method_higher_is_better)))
        s = _seconds(rec)
        if s is not None:
            secs.append(s)
        masses.append((rec.get("details") or {}).get("covered_mass"))
    if len(hib) > 1:
        raise DataError("predictions mix higher-is-better and lower-is-better scores; cannot orient them")
    m_hib = hib.pop() if hib else method_higher_is_better
    groups = dataset.groups() if (dataset.full_reference or dataset.synthetic) else None
    met = compute_metrics(
        pred,
        mos,
        groups=groups,
        method_higher_is_better=m_hib,
        dataset_higher_is_better=dataset.higher_is_better,
        n_boot=n_boot,
        seed=seed,
    )
    if met.ci.get("unit") == "group":
        met.ci["unit"] = "reference"
    n_total = len(paths)
    report = EvalReport(
        method=method,
        preset=preset,
        model=model,
        dataset=dataset.name,
        split=dataset.split,
        n=met.n,
        n_failed=len(failures),
        srcc=met.srcc,
        krcc=met.krcc,
        plcc=met.plcc,
        plcc_4pl=met.plcc_4pl,
        plcc_5pl=met.plcc_5pl,
        rmse=met.rmse,
        rmse_5pl=met.rmse_5pl,
        ci=met.ci,
        fit_converged={"logistic4": met.fit4.converged, "logistic5": met.fit5.converged},
        fits={"logistic4": met.fit4.to_dict(), "logistic5": met.fit5.to_dict()},
        oriented=met.orientation.to_dict(),
        method_higher_is_better=m_hib,
        dataset_higher_is_better=dataset.higher_is_better,
        n_total=n_total,
        partial=limit is not None and n_split is not None and n_total < n_split,
        limit=limit,
        labels=dataset.labels,
        synthetic=dataset.synthetic,
        n_missing=dataset.n_missing,
        failures=tuple(failures[:MAX_FAILURES_LISTED]),
        run_dir=run_dir,
        seconds_per_image=float(np.mean(secs)) if secs else None,
        covered_mass=covered_mass_summary(masses),
        created=_now(),
        versions=versions or package_versions(),
    )
    oriented_pred = -pred if met.orientation.negated else pred
    return report, oriented_pred, mos, met.fit4


def write_report_files(rundir: Path, report: EvalReport, pred: np.ndarray, mos: np.ndarray, fit: Any,
                       plot: bool = True) -> None:
    """Write ``report.json``, ``report.md`` and (with ``plot``) ``scatter.png`` into ``rundir``."""
    _write_atomic(rundir / REPORT_JSON, json.dumps(report.to_dict(), indent=2) + "\n")
    _write_atomic(rundir / REPORT_MD, report.to_markdown())
    if plot:
        from lmmiqa.evaluation.plots import scatter_plot

        neg = " (negated)" if report.oriented.get("negated_predictions") else ""
        label = "DMOS" if not report.dataset_higher_is_better else "MOS"
        if report.synthetic:
            label = f"pseudo-{label} (synthetic)"
        scatter_plot(
            pred,
            mos,
            rundir / SCATTER_PNG,
            fit=fit,
            title=f"{report.method} on {report.dataset} ({report.split})",
            xlabel=f"prediction{neg}",
            ylabel=label,
            note=f"n={report.n}  SRCC {report.srcc:.3f}  PLCC {report.plcc:.3f}  PLCC-4PL {report.plcc_4pl:.3f}"
            + ("  [partial]" if report.partial else ""),
        )


# --------------------------------------------------------------------------- the entry point


def evaluate(
    scorer: Any,
    dataset: str | Dataset | None = None,
    root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    labels: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    score_column: str | None = None,
    ref_column: str | None = None,
    lower_better: bool | None = None,
    score_range: tuple[float, float] | None = None,
    skip_missing: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    force: bool = False,
    retry_failed: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    plot: bool = True,
    engine: str = "local",
    engine_options: dict[str, Any] | None = None,
    method_options: dict[str, Any] | None = None,
    allow_overlap: bool = False,
    dataset_resize: bool = True,
    verbose: bool = False,
) -> EvalReport:
    """Evaluate a scorer on a dataset split and return its :class:`EvalReport`.

    Args:
        scorer: a :class:`~lmmiqa.methods.base.Scorer`, or a method name (then built with ``method_options``).
        dataset: a registered dataset name, a loaded :class:`~lmmiqa.data.loader.Dataset` (used as loaded,
            ``split`` applied when given; the loader's file check is not repeated), or ``None`` with ``labels``
            for a generic CSV.
        root, split, labels, image_column, score_column, ref_column, lower_better, score_range, skip_missing:
            see :func:`lmmiqa.data.loader.load_dataset`.
        out: run folder (resumable, see the module doc); ``None`` evaluates in memory and writes nothing.
        limit: evaluate only the first ``limit`` items of the split (the report is marked partial).
        batch_size: overrides the scorer's batch size. progress: progress bar (default: when stderr is a tty).
        force: start an existing run folder over when its configuration differs.
        retry_failed: score again the items whose earlier result was a failure.
        n_boot, seed: bootstrap resamples and seed for the 95 % intervals.
        plot: write ``scatter.png`` (needs matplotlib, extra ``eval``).
        engine: a name in :data:`ENGINES`. engine_options: keyword options of that engine (e.g. ``ray``:
            ``{"address": "auto", "actors": 8}``).
        allow_overlap: evaluate even when the scorer's reference data holds images of the selection (a scorer
            with reference data, e.g. IQARAG's bank, exposes ``check_overlap(paths) -> int``; by default a
            non-zero overlap is refused because the references' scores would leak into the evaluation).
        dataset_resize: apply the resize the dataset's paper evaluates with (its record's ``eval_resize``, e.g.
            SPAQ's shorter side 512) by setting the scorer's ``input_resize`` option, unless that option is
            already set; recorded in the run config (``dataset.resize``). False: images as published.
        verbose: print status lines (resuming, retrying) to stderr.

    Raises:
        ConfigError, DataError, UnknownNameError: bad arguments, label files, missing images, or a run folder
        holding a different configuration.
    """
    if isinstance(scorer, str):
        scorer = make_scorer(scorer, **(method_options or {}))
    elif method_options:
        raise ConfigError("method_options only apply when scorer is a method name")
    run_engine = get_engine(engine)
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")

    if isinstance(dataset, Dataset):
        # used as loaded (files were checked by the loader, if asked); a missing file fails as its own item
        ds = dataset.select(split) if split is not None else dataset
    else:
        ds = load_dataset(
            name=dataset,
            root=root,
            labels=labels,
            split=split,
            image_column=image_column,
            score_column=score_column,
            ref_column=ref_column,
            lower_better=lower_better,
            score_range=score_range,
            check_files=True,
            skip_missing=skip_missing,
        )
    n_split = len(ds)
    sel = ds.head(int(limit)) if limit is not None else ds
    if len(sel) == 0:
        raise DataError(f"the selection of {ds.name} ({ds.split}) is empty")

    check_overlap = getattr(scorer, "check_overlap", None)
    overlap: dict[str, Any] = {}
    if callable(check_overlap):
        n_overlap = int(check_overlap(sel.paths()))
        overlap = {"n": n_overlap, "of": len(sel), "allowed": bool(allow_overlap)}
        if n_overlap and not allow_overlap:
            raise ConfigError(
                f"{n_overlap} of the {len(sel)} image(s) to evaluate are also in the method's reference data "
                "(e.g. the IQARAG bank): their own scores would leak into the evaluation. "
                f"{getattr(scorer, 'overlap_hint', 'Build the bank from another split')}, or pass --allow-overlap "
                "(allow_overlap=True) to evaluate anyway"
            )
        _say(verbose, f"{n_overlap} of the {len(sel)} image(s) are also in the method's reference data"
             + (" (--allow-overlap)" if n_overlap else ""))

    resize = _dataset_resize(scorer, ds, dataset_resize)
    if resize["source"] == "dataset protocol":
        _say(verbose, f"{ds.name}: inputs resized as its evaluation protocol does ({resize['input_resize']}); "
             "--no-dataset-resize to score them as published")
    desc = scorer.describe()
    versions = package_versions()
    config = RunConfig(
        method=str(desc.get("method")),
        model=desc.get("model"),
        options=dict(desc.get("config") or {}),
        dataset={**ds.summary(), "resize": resize},
        limit=int(limit) if limit is not None else None,
        engine=engine,
        n_boot=int(n_boot),
        seed=int(seed),
        versions=versions,
        created=_now(),
        preset=desc.get("preset"),
    )
    method_hib = bool(getattr(scorer, "higher_is_better", True))

    if out is None:
        records: dict[str, dict[str, Any]] = {}

        def collect(results: list[ScoreResult]) -> None:
            for r in results:
                records[r.image] = r.to_dict()

        run_engine(scorer, sel.paths(), collect, batch_size=batch_size, progress=progress, **(engine_options or {}))
        report, pred, mos, _fit = build_report(
            sel, records, method=config.method, model=config.model, method_higher_is_better=method_hib,
            preset=config.preset, n_boot=n_boot, seed=seed, limit=config.limit, n_split=n_split, versions=versions,
        )
        return dataclasses.replace(report, overlap=overlap) if overlap else report

    rundir = Path(out)
    rundir.mkdir(parents=True, exist_ok=True)
    with _run_lock(rundir):
        _prepare_rundir(rundir, config, force, verbose)
        store = PredictionStore(rundir / PREDICTIONS_FILE)
        records = store.load()
        if retry_failed:
            failed = {k for k, r in records.items() if r.get("error") is not None or r.get("score") is None}
            if failed:
                store.rewrite_without(failed)
                records = {k: r for k, r in records.items() if k not in failed}
                _say(verbose, f"retrying {len(failed)} failed item(s)")
        wanted = sel.paths()
        pending = [p for p in wanted if p not in records]
        if records:
            done = len(wanted) - len(pending)
            _say(verbose, f"resuming {rundir}: {done} of {len(wanted)} item(s) already scored")

        def append(results: list[ScoreResult]) -> None:
            fresh = [r for r in results if r.image not in records]
            store.append(fresh)
            for r in fresh:
                records[r.image] = r.to_dict()

        if pending:
            run_engine(scorer, pending, append, batch_size=batch_size, progress=progress, **(engine_options or {}))
        report, pred, mos, fit = build_report(
            sel, records, method=config.method, model=config.model, method_higher_is_better=method_hib,
            preset=config.preset, n_boot=n_boot, seed=seed, limit=config.limit, n_split=n_split, run_dir=str(rundir),
            versions=versions,
        )
        if overlap:
            report = dataclasses.replace(report, overlap=overlap)
        try:
            write_report_files(rundir, report, pred, mos, fit, plot=plot)
        except LmmiqaError as err:  # e.g. matplotlib missing: the numbers are still written
            log.warning("could not draw %s: %s", SCATTER_PNG, err)
            write_report_files(rundir, report, pred, mos, fit, plot=False)
    return report
