"""The scoring service behind the HTTP app: scorers, the micro-batcher, the decode pool and the metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmmiqa import registry
from lmmiqa.cancel import cancel_when
from lmmiqa.config import build_config
from lmmiqa.errors import Cancelled, ConfigError, ImageLoadError, LmmiqaError, UnknownNameError
from lmmiqa.images import ImageItem, ImageLimits
from lmmiqa.service.batching import BatcherConfig, MicroBatcher, QueueFullError, ServiceClosedError, Ticket
from lmmiqa.service.budget import Budget, Hold, PixelBudget, RequestHold
from lmmiqa.service.config import AGENTIC_METHOD, FLAGS, ServiceConfig
from lmmiqa.service.errors import RequestError
from lmmiqa.service.metrics import ServiceMetrics
from lmmiqa.service.naming import ModelNames, default_public_name
from lmmiqa.service.options import SERVER_FIELDS, options_schema, validate_options
from lmmiqa.service.uploads import Upload, decode_cost, decode_upload, planned_size, read_header

__all__ = ["LANES", "PixelBudget", "ScoringService", "model_pixel_budget", "public_model_name"]

#: the lane (queue and worker thread) of each kind of work: long agentic assessments never hold scoring's worker
LANES = ("score", "assess")

#: a request whose largest image decodes within this much memory is decoded in the light pool (two threads of
#: its own), never behind the large decodes queued in the decode pool (a 3-4 MP photo, or any image reduced
#: from a JPEG's reduced DCT scale)
LIGHT_DECODE_BYTES = 32 * 1024 * 1024

#: the answer to a request the server stopped because it is shutting down
SHUTTING_DOWN = "the server is shutting down; retry later (or on another replica)"


@dataclass(frozen=True)
class DecodePlan:
    """What decoding one request's images takes: decoded pixels per image (after the planned reduction), the
    most memory one image's decode needs while it runs (images are decoded one after another) and the memory of
    all decoded images (bytes)."""

    pixels: list[int]
    transient: int
    output: int

    @property
    def memory(self) -> int:
        return self.transient + self.output


class ScoringService:
    """Scorers, the micro-batchers, the decode pool, the pixel budget and the metrics behind the HTTP app.

    Scoring and agentic assessment run in separate lanes (one queue and one worker thread each, see
    :data:`LANES`), so a long assessment never delays a scoring request behind it; both share the loaded
    model, whose backend serializes the forwards (the transformers backend lends the model to waiting scoring
    forwards between two generated tokens, :mod:`lmmiqa.backends.model_lock`).

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
        self._targets: dict[int, int | None] = {}
        self.limits = ImageLimits(max_pixels=config.max_image_pixels, max_bytes=config.max_body_bytes)
        self.pixels = Budget(config.max_queue_pixels)
        #: request memory in flight (bodies being read and parsed, images being decoded, decoded images)
        self.memory = Budget(config.max_memory_bytes, small_reserve=min(64 * 2**20, config.max_memory_bytes // 8))
        #: set when the server begins to shut down: new requests are answered 503
        self.closing = threading.Event()
        #: set at the end of the shutdown grace period: running decodes and generations stop
        self.aborted = threading.Event()
        self.decode_pool = ThreadPoolExecutor(max_workers=config.decode_workers, thread_name_prefix="lmmiqa-decode")
        #: reads headers and decodes light requests, so that a queue of large decodes never delays a small one
        self.light_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmmiqa-decode-light")
        batching = BatcherConfig(
            max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0, max_queue=config.max_queue
        )
        self.batchers = {
            lane: MicroBatcher(self._run_batch, batching, on_batch=self._observe_batch, name=f"lmmiqa-{lane}")
            for lane in LANES
        }
        self.metrics.queue_depth.set_function(lambda: self.depth)
        if config.assess_enabled:  # fail at start-up, not at the first /v1/assess
            agentic = registry.resolve("method", AGENTIC_METHOD)
            build_config(agentic.config_cls, self._base_options(AGENTIC_METHOD), what=f"method {AGENTIC_METHOD!r}")
        default = scorer if scorer is not None else self._build_scorer(config.method, {})
        self._scorers[(config.method, ())] = default
        try:
            self.names = ModelNames(default.model_name, config.model_name)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        _warm(default)
        self.started = time.time()

    @property
    def public_model(self) -> Any:
        """The default model's public name(s) (``--model-name``, else its folder's name or hub id)."""
        return self.names.public(self.default_scorer.model_name)

    @property
    def batcher(self) -> MicroBatcher:
        """The scoring lane's batcher."""
        return self.batchers["score"]

    @property
    def depth(self) -> int:
        """Images pending in every lane."""
        return sum(b.depth for b in self.batchers.values())

    def start(self) -> None:
        """Start the lanes' worker threads (idempotent; submitting starts them too)."""
        for b in self.batchers.values():
            b.start()

    @staticmethod
    def lane(method: str) -> str:
        """The lane that runs ``method``."""
        return "assess" if method == AGENTIC_METHOD else "score"

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
            RequestError: 404 when ``/v1/assess`` is not enabled, 501 when the agentic method is not
                registered, 422 when the method is unknown or not served here.
        """
        if endpoint == "assess":
            if not self.config.assess_enabled:
                raise RequestError(
                    404,
                    "POST /v1/assess is not enabled on this server: the agentic method is served only when the "
                    f"server is started with --allow-method {AGENTIC_METHOD} (or --method {AGENTIC_METHOD})",
                )
            if AGENTIC_METHOD not in registry.names("method"):
                raise RequestError(
                    501,
                    f"agentic assessment is not available: the {AGENTIC_METHOD!r} method is not registered in "
                    f"this installation (registered: {', '.join(registry.names('method'))})",
                )
            return AGENTIC_METHOD
        if name is None or name == "":
            return self.config.method
        if len(str(name)) > 100:
            raise RequestError(422, f"unknown method (a name of {len(str(name))} characters); served: "
                               f"{', '.join(self.config.served_methods)}")
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

    def check_option_sizes(self, raw_options: Mapping[str, Any]) -> None:
        """Refuse option names and string values longer than the limits (before they reach any message).

        Raises:
            RequestError: 422 naming the option, its length and the flag that raises the limit.
        """
        limit = self.config.max_query_chars
        for key, value in raw_options.items():
            if len(str(key)) > 64:
                raise RequestError(422, f"an option name of {len(str(key))} characters: no option has a name that long")
            if isinstance(value, str) and len(value) > limit:
                raise RequestError(
                    422,
                    f"option {key!r} is {len(value)} characters long, over the limit of {limit} "
                    f"({FLAGS['max_query_chars']})",
                )

    def scorer_for(self, method: str, raw_options: Mapping[str, Any]) -> Any:
        """The scorer for ``method`` with per-request options (validated; cached per distinct options).

        Raises:
            RequestError: 422 when the options are invalid for the method or too long.
        """
        self.check_option_sizes(raw_options)
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
    def decode_target(self, scorer: Any) -> int | None:
        """Pixels to decode large images to for ``scorer`` (None: full resolution); see ``decode_max_pixels``."""
        if self.config.decode_max_pixels is not None:
            return self.config.decode_max_pixels or None
        key = id(scorer)
        if key not in self._targets:
            self._targets[key] = model_pixel_budget(scorer)
        return self._targets[key]

    def plan(self, uploads: list[Upload], target: int | None) -> DecodePlan:
        """Decoded pixels of each upload (from its header, after the planned reduction; 0 when the header is
        unreadable: the decode reports why) and the memory decoding them takes (:func:`decode_cost`).

        Raises:
            RequestError: 413 when an image is over ``max_image_pixels`` or the request over
                ``max_request_pixels`` or ``max_memory_bytes`` (the message names the limit and its flag).
        """
        planned: list[int] = []
        too_large: list[str] = []
        transient = output = 0
        for i, up in enumerate(uploads):
            header = read_header(up.data)
            if header is None:
                planned.append(0)
                continue
            if header.pixels > self.config.max_image_pixels:
                too_large.append(
                    f"{_label(i, up)}: {header.width}×{header.height} = {header.pixels} pixels exceeds the limit "
                    f"of {self.config.max_image_pixels} per image ({FLAGS['max_image_pixels']})"
                )
                continue
            w, h = planned_size(header.width, header.height, target)
            planned.append(w * h)
            cost = decode_cost(header, target)
            transient = max(transient, cost.transient)
            output += cost.output
        if too_large:
            raise RequestError(413, "; ".join(too_large))
        total = sum(planned)
        reduced = f" (after reducing large images to about {target} pixels each)" if target else ""
        if total > self.config.max_request_pixels:
            raise RequestError(
                413,
                f"the {len(uploads)} image(s) of this request decode to {total} pixels{reduced}, over the "
                f"per-request budget of {self.config.max_request_pixels} pixels ({FLAGS['max_request_pixels']}); "
                "send fewer or smaller images",
            )
        plan = DecodePlan(planned, transient, output)
        if plan.memory > self.memory.capacity(plan.memory):
            raise RequestError(
                413,
                f"decoding the {len(uploads)} image(s) of this request takes {_mb(plan.memory)} of memory{reduced}, "
                f"over the {_mb(self.memory.capacity(plan.memory))} of the server's memory budget a request may take "
                f"({FLAGS['max_memory_bytes']} {self.config.max_memory_bytes // 2**20}); send fewer or smaller images "
                "(WebP and progressive JPEG cost the most per pixel)",
            )
        return plan

    def decode(self, uploads: list[Upload], target: int | None = None) -> list[ImageItem]:
        """Decode every upload, large ones straight to ``target`` pixels (thread-safe; runs in the decode pool).

        Raises:
            RequestError: 413 when an image has too many pixels, 400 when one cannot be decoded (the message
                names every bad image).
            Cancelled: the request was given up (inside a :func:`lmmiqa.cancel.cancel_when` scope).
        """
        items: list[ImageItem] = []
        too_large: list[str] = []
        bad: list[str] = []
        for i, up in enumerate(uploads):
            key = up.name or f"<memory:{i}>"
            label = _label(i, up)
            try:
                items.append(ImageItem(key=key, image=decode_upload(up.data, label, self.limits, target), source=None))
            except ImageLoadError as err:
                if "exceeds the limit" in str(err) or "decompression bomb" in str(err):
                    too_large.append(f"{err} ({FLAGS['max_image_pixels']})")
                else:
                    bad.append(str(err))
        if too_large:
            raise RequestError(413, "; ".join(too_large))
        if bad:
            raise RequestError(400, "; ".join(bad))
        return items

    def _decode_job(self, uploads: list[Upload], target: int | None, stop: Any, hold: RequestHold, transient: int,
                    body: Hold | None) -> list[ImageItem]:
        """:meth:`decode` in the decode pool, stopping when ``stop()`` says why; then give back the decoding's
        working memory and the body's (the uploads are dropped: only the decoded images are kept)."""
        try:
            with cancel_when(stop):
                return self.decode(uploads, target)
        finally:
            uploads.clear()
            hold.memory.shrink(transient)
            if body is not None:
                body.release()

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

    def stop_reason(self, gone: threading.Event | None = None) -> str | None:
        """Why a request's work should stop now (the server aborts, or ``gone``: its client left or it timed
        out), or None."""
        if self.aborted.is_set():
            return SHUTTING_DOWN
        if gone is not None and gone.is_set():
            return "the request was given up (its client left or it timed out)"
        return None

    def lane_timeout(self, lane: str) -> tuple[float, str, str]:
        """(seconds, flag, what) of the lane's request timeout."""
        cfg = self.config
        if lane == "assess":
            return cfg.assess_timeout_s, FLAGS["assess_timeout_s"], "the assessment"
        return cfg.request_timeout_s, FLAGS["request_timeout_s"], "scoring"

    async def score(
        self,
        method: str,
        raw_options: Mapping[str, Any],
        uploads: list[Upload],
        *,
        body: Hold | None = None,
        gone: threading.Event | None = None,
    ) -> list[dict[str, Any]]:
        """Validate, budget, decode, queue and await one request's images; returns the result dicts in order.

        The lane's timeout covers decoding, queueing and scoring. When the request is given up (``gone`` set by
        the caller when its client leaves, the timeout, the server's shutdown), its decode stops at the next tile,
        its queued images are dropped and a running generation stops between two tokens when no other request
        shares its batch. ``uploads`` is emptied once decoded and ``body`` (the body's memory) released then.

        Raises:
            RequestError: with the status that applies (see :mod:`lmmiqa.service.app`).
        """
        cfg = self.config
        lane = self.lane(method)
        if self.closing.is_set():
            raise RequestError(503, SHUTTING_DOWN, headers={"Retry-After": "5"})
        if not uploads:
            raise RequestError(400, "no image in the request (multipart: one or more file parts; JSON: 'images')")
        max_images, flag = (
            (cfg.max_assess_images, FLAGS["max_assess_images"]) if lane == "assess" else (cfg.max_images, FLAGS["max_images"])
        )
        if len(uploads) > max_images:
            what = "images in one assessment request" if lane == "assess" else "images in one request"
            raise RequestError(413, f"{len(uploads)} {what} exceeds the limit of {max_images} ({flag})")
        loop = asyncio.get_running_loop()
        timeout, timeout_flag, _ = self.lane_timeout(lane)
        deadline = loop.time() + timeout
        gone = gone if gone is not None else threading.Event()
        scorer = await loop.run_in_executor(None, self.scorer_for, method, raw_options)
        target = await loop.run_in_executor(None, self.decode_target, scorer)
        plan = await loop.run_in_executor(self.light_pool, self.plan, uploads, target)
        hold = self._reserve(plan)
        stop = functools.partial(self.stop_reason, gone)
        pool = self.light_pool if plan.transient <= LIGHT_DECODE_BYTES else self.decode_pool
        job = pool.submit(self._decode_job, uploads, target, stop, hold, plan.transient, body)
        try:
            items = await asyncio.wait_for(asyncio.wrap_future(job), max(0.0, deadline - loop.time()))
        except BaseException as err:
            gone.set()
            job.add_done_callback(lambda _job: hold.release())  # the memory is free once the decode stopped
            if isinstance(err, asyncio.TimeoutError):
                raise RequestError(
                    503,
                    f"this request's images were not decoded within {timeout:g} s ({timeout_flag}): the server is "
                    "busy; retry later",
                    headers={"Retry-After": "5"},
                ) from err
            if isinstance(err, Cancelled):
                raise RequestError(503, SHUTTING_DOWN, headers={"Retry-After": "5"}) from err
            raise
        release = True
        try:
            ticket = await self._queue_and_wait(lane, scorer, items, hold, deadline, gone)
        except _Timeout as err:
            release = not err.held  # held: the running batch releases them when it ends
            raise
        except asyncio.CancelledError:
            release = False  # _queue_and_wait arranged the release
            raise
        finally:
            if release:
                hold.release()
        return [self.names.result(r.to_dict()) for r in ticket.results if r is not None]

    def _reserve(self, plan: DecodePlan) -> RequestHold:
        """Take the request's decoded pixels and decoding memory from the budgets.

        Raises:
            RequestError: 429 (with Retry-After) when the server's budgets are full now.
        """
        cfg = self.config
        pixels = sum(plan.pixels)
        px = Hold.take(self.pixels, pixels)
        if px is None:
            raise RequestError(
                429,
                f"the server holds {self.pixels.used} decoded pixels for requests in flight; this request's "
                f"{pixels} would exceed the server's budget of {cfg.max_queue_pixels} ({FLAGS['max_queue_pixels']}); "
                "retry later",
                headers={"Retry-After": "1"},
            )
        mem = Hold.take(self.memory, plan.memory)
        if mem is None:
            px.release()
            raise RequestError(
                429,
                f"the server holds {_mb(self.memory.used)} of request memory in flight; decoding this request takes "
                f"{_mb(plan.memory)}, over the server's budget of {_mb(cfg.max_memory_bytes)} "
                f"({FLAGS['max_memory_bytes']}); retry later",
                headers={"Retry-After": "1"},
            )
        return RequestHold(px, mem)

    async def _queue_and_wait(self, lane: str, scorer: Any, items: list[ImageItem], hold: RequestHold, deadline: float,
                              gone: threading.Event) -> Ticket:
        """Submit ``items`` to the lane and wait for their ticket (until ``deadline``, on the loop's clock).

        Raises:
            RequestError: 429 (queue full), 503 (closed, shutting down, backend failure, timed out in the queue),
                504 (timed out while being scored; the message names the timeout and its flag).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ticket] = loop.create_future()
        state = {"done": False, "gave_up": False}
        state_lock = threading.Lock()

        def resolve(ticket: Ticket) -> None:
            if not future.done():
                future.set_result(ticket)

        def on_done(ticket: Ticket) -> None:
            with state_lock:
                state["done"] = True
                release_now = state["gave_up"]
            if release_now:  # the request gave up while its batch ran: the memory is free only now
                hold.release()
            if not loop.is_closed():
                loop.call_soon_threadsafe(resolve, ticket)

        def give_up(ticket: Ticket) -> bool:
            """Cancel the ticket; True when its running batch keeps the images (released by on_done)."""
            gone.set()
            ticket.cancel()
            with state_lock:
                held = ticket.started and not state["done"]
                state["gave_up"] = held
            return held

        try:
            ticket = self.batchers[lane].submit(scorer, items, on_done)
        except QueueFullError as err:
            raise RequestError(429, f"{err} ({FLAGS['max_queue']})", headers={"Retry-After": "1"}) from err
        except ServiceClosedError as err:
            raise RequestError(503, SHUTTING_DOWN if self.closing.is_set() else str(err),
                               headers={"Retry-After": "5"}) from err
        timeout, flag, what = self.lane_timeout(lane)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:  # the client left: drop what is queued, stop what runs
            if not give_up(ticket):
                hold.release()
            raise
        except asyncio.TimeoutError as err:
            held = give_up(ticket)
            if ticket.started:
                raise _Timeout(
                    504,
                    f"{what} of this request was still running after {timeout:g} s, the request timeout "
                    f"({flag} {timeout:g}); its images not yet scored were dropped. Start the server with a larger "
                    f"{flag} for images that take longer",
                    held,
                ) from err
            raise _Timeout(
                503,
                f"this request waited {timeout:g} s ({flag}) in the {lane} queue without starting: the server is "
                "busy; retry later",
                False,
                headers={"Retry-After": "5"},
            ) from err
        if ticket.error is not None:
            if isinstance(ticket.error, (Cancelled, ServiceClosedError)):
                raise RequestError(503, SHUTTING_DOWN, headers={"Retry-After": "5"})
            raise RequestError(
                503,
                f"the scoring backend failed on the batch holding this request: {self.names.scrub(_describe(ticket.error))}",
            )
        return ticket

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
        cfg = self.config
        return {
            "default": cfg.method,
            "model": self.names.public(default.model_name),
            "scale": list(default.scale) if default.scale is not None else None,
            "methods": out,
            "assess_available": cfg.assess_enabled and AGENTIC_METHOD in registry.names("method"),
            "limits": {
                "max_images": cfg.max_images,
                "max_assess_images": cfg.max_assess_images,
                "max_body_bytes": cfg.max_body_bytes,
                "max_image_pixels": cfg.max_image_pixels,
                "max_request_pixels": cfg.max_request_pixels,
                "max_query_chars": cfg.max_query_chars,
                "request_timeout_s": cfg.request_timeout_s,
                "assess_timeout_s": cfg.assess_timeout_s,
            },
        }

    def begin_shutdown(self) -> None:
        """Stop taking requests (new ones are answered 503); the ones in flight go on."""
        self.closing.set()
        for b in self.batchers.values():
            b.stop_accepting()

    def abort(self) -> None:
        """End the shutdown grace period: running decodes stop at their next tile, running generations between
        two tokens, queued images are dropped; their requests are answered 503."""
        self.begin_shutdown()
        self.aborted.set()
        for b in self.batchers.values():
            b.abort(ServiceClosedError(SHUTTING_DOWN))

    def close(self) -> None:
        """Finish pending batches and stop the workers and the decode pool (after :meth:`abort`, wait at most 2 s
        for a batch that cannot be stopped between two tokens, e.g. an HTTP backend's requests in flight)."""
        self.closing.set()
        for b in self.batchers.values():
            b.close(timeout=2.0 if self.aborted.is_set() else 30.0)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.light_pool.shutdown(wait=False, cancel_futures=True)


class _Timeout(RequestError):
    """A request timeout; ``held`` says whether its pixels stay reserved until its running batch ends."""

    def __init__(self, status: int, message: str, held: bool, **kwargs: Any) -> None:
        super().__init__(status, message, **kwargs)
        self.held = held


def _label(index: int, up: Upload) -> str:
    return f"image {index + 1}" + (f" ({up.name})" if up.name else "")


def public_model_name(name: Any) -> str | None:
    """The default public name of a model (:func:`lmmiqa.service.naming.default_public_name`); an ensemble's
    names joined by commas."""
    if name is None:
        return None
    if isinstance(name, (list, tuple)):
        return ", ".join(default_public_name(str(n)) for n in name)
    return default_public_name(str(name))


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def model_pixel_budget(scorer: Any) -> int | None:
    """Most pixels the scorer's model sees per image, read from its processor (Qwen-VL style ``max_pixels``,
    or ``size["longest_edge"]`` of the Qwen2-VL image processors, which is a pixel count), or None when the
    scorer has no in-process processor or it states no pixel budget."""
    if not isinstance(getattr(type(scorer), "backend", None), property):
        return None
    try:
        processor = getattr(scorer.backend, "processor", None)
    except Exception:
        return None
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    value = getattr(image_processor, "max_pixels", None)
    if not value:
        size = getattr(image_processor, "size", None)
        if "Qwen" in type(image_processor).__name__ and size is not None:
            value = size.get("longest_edge") if hasattr(size, "get") else getattr(size, "longest_edge", None)
            value = value or (size.get("max_pixels") if hasattr(size, "get") else getattr(size, "max_pixels", None))
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


def _warm(scorer: Any) -> None:
    """Load the scorer's backend now (LevelScorer creates it lazily on first use)."""
    if isinstance(getattr(type(scorer), "backend", None), property):
        _ = scorer.backend



def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, LmmiqaError) else f"{type(err).__name__}: {err}"
