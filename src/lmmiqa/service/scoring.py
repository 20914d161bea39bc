"""The scoring service behind the HTTP app: scorers, the micro-batcher, the decode pool and the metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmmiqa import registry
from lmmiqa.config import build_config
from lmmiqa.errors import ConfigError, ImageLoadError, LmmiqaError, UnknownNameError
from lmmiqa.images import ImageItem, ImageLimits, open_image_bytes
from lmmiqa.service.batching import BatcherConfig, MicroBatcher, QueueFullError, ServiceClosedError, Ticket
from lmmiqa.service.config import AGENTIC_METHOD, ServiceConfig
from lmmiqa.service.errors import RequestError
from lmmiqa.service.metrics import ServiceMetrics
from lmmiqa.service.options import SERVER_FIELDS, options_schema, validate_options
from lmmiqa.service.uploads import Upload, header_pixels


class ScoringService:
    """Scorers, the micro-batcher, the decode pool and the metrics behind the HTTP app.

    Args:
        config: service options.
        scorer: a ready scorer for the default method (tests, embedding); built from ``config`` when None.
            Building it loads the model now, so a bad model fails at start-up, not at the first request.
    """

    def __init__(self, config: ServiceConfig, scorer: Any | None = None) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self._scorers: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
        self._scorers_lock = threading.Lock()
        self.limits = ImageLimits(max_pixels=config.max_pixels, max_bytes=config.max_body_bytes)
        self.decode_pool = ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="lmmiqa-decode")
        self.batcher = MicroBatcher(
            self._run_batch,
            BatcherConfig(
                max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0, max_queue=config.max_queue
            ),
            on_batch=self._observe_batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        if config.assess_options:  # fail at start-up, not at the first /v1/assess
            if AGENTIC_METHOD not in registry.names("method"):
                raise ConfigError(f"assess options given but the {AGENTIC_METHOD!r} method is not installed")
            agentic = registry.resolve("method", AGENTIC_METHOD)
            build_config(agentic.config_cls, self._base_options(AGENTIC_METHOD), what=f"method {AGENTIC_METHOD!r}")
        default = scorer if scorer is not None else self._build_scorer(config.method, {})
        self._scorers[(config.method, ())] = default
        _warm(default)
        self.started = time.time()

    # ------------------------------------------------------------------ scorers
    @property
    def default_scorer(self) -> Any:
        return self._scorers[(self.config.method, ())]

    def _base_options(self, method: str) -> dict[str, Any]:
        if method == self.config.method:
            base = dict(self.config.options)
        else:
            cls = registry.resolve("method", method)
            fields = {f.name for f in dataclasses.fields(cls.config_cls)}
            base = {k: v for k, v in self.config.options.items() if k in SERVER_FIELDS and k in fields}
        if method == AGENTIC_METHOD:
            base.update(self.config.assess_options)
        return base

    def _build_scorer(self, method: str, request_options: Mapping[str, Any]) -> Any:
        cls = registry.resolve("method", method)
        return cls.from_options(**{**self._base_options(method), **request_options})

    def resolve_method(self, name: str | None, *, endpoint: str = "score") -> str:
        """The canonical served method for a request's ``method`` field (None: the default).

        Raises:
            RequestError: 422 when the method is unknown or not served here.
        """
        if endpoint == "assess":
            return AGENTIC_METHOD
        if name is None or name == "":
            return self.config.method
        try:
            method = registry.canonical("method", str(name))
        except UnknownNameError as err:
            raise RequestError(422, str(err)) from err
        if method not in self.config.served_methods:
            raise RequestError(
                422,
                f"method {method!r} is not served here; served: {', '.join(self.config.served_methods)} "
                "(start the server with --allow-method to serve more)",
            )
        return method

    def scorer_for(self, method: str, raw_options: Mapping[str, Any]) -> Any:
        """The scorer for ``method`` with per-request options (validated; cached per distinct options).

        Raises:
            RequestError: 422 when the options are invalid for the method.
        """
        cls = registry.resolve("method", method)
        try:
            opts = validate_options(cls, raw_options)
        except ConfigError as err:
            raise RequestError(422, str(err)) from err
        key = (method, tuple(sorted(opts.items())))
        with self._scorers_lock:
            scorer = self._scorers.get(key)
            if scorer is not None:
                self._scorers[key] = self._scorers.pop(key)  # most recently used last
                return scorer
        try:
            scorer = self._build_scorer(method, opts)
        except ConfigError as err:
            raise RequestError(422, f"invalid options for method {method!r}: {err}") from err
        with self._scorers_lock:
            scorer = self._scorers.setdefault(key, scorer)
            default_key = (self.config.method, ())
            while len(self._scorers) > self.config.max_scorers:
                oldest = next(k for k in self._scorers if k != default_key)
                del self._scorers[oldest]
        return scorer

    # ------------------------------------------------------------------ decoding
    def decode(self, uploads: list[Upload]) -> list[ImageItem]:
        """Decode every upload (thread-safe; runs in the decode pool).

        Raises:
            RequestError: 413 when an image has too many pixels, 400 when one cannot be decoded (the message
                names every bad image).
        """
        items: list[ImageItem] = []
        too_large: list[str] = []
        bad: list[str] = []
        for i, up in enumerate(uploads):
            key = up.name or f"<memory:{i}>"
            label = f"image {i + 1}" + (f" ({up.name})" if up.name else "")
            pixels = header_pixels(up.data)
            if pixels is not None and pixels > self.limits.max_pixels:
                too_large.append(f"{label}: {pixels} pixels exceeds the limit of {self.limits.max_pixels}")
                continue
            try:
                items.append(ImageItem(key=key, image=open_image_bytes(up.data, label, self.limits), source=None))
            except ImageLoadError as err:
                if "exceeds the limit" in str(err) or "decompression bomb" in str(err):
                    too_large.append(str(err))
                else:
                    bad.append(str(err))
        if too_large:
            raise RequestError(413, "; ".join(too_large))
        if bad:
            raise RequestError(400, "; ".join(bad))
        return items

    # ------------------------------------------------------------------ batching
    def _run_batch(self, scorer: Any, items: list[ImageItem]) -> list[Any]:
        results = scorer.score_loaded(items)
        for r in results:
            self.metrics.images.labels(method=r.method, outcome="ok" if r.error is None else "error").inc()
            if r.error is not None:
                self.metrics.failures.labels(reason="item_error").inc()
        return list(results)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    async def score(self, method: str, raw_options: Mapping[str, Any], uploads: list[Upload]) -> list[dict[str, Any]]:
        """Validate, decode, queue and await one request's images; returns the result dicts in order.

        Raises:
            RequestError: with the status that applies (see the module docstring).
        """
        if not uploads:
            raise RequestError(400, "no image in the request (multipart: one or more file parts; JSON: 'images')")
        if len(uploads) > self.config.max_images:
            raise RequestError(
                413, f"{len(uploads)} images in one request exceeds the limit of {self.config.max_images}"
            )
        loop = asyncio.get_running_loop()
        scorer = await loop.run_in_executor(None, self.scorer_for, method, raw_options)
        items = await loop.run_in_executor(self.decode_pool, self.decode, uploads)
        future: asyncio.Future[Ticket] = loop.create_future()

        def resolve(ticket: Ticket) -> None:
            if not future.done():
                future.set_result(ticket)

        try:
            ticket = self.batcher.submit(scorer, items, lambda t: loop.call_soon_threadsafe(resolve, t))
        except QueueFullError as err:
            raise RequestError(429, str(err), headers={"Retry-After": "1"}) from err
        except ServiceClosedError as err:
            raise RequestError(503, str(err)) from err
        try:
            await asyncio.wait_for(future, timeout=self.config.request_timeout_s)
        except asyncio.TimeoutError as err:
            ticket.cancel()
            raise RequestError(
                503,
                f"no result within {self.config.request_timeout_s:g} s (the server is overloaded); retry later",
                headers={"Retry-After": "5"},
            ) from err
        if ticket.error is not None:
            raise RequestError(
                503,
                f"the scoring backend failed on the batch holding this request: {_describe(ticket.error)}",
            )
        return [r.to_dict() for r in ticket.results if r is not None]

    # ------------------------------------------------------------------ info
    def methods_info(self) -> dict[str, Any]:
        """``GET /v1/methods``: served methods with summaries, scales and per-request option schemas."""
        out: dict[str, Any] = {}
        for name in self.config.served_methods:
            cls = registry.resolve("method", name)
            out[name] = {
                "summary": getattr(cls, "summary", "") or (cls.__doc__ or "").strip().splitlines()[0],
                "higher_is_better": bool(getattr(cls, "higher_is_better", True)),
                "options": options_schema(cls),
            }
        default = self.default_scorer
        return {
            "default": self.config.method,
            "model": default.model_name,
            "scale": list(default.scale) if default.scale is not None else None,
            "methods": out,
            "assess_available": AGENTIC_METHOD in registry.names("method"),
            "limits": {
                "max_images": self.config.max_images,
                "max_body_bytes": self.config.max_body_bytes,
                "max_pixels": self.config.max_pixels,
            },
        }

    def close(self) -> None:
        """Finish pending batches and stop the worker and the decode pool."""
        self.batcher.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)


def _warm(scorer: Any) -> None:
    """Load the scorer's backend now (LevelScorer creates it lazily on first use)."""
    if isinstance(getattr(type(scorer), "backend", None), property):
        _ = scorer.backend



def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, LmmiqaError) else f"{type(err).__name__}: {err}"
