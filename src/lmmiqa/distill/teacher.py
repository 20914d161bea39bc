"""LEAF teacher pass (METHODS §3.1): point-wise and pair-wise judgments of unlabeled images, with reliabilities.

Any scorer can teach: the MLLM methods (``q-align``, ``standard-guided``, …; the LEAF paper uses an MLLM zero-shot)
and classical tools registered as methods (``niqe``, ``brisque``, …), or a plugin's ``package.module:Class``.

**Points.** Every image is scored once. The score is oriented so that higher is better: a lower-is-better
teacher (NIQE, BRISQUE) is negated and the cache says so (``negated`` in ``teacher.json`` and on every row).
Where the teacher returns a level distribution it is kept, and the point's reliability is
``1 − H(p)/log K`` (or ``max p``, see :func:`lmmiqa.distill.judgments.point_reliability`); otherwise 1.

**Pairs.** ``pairs`` pairs are drawn by :func:`lmmiqa.distill.judgments.sample_pairs` (informative rank
neighbours plus random pairs, random A/B order) and judged

* ``prompt`` mode (MLLM teachers, the default for them): the two-image comparison prompt of
  :mod:`lmmiqa.prompts` (``LEAF_PAIR_*``), asked in both orders; each order gives P(A better than B) from the
  closed-set softmax over the answers " A"/" B" (``backend.level_logprobs``); the pair's probability is their
  mean and its reliability their agreement;
* ``derived`` mode (every other teacher, the default for them): Thurstone case V (or Bradley–Terry) from the
  point scores, ``Φ((s_A − s_B)/(√2·σ))`` with σ the std of the teacher's scores; reliability 1.

**Cache** (the ``--out`` folder): ``teacher.json`` (the teacher's identity and settings, counts, statistics),
``points.jsonl`` and ``pairs.jsonl`` (one row per judgment, appended and flushed per batch). Running again
resumes: images and pairs already judged are skipped; a different teacher or different settings are refused
(use another folder or ``restart=True``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmmiqa.config import config_to_dict
from lmmiqa.distill.judgments import (
    DERIVED_PAIR_MODELS,
    POINT_RELIABILITIES,
    combine_orders,
    derived_pair_probability,
    point_reliability,
    sample_pairs,
)
from lmmiqa.errors import ConfigError, DataError, LmmiqaError, UnsupportedError
from lmmiqa.jsonl import JsonlAppender, read_jsonl, write_json
from lmmiqa.types import json_safe

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TEACHER_FILE = "teacher.json"
POINTS_FILE = "points.jsonl"
PAIRS_FILE = "pairs.jsonl"
PAIR_MODES = ("auto", "prompt", "derived")
#: pairs per image when ``pairs`` is not given
DEFAULT_PAIRS_PER_IMAGE = 4
#: teacher options that do not change judgments (a cache may be resumed with other values)
RUNTIME_OPTIONS = frozenset({"device", "batch_size", "decode_workers", "workers", "max_batch", "max_batch_tokens", "max_image_pixels", "max_bytes"})


@dataclass
class TeacherConfig:
    """Options of the teacher pass.

    Attributes:
        method: the teacher: a registered method name (``q-align``, ``niqe``, …) or ``package.module:Class``.
        options: the teacher's own options (``model``, ``backend``, ``device``, ``dtype``, …).
        pairs: how many pairs to judge in total (``None``: 4 per image; 0: points only).
        pair_mode: ``auto`` (``prompt`` for MLLM teachers, ``derived`` otherwise), ``prompt`` or ``derived``.
        close_fraction: share of informative (close-score) pairs among the sampled pairs.
        close_window: rank distance within which two images count as a close pair.
        derived_model: ``thurstone`` or ``bradley-terry`` for derived pairs.
        point_reliability: ``entropy`` (1 − normalized entropy) or ``maxprob``.
        batch_size: images per teacher batch (pairs: comparison prompts per batch / 2).
        seed: seed of the pair sampling.
        progress: progress bars on stderr (default: when stderr is a terminal).
        preset: the preset these options were built over (:func:`teacher_config`; recorded in ``teacher.json``),
            or None.
    """

    method: str = "q-align"
    options: dict[str, Any] = field(default_factory=dict)
    pairs: int | None = None
    pair_mode: str = "auto"
    close_fraction: float = 0.5
    close_window: int = 8
    derived_model: str = "thurstone"
    point_reliability: str = "entropy"
    batch_size: int = 8
    seed: int = 0
    progress: bool | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method.strip():
            raise ConfigError("the teacher method must be a registered method name or 'package.module:Class'")
        if self.pairs is not None and int(self.pairs) < 0:
            raise ConfigError(f"pairs must be >= 0, got {self.pairs}")
        if self.pair_mode not in PAIR_MODES:
            raise ConfigError(f"unknown pair mode {self.pair_mode!r}; known: {', '.join(PAIR_MODES)}")
        if not 0.0 <= float(self.close_fraction) <= 1.0:
            raise ConfigError(f"close_fraction must be in [0, 1], got {self.close_fraction}")
        if int(self.close_window) < 1:
            raise ConfigError(f"close_window must be >= 1, got {self.close_window}")
        if self.derived_model not in DERIVED_PAIR_MODELS:
            raise ConfigError(f"unknown derived pair model {self.derived_model!r}; known: {', '.join(DERIVED_PAIR_MODELS)}")
        if self.point_reliability not in POINT_RELIABILITIES:
            raise ConfigError(
                f"unknown point reliability {self.point_reliability!r}; known: {', '.join(POINT_RELIABILITIES)}"
            )
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.options = dict(self.options)


def teacher_config(preset: str | None = None, *, teacher_options: dict[str, Any] | None = None,
                   **fields_: Any) -> TeacherConfig:
    """A :class:`TeacherConfig` from keyword options over the values of ``preset`` (``"paper"``: the LEAF paper's
    teacher, :data:`lmmiqa.distill.presets.TEACH_PAPER`); explicit options (not None) win.

    Args:
        preset: a preset of ``lmmiqa distill teach``, or None.
        teacher_options: the teacher method's own options (``model``, ``backend``, ``device``, ...).
        **fields_: :class:`TeacherConfig` fields. A preset value that is not a field (``model``) goes into the
            teacher's options — unless ``method`` names another teacher than the preset's: the preset's teacher
            options belong to its own teacher and are then left out.
    """
    import dataclasses

    from lmmiqa.config import build_config
    from lmmiqa.distill.presets import STAGE_PRESETS, TEACH
    from lmmiqa.presets import get_preset

    given = {k: v for k, v in fields_.items() if v is not None}
    options = {k: v for k, v in (teacher_options or {}).items() if v is not None}
    if preset is not None:
        chosen = get_preset(STAGE_PRESETS[TEACH], preset, f"`lmmiqa {TEACH}`")
        names = {f.name for f in dataclasses.fields(TeacherConfig)}
        own_teacher = given.get("method", chosen.options().get("method")) == chosen.options().get("method")
        for key, value in chosen.options().items():
            if key in names:
                given.setdefault(key, value)
            elif own_teacher:
                options.setdefault(key, value)
        given["preset"] = chosen.name
    return build_config(TeacherConfig, {**given, "options": options}, what=f"`lmmiqa {TEACH}`")


# --------------------------------------------------------------------------- JSONL helpers


# --------------------------------------------------------------------------- the teacher


def make_teacher(config: TeacherConfig) -> Any:
    """The teacher scorer named by ``config`` (registered method or ``package.module:Class``)."""
    from lmmiqa import registry

    return registry.resolve_method(config.method).from_options(**config.options)


def _is_mllm(scorer: Any) -> bool:
    from lmmiqa.methods.mllm import LevelScorer

    return isinstance(scorer, LevelScorer)


def resolve_pair_mode(config: TeacherConfig, scorer: Any) -> str:
    """``prompt`` or ``derived`` for this teacher; ``prompt`` for a non-MLLM teacher is a ConfigError."""
    mllm = _is_mllm(scorer)
    mode = config.pair_mode
    if mode == "auto":
        mode = "prompt" if mllm else "derived"
    if mode == "prompt" and not mllm:
        raise ConfigError(
            f"pair mode 'prompt' needs an MLLM teacher (q-align, standard-guided, ...); {config.method!r} has no "
            "comparison prompt: use pair mode 'derived'"
        )
    return mode


def _identity(config: TeacherConfig, scorer: Any, pair_mode: str) -> dict[str, Any]:
    """What must match for a cache to be resumed (the teacher, its judgment-relevant options, the pair settings)."""
    return json_safe(
        {
            "method": config.method,
            "name": getattr(scorer, "name", config.method),
            "model": getattr(scorer, "model_name", None),
            "options": {k: v for k, v in config.options.items() if k not in RUNTIME_OPTIONS},
            "pair_mode": pair_mode,
            "derived_model": config.derived_model if pair_mode == "derived" else None,
            "point_reliability": config.point_reliability,
            "close_fraction": float(config.close_fraction),
            "close_window": int(config.close_window),
            "seed": int(config.seed),
        }
    )


def _pair_prompt(image_first: Any, image_second: Any) -> Any:
    from lmmiqa import prompts
    from lmmiqa.types import Prompt

    return Prompt.simple(
        [prompts.LEAF_PAIR_LABEL_A, image_first, prompts.LEAF_PAIR_LABEL_B, image_second, prompts.LEAF_PAIR_QUESTION],
        answer_prefix=prompts.LEAF_PAIR_ANSWER_PREFIX,
    )


def pair_candidates() -> list[str]:
    """The answer candidates of the comparison prompt as produced after its answer prefix (" A", " B")."""
    from lmmiqa import prompts

    prefix = prompts.LEAF_PAIR_ANSWER_PREFIX
    lead = " " if prefix and not prefix[-1].isspace() else ""
    return [lead + prompts.LEAF_PAIR_ANSWER_A, lead + prompts.LEAF_PAIR_ANSWER_B]


def judge_pairs_prompt(backend: Any, images_a: Sequence[Any], images_b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Ask the comparison prompt in both orders; return ``(p_ab, p_ba)``, both estimates of P(A better than B).

    ``p_ab`` is P(" A") with A shown first; ``p_ba`` is P(" B") with B shown first (A is then the second image).
    Rows where the backend saw neither candidate are NaN.
    """
    from lmmiqa.levels import closed_set_probs
    from lmmiqa.methods.coverage import check_levels

    n = len(images_a)
    prompts = [_pair_prompt(a, b) for a, b in zip(images_a, images_b)]
    prompts += [_pair_prompt(b, a) for a, b in zip(images_a, images_b)]
    cands = pair_candidates()
    lp = backend.level_logprobs(prompts, cands)
    # as for every level read-out: warn once per run when " A"/" B" hold little of the answer, or a server's
    # top-k left one out
    check_levels(lp, backend=backend, prompts=prompts, candidates=cands, what="leaf teacher pair prompt",
                 keys=["A", "B"])
    probs = closed_set_probs(lp)
    return probs[:n, 0], probs[n:, 1]


