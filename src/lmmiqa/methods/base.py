"""The scorer contract shared by every method.

``scorer.score(images) -> list[ScoreResult]``: inputs are expanded (folders, ``@lists``), loaded in batches,
scored in batches by the method's :meth:`Scorer.score_items`, and returned in input order. A bad image, or an
exception while scoring one item, becomes a result with ``error`` set; the rest of the batch is unaffected.
Run-level errors (:func:`lmmiqa.errors.is_run_level`: a model, processor, segmenter or encoder that cannot be
loaded, a missing dependency, an unavailable device) are raised instead: no other item could succeed.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lmmiqa.config import build_config, config_to_dict
from lmmiqa.errors import ConfigError, LmmiqaError, is_run_level
from lmmiqa.images import PIXEL_LIMIT_OPTION, ImageItem, ImageLimits, expand_inputs, iter_batches, load_many
from lmmiqa.presets import Preset, apply_preset, get_preset
from lmmiqa.types import ScoreResult

log = logging.getLogger(__name__)


@dataclass
class ScorerConfig:
    """Options every scorer accepts.

    Attributes:
        batch_size: images per backend batch.
        max_image_pixels: decompression-bomb guard for inputs (largest width×height opened). MLLM methods'
            ``max_pixels`` is something else: the pixel budget given to the model's processor.
        max_bytes: largest input file accepted.
        decode_workers: threads used to decode images of a batch (0 = in the calling thread).
        input_resize: resize every input after decoding, ``"shorter:N"``, ``"longer:N"`` or ``"pixels:N"``
            (see :func:`lmmiqa.backends.pixels.apply_resize`); ``lmmiqa eval`` sets it from the dataset's
            evaluation protocol (SPAQ: ``shorter:512``) unless ``--no-dataset-resize``. None: as decoded.
        prefetch: decode the next batch in a background thread while the current one is scored (one batch
            ahead; same results, same order).
        preset: the preset whose values this config was built over (:mod:`lmmiqa.presets`; set by
            :meth:`Scorer.from_options`, recorded in every result's ``details.preset``); None: lmmiqa's defaults.
    """

    batch_size: int = 8
    max_image_pixels: int = 64_000_000
    max_bytes: int = 100 * 1024 * 1024
    decode_workers: int = 0
    prefetch: bool = True
    input_resize: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        self.batch_size = int(self.batch_size)
        from lmmiqa.backends.pixels import parse_resize

        parse_resize(self.input_resize)


class Scorer(ABC):
    """Base class of all methods.

    Subclasses set ``name``, ``config_cls`` and implement :meth:`score_items`; they may list named option sets in
    ``presets`` (:mod:`lmmiqa.presets`; ``paper`` reproduces the method's paper), and the presets of the commands
    that make their artifact in ``stage_presets``.

    The preset a scorer was built with is ``config.preset`` (:attr:`preset`).
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type] = ScorerConfig
    higher_is_better: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    presets: ClassVar[dict[str, Preset]] = {}
    #: presets of the commands that make this method's artifact, by command (LEAF: ``distill teach``, ``distill
    #: train``, ``distill calibrate``); listed beside :attr:`presets` by ``lmmiqa methods --presets``
    stage_presets: ClassVar[dict[str, dict[str, Preset]]] = {}

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_options(cls, preset: str | None = None, **options: Any) -> Scorer:
        """Build the scorer from keyword options (names of ``config_cls`` fields), over the values of ``preset``
        when one is named (explicit options win)."""
        return cls(build_config(cls.config_cls, cls.preset_options(preset, options), what=f"method {cls.name!r}"))

    @classmethod
    def preset_options(cls, preset: str | None, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` (without None values) over preset ``preset``'s values, with ``preset`` set to the preset's
        name; UnknownNameError for a preset the method does not have, listing those it has."""
        out = apply_preset(cls.presets, preset, options, f"method {cls.name!r}")
        if preset is not None:
            out["preset"] = get_preset(cls.presets, preset, f"method {cls.name!r}").name
        return out

    @property
    def preset(self) -> str | None:
        """The name of the preset this scorer was built with (None: lmmiqa's defaults)."""
        return getattr(self.config, "preset", None)

    # -- what subclasses provide ------------------------------------------------------------------------
    @property
    def scale(self) -> tuple[float, float] | None:
        """(low, high) of the score, or None when unbounded."""
        return None

    @property
    def model_name(self) -> str | list[str] | None:
        """The model id(s) reported in results."""
        return None

    @abstractmethod
    def score_items(self, items: list[ImageItem]) -> list[ScoreResult]:
        """Score successfully loaded items (all ``item.ok``); return one result per item, in order."""

    def describe(self) -> dict[str, Any]:
        """JSON-safe description (method, preset, model, config) for run configs."""
        return {"method": self.name, "preset": self.preset, "model": self.model_name, "config": config_to_dict(self.config)}

    # -- the public API ---------------------------------------------------------------------------------
    def failure(self, key: str, error: str, timings: dict[str, float] | None = None) -> ScoreResult:
        return ScoreResult.failure(
            key,
            self.name,
            error,
            higher_is_better=self.higher_is_better,
            scale=self.scale,
            model=self.model_name,
            timings=timings,
        )

    def _limits(self) -> ImageLimits:
        cfg = self.config
        return ImageLimits(
            max_pixels=getattr(cfg, PIXEL_LIMIT_OPTION, ImageLimits.max_pixels),
            max_bytes=getattr(cfg, "max_bytes", ImageLimits.max_bytes),
        )

    def _score_batch(self, items: list[ImageItem], load_s: float) -> list[ScoreResult]:
        out: list[ScoreResult | None] = [None] * len(items)
        good = [i for i, it in enumerate(items) if it.ok]
        for i, it in enumerate(items):
            if not it.ok:
                out[i] = self.failure(it.key, it.error or "cannot open image")
        if good:
            try:
                scored = self.score_items([items[i] for i in good])
                if len(scored) != len(good):
                    raise RuntimeError(f"{self.name}: score_items returned {len(scored)} results for {len(good)} items")
                for i, r in zip(good, scored):
                    out[i] = r
            except Exception as err:
                if is_run_level(err):
                    # a model/segmenter/encoder that cannot be loaded, a missing dependency, a bad device: no other
                    # item can succeed, so end the run with one message (no per-item retries, no reload per item)
                    raise
                if len(good) == 1:
                    it = items[good[0]]
                    out[good[0]] = self.failure(it.key, _describe_exception(err))
                else:
                    # isolate the item that broke the batch: score one at a time
                    log.warning("%s: batch failed (%s); retrying items one by one", self.name, err)
                    for i in good:
                        out[i] = self._score_batch([items[i]], 0.0)[0]
        per_item_load = load_s / max(len(items), 1)
        done = [
            r if "load" in r.timings else _with_timing(r, "load", per_item_load)  # type: ignore[union-attr]
            for r in out
        ]
        preset = self.preset
        return [_with_preset(r, preset) for r in done] if preset else done

    def score_loaded(self, items: list[ImageItem], load_s: float = 0.0) -> list[ScoreResult]:
        """Score items that were already loaded elsewhere, as one batch; one result per item, in order.

        This is the batch path used by callers that decode images themselves: the HTTP service (which
        micro-batches decoded uploads from several requests) and the Ray engine (whose actors load their own
        share of the inputs). Items with ``error`` set become failures; an exception while scoring is isolated
        to the item that caused it (the batch is retried one item at a time), exactly as in :meth:`score`.

        Args:
            items: loaded inputs (see :func:`lmmiqa.images.load_many`); their ``key`` becomes ``image``.
            load_s: seconds spent loading the whole batch, spread evenly over the items' ``timings["load"]``.
        """
        return self._score_batch(self._resized(list(items)), load_s)

    def _resized(self, items: list[ImageItem]) -> list[ImageItem]:
        """Items with ``config.input_resize`` applied to their decoded images."""
        spec = getattr(self.config, "input_resize", None)
        if not spec:
            return items
        from dataclasses import replace

        from lmmiqa.backends.pixels import apply_resize

        return [replace(it, image=apply_resize(it.image, spec)) if it.ok else it for it in items]

    def iter_score(
        self,
        images: Any,
        batch_size: int | None = None,
        progress: bool | None = None,
        skip: set[str] | None = None,
    ) -> Iterator[list[ScoreResult]]:
        """Yield results batch by batch, in input order (for streaming to a file as they arrive).

        Args:
            images: path, folder, ``@list``, PIL image, numpy array, or a list of those.
            batch_size: overrides ``config.batch_size``.
            progress: show a progress bar on stderr (default: when more than 8 inputs and stderr is a tty).
            skip: input keys to skip (resume); they produce no result.
        """
        inputs = expand_inputs(images)
        if skip:
            inputs = [x for i, x in enumerate(inputs) if not (isinstance(x, str) and x in skip)]
        bs = int(batch_size or getattr(self.config, "batch_size", 8))
        limits = self._limits()
        workers = int(getattr(self.config, "decode_workers", 0) or 0)
        bar = _progress(len(inputs), progress, desc=self.name)

        def load(batch: tuple[int, list[Any]]) -> tuple[list[ImageItem], float]:
            t0 = time.perf_counter()
            items = self._resized(load_many(batch[1], limits, start=batch[0], workers=workers))
            return items, time.perf_counter() - t0

        batches = iter_batches(inputs, bs)
        loaded = prefetched(batches, load) if getattr(self.config, "prefetch", True) else map(load, batches)
        try:
            for items, load_s in loaded:
                results = self._score_batch(items, load_s)
                if bar is not None:
                    bar.update(len(results))
                yield results
        finally:
            if bar is not None:
                bar.close()

    def score(
        self, images: Any, batch_size: int | None = None, progress: bool | None = None
    ) -> list[ScoreResult]:
        """Score images; one :class:`ScoreResult` per input, in input order."""
        out: list[ScoreResult] = []
        for batch in self.iter_score(images, batch_size=batch_size, progress=progress):
            out.extend(batch)
        return out

    def __call__(self, images: Any, **kwargs: Any) -> list[ScoreResult]:
        return self.score(images, **kwargs)


def prefetched(items: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Any]:
    """``fn(x)`` for each ``x`` of ``items``, in order, computing the next one in a background thread while the
    caller works on the current one (at most one ahead). An exception of ``fn`` is raised where its result is
    taken; closing the generator waits for the one in flight."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmmiqa-prefetch") as pool:
        try:
            first = next(it)
        except StopIteration:
            return
        future = pool.submit(fn, first)
        for x in it:
            current = future.result()
            future = pool.submit(fn, x)
            yield current
        yield future.result()


def _with_timing(r: ScoreResult, key: str, value: float) -> ScoreResult:
    from dataclasses import replace

    return replace(r, timings={key: value, **r.timings})


def _with_preset(r: ScoreResult, preset: str) -> ScoreResult:
    from dataclasses import replace

    return replace(r, details={**r.details, "preset": preset})


def _describe_exception(err: BaseException) -> str:
    if isinstance(err, LmmiqaError):
        return str(err)
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {err}{where}"


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    if enabled is None:
        enabled = total > 8 and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)


def score_sequence(scorer: Scorer, images: Sequence[Any], **kw: Any) -> list[ScoreResult]:
    """Convenience: ``scorer.score`` for a sequence."""
    return scorer.score(list(images), **kw)