@dataclass(frozen=True)
class TeachSummary:
    """Outcome of :func:`teach`: the cache folder and what it holds."""

    out: str
    n_images: int
    n_points: int
    n_point_failures: int
    n_pairs: int
    n_pair_failures: int
    pair_mode: str
    negated: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return json_safe(self.__dict__)


def _point_rows(results: Sequence[Any], reliability_kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in results:
        if not r.ok:
            rows.append({"image": r.image, "score": None, "error": r.error or "no score"})
            continue
        raw = float(r.score)
        negated = not r.higher_is_better
        probs = list(r.probabilities.values()) if r.probabilities else None
        rel = float(point_reliability(np.asarray([probs]), reliability_kind)[0]) if probs else 1.0
        rows.append(
            {
                "image": r.image,
                "score": -raw if negated else raw,
                "raw_score": raw,
                "negated": negated,
                "probabilities": probs,
                "reliability": rel,
                "error": None,
            }
        )
    return rows


def _levels_from(results: Sequence[Any]) -> dict[str, Any] | None:
    for r in results:
        if r.ok and r.probabilities:
            keys = list(r.probabilities)
            words = (r.details or {}).get("level_words") or {}
            return {"keys": keys, "values": [float(k) for k in keys], "words": [str(words.get(k, k)) for k in keys]}
    return None


def teach(
    images: Any,
    out: str | os.PathLike[str],
    config: TeacherConfig | None = None,
    *,
    restart: bool = False,
    scorer: Any | None = None,
) -> TeachSummary:
    """Run (or resume) the teacher pass over ``images`` and cache the judgments in ``out``.

    Args:
        images: image paths, folders (recursive) or ``@list`` files (paths only: the cache refers to files).
        out: the cache folder (created).
        config: teacher options.
        restart: delete an existing cache in ``out`` first.
        scorer: an already built teacher scorer (overrides ``config.method``/``options`` for construction, e.g. a
            scorer sharing a loaded backend); ``config.method`` is still recorded.

    Returns:
        A :class:`TeachSummary`.

    Raises:
        ConfigError: bad options, or a non-path input. DataError: the cache in ``out`` was made by a different
        teacher/settings, or no image could be scored.
    """
    config = config or TeacherConfig()
    t_start = time.perf_counter()
    root = Path(out)
    paths = _image_paths(images)  # before anything is written: a wrong --images leaves no cache folder behind
    if restart:
        for name in (TEACHER_FILE, POINTS_FILE, PAIRS_FILE):
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    teacher = scorer if scorer is not None else make_teacher(config)
    pair_mode = resolve_pair_mode(config, teacher)
    meta = _open_meta(root, config, teacher, pair_mode)

    levels = _judge_points(teacher, paths, root, config)
    points = _read_points(root, restrict=set(paths))
    if not points:
        raise DataError(f"the teacher could not score any of the {len(paths)} image(s); see {root / POINTS_FILE}")
    negs = {bool(r.get("negated", False)) for r in points.values()}
    if len(negs) > 1:
        raise DataError(f"{root / POINTS_FILE}: the teacher reported both score directions; cannot orient scores")
    negated = negs.pop()
    meta["orientation"] = {
        "higher_is_better": True,
        "negated": negated,
        "note": "scores are oriented so that higher is better"
        + ("; the teacher's raw scores were negated" if negated else ""),
    }
    if levels is not None:
        meta["levels"] = levels

    n_pairs = DEFAULT_PAIRS_PER_IMAGE * len(points) if config.pairs is None else int(config.pairs)
    _judge_pairs(teacher, points, n_pairs, pair_mode, root, config)
    counts = _finish_meta(meta, root, n_pairs, pair_mode)
    return TeachSummary(
        out=str(root),
        n_images=len(paths),
        n_points=counts["points"],
        n_point_failures=counts["point_failures"],
        n_pairs=counts["pairs"],
        n_pair_failures=counts["pair_failures"],
        pair_mode=pair_mode,
        negated=negated,
        seconds=time.perf_counter() - t_start,
    )


def _image_paths(images: Any) -> list[str]:
    """Absolute, sorted, unique image paths of the inputs (in-memory images are refused)."""
    from lmmiqa.errors import InputNotFoundError
    from lmmiqa.images import IMAGE_EXTENSIONS, expand_inputs

    given = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    missing = [str(x) for x in given if isinstance(x, (str, os.PathLike)) and not str(x).startswith("@")
               and not os.path.exists(x)]
    if missing:
        raise InputNotFoundError(f"no such file or folder: {', '.join(missing)}")
    inputs = expand_inputs(images)
    if any(not isinstance(x, str) for x in inputs):
        raise ConfigError("the teacher pass needs image files (paths, folders, @lists), not in-memory images")
    paths = sorted({os.path.abspath(p) for p in inputs})
    if not paths:
        raise InputNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in "
                                 f"{', '.join(str(x) for x in given)}")
    return paths


def _open_meta(root: Path, config: TeacherConfig, teacher: Any, pair_mode: str) -> dict[str, Any]:
    """Load (checking the teacher's identity) or start ``teacher.json``, and write it back."""
    identity = _identity(config, teacher, pair_mode)
    meta_path = root / TEACHER_FILE
    meta: dict[str, Any] = {}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("identity") != identity:
            raise DataError(
                f"{root} holds judgments of another teacher or other settings ({meta.get('identity')}); "
                "use another --out folder, or --restart to discard them"
            )
    meta.update(
        {
            "kind": "lmmiqa-leaf-teacher",
            "schema_version": SCHEMA_VERSION,
            "identity": identity,
            "describe": json_safe(teacher.describe()),
            "config": config_to_dict(config),
        }
    )
    write_json(meta_path, meta)
    return meta


def _judge_points(teacher: Any, paths: list[str], root: Path, config: TeacherConfig) -> dict[str, Any] | None:
    """Score the images not judged yet, appending rows per batch; return the level table seen (or None)."""
    done = {r["image"] for r in read_jsonl(root / POINTS_FILE) if r.get("error") is None and r.get("score") is not None}
    todo = [p for p in paths if p not in done]
    if done and todo:
        log.info("teacher: %d image(s) already judged; %d to go", len(paths) - len(todo), len(todo))
    appender = JsonlAppender(root / POINTS_FILE)
    levels = None
    try:
        for batch in teacher.iter_score(todo, batch_size=config.batch_size, progress=config.progress):
            appender.write(_point_rows(batch, config.point_reliability))
            if levels is None:
                levels = _levels_from(batch)
    finally:
        appender.close()
    return levels


def _judge_pairs(
    teacher: Any, points: dict[str, dict[str, Any]], n_pairs: int, pair_mode: str, root: Path, config: TeacherConfig
) -> None:
    """Sample the pair plan and judge the pairs not judged yet (up to ``n_pairs`` in the cache), per batch."""
    paths = sorted(points)
    scores = np.array([points[p]["score"] for p in paths], dtype=np.float64)
    sigma = float(np.std(scores))
    plan, close = sample_pairs(scores, n_pairs, close_fraction=config.close_fraction, window=config.close_window,
                               seed=config.seed)
    done = {_pair_key(r["a"], r["b"]) for r in read_jsonl(root / PAIRS_FILE)
            if r.get("error") is None and r.get("p") is not None}
    known = set(paths)
    n_done = sum(1 for a, b in done if a in known and b in known)
    todo = [(int(i), int(j), bool(c)) for (i, j), c in zip(plan, close)
            if _pair_key(paths[i], paths[j]) not in done][: max(0, n_pairs - n_done)]
    if pair_mode == "derived" and todo and not sigma > 0:
        raise DataError("the teacher gave every image the same score; there is nothing to rank or distill")
    limits = _limits(teacher)
    appender = JsonlAppender(root / PAIRS_FILE)
    bar = _bar(len(todo), config, "teacher pairs")
    try:
        bs = max(1, int(config.batch_size) // 2) if pair_mode == "prompt" else 4096
        for start in range(0, len(todo), bs):
            chunk = todo[start : start + bs]
            if pair_mode == "derived":
                rows = _derived_rows(chunk, paths, scores, sigma, config.derived_model)
            else:
                rows = _prompt_rows(teacher, chunk, paths, limits)
            appender.write(rows)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        appender.close()
        if bar is not None:
            bar.close()


def _finish_meta(meta: dict[str, Any], root: Path, n_pairs: int, pair_mode: str) -> dict[str, int]:
    """Counts and statistics of the whole cache into ``teacher.json``; return the counts."""
    points_all = read_jsonl(root / POINTS_FILE)
    pairs_all = read_jsonl(root / PAIRS_FILE)
    ok_points = _read_points(root)
    ok_pairs = {_pair_key(r["a"], r["b"]) for r in pairs_all if r.get("error") is None and r.get("p") is not None}
    failed_points = {r["image"] for r in points_all if r.get("error") is not None} - set(ok_points)
    rel = np.array([r.get("reliability", 1.0) for r in ok_points.values()], dtype=np.float64)
    prel = np.array([r.get("reliability", 1.0) for r in pairs_all if r.get("error") is None], dtype=np.float64)
    scores = np.array([r["score"] for r in ok_points.values()], dtype=np.float64)
    counts = {
        "images": len(ok_points) + len(failed_points),
        "points": len(ok_points),
        "point_failures": len(failed_points),
        "pairs": len(ok_pairs),
        "pair_failures": sum(1 for r in pairs_all if r.get("error") is not None),
    }
    meta["counts"] = counts
    meta["statistics"] = {
        "score_mean": float(np.mean(scores)),
        "score_std": float(np.std(scores)),
        "point_reliability_mean": float(np.mean(rel)) if rel.size else None,
        "pair_reliability_mean": float(np.mean(prel)) if prel.size else None,
    }
    meta["sampling"] = {
        "scheme": "rank neighbours within close_window with different scores (close_fraction of the pairs) + "
        "uniform random pairs; random A/B order",
        "requested_pairs": n_pairs,
    }
    if pair_mode == "prompt":
        from lmmiqa import prompts

        meta["pair_prompt"] = {
            "label_a": prompts.LEAF_PAIR_LABEL_A,
            "label_b": prompts.LEAF_PAIR_LABEL_B,
            "question": prompts.LEAF_PAIR_QUESTION,
            "answer_prefix": prompts.LEAF_PAIR_ANSWER_PREFIX,
            "candidates": pair_candidates(),
            "both_orders": True,
        }
    write_json(root / TEACHER_FILE, meta)
    return counts


def _limits(teacher: Any) -> Any:
    from lmmiqa.images import ImageLimits

    cfg = getattr(teacher, "config", None)
    return ImageLimits(
        max_pixels=int(getattr(cfg, "max_image_pixels", ImageLimits.max_pixels)),
        max_bytes=int(getattr(cfg, "max_bytes", ImageLimits.max_bytes)),
    )


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _derived_rows(
    chunk: Sequence[tuple[int, int, bool]], paths: Sequence[str], scores: np.ndarray, sigma: float, model: str
) -> list[dict[str, Any]]:
    ia = np.array([c[0] for c in chunk], dtype=np.int64)
    ib = np.array([c[1] for c in chunk], dtype=np.int64)
    p = derived_pair_probability(scores[ia], scores[ib], sigma, model)
    return [
        {"a": paths[i], "b": paths[j], "p": float(pp), "p_ab": None, "p_ba": None, "reliability": 1.0,
         "source": f"derived:{model}", "close": close, "error": None}
        for (i, j, close), pp in zip(chunk, p)
    ]


def _prompt_rows(teacher: Any, chunk: Sequence[tuple[int, int, bool]], paths: Sequence[str], limits: Any) -> list[dict[str, Any]]:
    from lmmiqa.images import load_item

    backend = teacher.backend
    if not getattr(backend, "supports_multi_image", True):
        raise UnsupportedError(
            f"the {backend.name} backend of this teacher cannot take two images in one prompt; use pair mode 'derived'"
        )
    need = sorted({paths[i] for i, _, _ in chunk} | {paths[j] for _, j, _ in chunk})
    loaded = {p: load_item(p, 0, limits) for p in need}

    def one_batch(items: Sequence[tuple[int, int, bool]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        good = []
        for i, j, close in items:
            a, b = loaded[paths[i]], loaded[paths[j]]
            if not (a.ok and b.ok):
                rows.append({"a": paths[i], "b": paths[j], "p": None, "close": close, "error": a.error or b.error})
            else:
                good.append((i, j, close))
        if good:
            p_ab, p_ba = judge_pairs_prompt(
                backend, [loaded[paths[i]].image for i, _, _ in good], [loaded[paths[j]].image for _, j, _ in good]
            )
            p, rel = combine_orders(p_ab, p_ba)
            for (i, j, close), x, y, pp, rr in zip(good, p_ab, p_ba, p, rel):
                if not (math.isfinite(x) and math.isfinite(y)):
                    rows.append({"a": paths[i], "b": paths[j], "p": None, "close": close,
                                 "error": "neither answer candidate was visible in the teacher's distribution"})
                    continue
                rows.append({"a": paths[i], "b": paths[j], "p": float(pp), "p_ab": float(x), "p_ba": float(y),
                             "reliability": float(rr), "source": "prompt", "close": close, "error": None})
        return rows

    try:
        return one_batch(chunk)
    except LmmiqaError as err:
        if len(chunk) == 1:
            i, j, close = chunk[0]
            return [{"a": paths[i], "b": paths[j], "p": None, "close": close, "error": str(err)}]
        log.warning("teacher: a pair batch failed (%s); retrying pairs one by one", err)
        out: list[dict[str, Any]] = []
        for c in chunk:
            out.extend(_prompt_rows(teacher, [c], paths, limits))
        return out


def _read_points(root: Path, restrict: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """The last successful point row per image (optionally only for ``restrict``)."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(root / POINTS_FILE):
        if r.get("error") is None and r.get("score") is not None and (restrict is None or r["image"] in restrict):
            out[r["image"]] = r
    return out


def _bar(total: int, config: TeacherConfig, desc: str) -> Any:
    enabled = config.progress
    if enabled is None:
        enabled = total > 8 and sys.stderr.isatty()
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------- reading a cache


@dataclass(frozen=True)
class TeacherLabels:
    """A teacher cache loaded for training.

    Attributes:
        folder: the cache folder.
        teacher: the content of ``teacher.json``.
        images: image paths (sorted); indices below refer to this order.
        scores: oriented (higher is better) teacher scores, float64 [N].
        probs: level distributions [N, K], or ``None`` when the teacher has none.
        level_values: the value of each level (K), or ``None``.
        point_reliability: float64 [N] in [0, 1].
        pairs: int64 [M, 2] image indices (A, B).
        pair_prob: P(A better than B), float64 [M].
        pair_reliability: float64 [M] in [0, 1].
    """

    folder: str
    teacher: dict[str, Any]
    images: tuple[str, ...]
    scores: np.ndarray
    probs: np.ndarray | None
    level_values: tuple[float, ...] | None
    point_reliability: np.ndarray
    pairs: np.ndarray
    pair_prob: np.ndarray
    pair_reliability: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (stored in the student artifact)."""
        return json_safe(
            {
                "folder": os.path.abspath(self.folder),
                "identity": self.teacher.get("identity"),
                "describe": self.teacher.get("describe"),
                "orientation": self.teacher.get("orientation"),
                "levels": self.teacher.get("levels"),
                "n_points": len(self.images),
                "n_pairs": len(self.pairs),
                "score_mean": float(np.mean(self.scores)),
                "score_std": float(np.std(self.scores)),
                "point_reliability_mean": float(np.mean(self.point_reliability)),
                "pair_reliability_mean": float(np.mean(self.pair_reliability)) if len(self.pairs) else None,
                "has_distributions": self.probs is not None,
                "preset": (self.teacher.get("config") or {}).get("preset"),
            }
        )


def load_teacher_labels(folder: str | os.PathLike[str]) -> TeacherLabels:
    """Load a teacher cache written by :func:`teach`.

    The last successful row per image (and per unordered pair) wins; failed rows are ignored; pairs that refer
    to images without a point judgment are dropped.

    Raises:
        DataError: the folder is not a teacher cache, or holds no successful point judgment.
    """
    root = Path(folder)
    meta_path = root / TEACHER_FILE
    if not meta_path.is_file():
        raise DataError(f"{root} is not a teacher cache (no {TEACHER_FILE}); create one with `lmmiqa distill teach`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != "lmmiqa-leaf-teacher":
        raise DataError(f"{meta_path} is not a LEAF teacher file (kind {meta.get('kind')!r})")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise DataError(
            f"{meta_path} has schema version {meta.get('schema_version')}; this lmmiqa reads up to {SCHEMA_VERSION}"
        )
    points = _read_points(root)
    if not points:
        raise DataError(f"{root} holds no successful point judgment")
    images = tuple(sorted(points))
    index = {p: i for i, p in enumerate(images)}
    scores = np.array([points[p]["score"] for p in images], dtype=np.float64)
    rel = np.array([points[p].get("reliability", 1.0) for p in images], dtype=np.float64)
    rel = np.where(np.isfinite(rel), rel, 0.0)
    dists = [points[p].get("probabilities") for p in images]
    probs: np.ndarray | None = None
    level_values: tuple[float, ...] | None = None
    if all(d is not None for d in dists):
        ks = {len(d) for d in dists}  # type: ignore[arg-type]
        if len(ks) != 1:
            raise DataError(f"{root / POINTS_FILE}: level distributions of different lengths {sorted(ks)}")
        probs = np.asarray(dists, dtype=np.float64)
        levels = meta.get("levels") or {}
        values = levels.get("values") or list(range(1, probs.shape[1] + 1))
        level_values = tuple(float(v) for v in values)
    elif any(d is not None for d in dists):
        log.warning("%s: only some points carry a level distribution; the KL term is disabled", root)

    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_jsonl(root / PAIRS_FILE):
        if r.get("error") is not None or r.get("p") is None:
            continue
        if r["a"] in index and r["b"] in index and r["a"] != r["b"]:
            pairs[_pair_key(r["a"], r["b"])] = r
    rows = list(pairs.values())
    pair_idx = np.array([[index[r["a"]], index[r["b"]]] for r in rows], dtype=np.int64).reshape(-1, 2)
    pair_p = np.array([r["p"] for r in rows], dtype=np.float64)
    pair_rel = np.array([r.get("reliability", 1.0) for r in rows], dtype=np.float64)
    pair_rel = np.where(np.isfinite(pair_rel), pair_rel, 0.0)
    return TeacherLabels(
        folder=str(root),
        teacher=meta,
        images=images,
        scores=scores,
        probs=probs,
        level_values=level_values,
        point_reliability=rel,
        pairs=pair_idx,
        pair_prob=pair_p,
        pair_reliability=pair_rel,
    )

