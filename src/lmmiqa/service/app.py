"""The lmmiqa HTTP API and web page (FastAPI + uvicorn).

Endpoints:

- ``POST /v1/score``: score one or more images. ``multipart/form-data`` (every file part is an image; an
  optional ``method`` field; method options as an ``options`` JSON field and/or as plain fields, e.g.
  ``-F readout=argmax``), or ``application/json`` (``{"images": ["<base64 or data: URL>" | {"data": ..., "name":
  ...}], "method": ..., "options": {...}}``). Answers ``{"results": [ScoreResult.to_dict(), ...]}`` in upload
  order. URLs are never fetched by the server.
- ``POST /v1/assess``: the same for the agentic method (``agentic-iqa``) when it is registered (checked at
  request time); 501 otherwise.
- ``GET /v1/methods``: the served methods, their summaries and the JSON schema of their per-request options.
- ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``GET /docs``, and the web page at
  ``GET /`` (static files from ``lmmiqa/service/static``).

Requests from concurrent clients are micro-batched (:mod:`lmmiqa.service.batching`): uploads are decoded in a
thread pool (overlapping with the backend's work), then queued; one worker thread runs batches of up to
``max_batch`` images through :meth:`lmmiqa.methods.base.Scorer.score_loaded`. A bad upload is rejected before
it reaches a batch, so it never disturbs other requests.

Errors are JSON ``{"error": {"status": ..., "type": ..., "message": ...}}``: 400 (malformed request, corrupt
image), 401 (API key), 413 (body, image pixels or images per request over the limit), 415 (not multipart/JSON,
or a part that is not an image), 422 (unknown method or invalid options), 429 (queue full), 501 (no agentic
method), 503 (timeout, backend failure on the batch, shutting down).

This module imports FastAPI lazily (inside :func:`create_app`); ``import lmmiqa`` never loads it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import io
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmiqa import registry
from lmmiqa.config import build_config
from lmmiqa.errors import ConfigError, ImageLoadError, LmmiqaError, UnknownNameError, require
from lmmiqa.images import ImageItem, ImageLimits, open_image_bytes
from lmmiqa.service.batching import BatcherConfig, MicroBatcher, QueueFullError, ServiceClosedError, Ticket
from lmmiqa.service.options import SERVER_FIELDS, options_schema, validate_options

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")

#: the registered name of the agentic method behind ``POST /v1/assess``
AGENTIC_METHOD = "agentic-iqa"

#: content types accepted for an uploaded image part (the bytes are sniffed by Pillow either way)
_OK_PART_TYPES = ("image/", "application/octet-stream")


# ----------------------------------------------------------------------------------------------- config


@dataclass
class ServiceConfig:
    """Options of the scoring service.

    Attributes:
        method: the default method (requests that name no method get it).
        options: server-level options of that method (``model``, ``backend``, ``device``, ``dtype``, ...);
            the model-level ones (:data:`~lmmiqa.service.options.SERVER_FIELDS`) also apply to every other
            served method.
        allow_methods: further registered methods a request may choose with its ``method`` field; they share
            the loaded model (backends are cached per model).
        assess_options: server-level options of the agentic method behind ``/v1/assess`` (e.g.
            ``{"max_new_tokens": 128, "tools": "niqe,brisque"}``), on top of the model-level ones.
        max_batch: most images per backend batch.
        max_wait_ms: longest wait of the oldest pending image for its batch to fill.
        max_queue: most images pending; beyond it requests get 429.
        max_body_bytes: largest request body; beyond it 413.
        max_images: most images per request; beyond it 413.
        max_pixels: largest width*height of one image; beyond it 413.
        request_timeout_s: longest time a request waits for its results; beyond it 503.
        decode_workers: threads decoding uploads (overlaps decoding with backend work).
        api_key: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>`` or ``X-API-Key``.
        max_scorers: distinct (method, options) scorers kept in memory (least recently used dropped first).
    """

    method: str = "q-align"
    options: dict[str, Any] = field(default_factory=dict)
    allow_methods: tuple[str, ...] = ()
    assess_options: dict[str, Any] = field(default_factory=dict)
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 16
    max_pixels: int = 40_000_000
    request_timeout_s: float = 60.0
    decode_workers: int = 4
    api_key: str | None = field(default=None, repr=False)
    max_scorers: int = 16

    def __post_init__(self) -> None:
        self.method = registry.canonical("method", self.method)
        self.allow_methods = tuple(dict.fromkeys(registry.canonical("method", m) for m in self.allow_methods))
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_images", "max_pixels", "max_scorers"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.decode_workers < 1:
            raise ConfigError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.max_images > self.max_queue:
            raise ConfigError(f"max_images ({self.max_images}) cannot exceed max_queue ({self.max_queue})")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty")

    @property
    def served_methods(self) -> tuple[str, ...]:
        """The default method first, then the allowed extra ones."""
        return tuple(dict.fromkeys((self.method, *self.allow_methods)))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve a non-loopback address without an API key.

    Raises:
        ConfigError: ``host`` is not a loopback address and no API key is configured.
    """
    if not is_loopback(host) and not api_key:
        raise ConfigError(
            f"refusing to listen on {host!r} without an API key: binding a non-loopback address exposes the "
            "model to the network. Set a key in an environment variable and pass --api-key-env VAR "
            "(clients then send 'Authorization: Bearer <key>'), or bind 127.0.0.1"
        )


# ----------------------------------------------------------------------------------------------- errors


class RequestError(LmmiqaError):
    """A request the service answers with an HTTP error status (the message is shown to the client)."""

    TYPES = {
        400: "bad_request",
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "invalid_request",
        429: "queue_full",
        501: "not_implemented",
        503: "unavailable",
    }

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return self.TYPES.get(self.status, "error")

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON error shape of every non-2xx answer."""
    return {"error": {"status": status, "type": RequestError.TYPES.get(status, "error"), "message": message}}


# ----------------------------------------------------------------------------------------------- metrics


class ServiceMetrics:
    """Prometheus metrics of one service (own registry, so several apps can live in one process).

    Exposed series: ``lmmiqa_requests_total{endpoint,status}``, ``lmmiqa_request_latency_seconds{endpoint}``,
    ``lmmiqa_batch_size``, ``lmmiqa_batch_seconds``, ``lmmiqa_images_total{method,outcome}``,
    ``lmmiqa_failures_total{reason}``, ``lmmiqa_queue_depth``.
    """

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve", "the /metrics endpoint")
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("lmmiqa_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = prom.Histogram(
            "lmmiqa_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "lmmiqa_batch_size", "images per backend batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_seconds = prom.Histogram(
            "lmmiqa_batch_seconds",
            "time to score one backend batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.images = prom.Counter("lmmiqa_images", "images scored", ["method", "outcome"], registry=r)
        self.failures = prom.Counter("lmmiqa_failures", "failed requests and items by reason", ["reason"], registry=r)
        self.queue_depth = prom.Gauge("lmmiqa_queue_depth", "images waiting for a batch", registry=r)

    def render(self) -> tuple[bytes, str]:
        """(exposition text, content type) for ``GET /metrics``."""
        prom = require("prometheus_client", "serve", "the /metrics endpoint")
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


_FAILURE_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_options",
    429: "queue_full",
    501: "not_implemented",
    503: "unavailable",
}


# ----------------------------------------------------------------------------------------------- service


@dataclass(frozen=True)
class Upload:
    """One image as received: a display name (or None) and its bytes."""

    name: str | None
    data: bytes


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
            pixels = _header_pixels(up.data)
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


def _header_pixels(data: bytes) -> int | None:
    """width*height from the image header (no decoding), or None when the header cannot be read (the full
    decode then reports why, including Pillow's own decompression-bomb refusal)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width) * int(im.height)
    except Exception:
        return None


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, LmmiqaError) else f"{type(err).__name__}: {err}"


# ----------------------------------------------------------------------------------------------- request parsing


def _json_uploads(body: Mapping[str, Any]) -> tuple[str | None, dict[str, Any], list[Upload]]:
    """(method, options, uploads) of a JSON request body validated by :class:`ScoreJSONRequest`."""
    import pydantic

    try:
        req = _models()["ScoreJSONRequest"].model_validate(body)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
        raise RequestError(422, f"invalid JSON request: {problems}") from err
    uploads = []
    for i, img in enumerate(req.images):
        data, name = (img, None) if isinstance(img, str) else (img.data, img.name)
        uploads.append(Upload(name=name, data=_b64_image(data, i)))
    return req.method, dict(req.options), uploads


def _b64_image(text: str, index: int) -> bytes:
    s = text.strip()
    if s.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise RequestError(
            400,
            f"image {index + 1}: the server does not fetch URLs; send the image bytes (multipart upload) or "
            "base64 in JSON",
        )
    if s.startswith("data:"):
        header, sep, s = s.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(400, f"image {index + 1}: a data: URL must be base64-encoded (data:image/...;base64,...)")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"image {index + 1}: not valid base64 ({err})") from err


async def _multipart_uploads(request: Any, max_images: int) -> tuple[str | None, dict[str, Any], list[Upload]]:
    """(method, options, uploads) of a multipart form: file parts are images, ``method``/``options`` fields."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=max_images, max_fields=100)
    except (MultiPartException, HTTPException) as err:
        detail = str(getattr(err, "detail", None) or getattr(err, "message", None) or err)
        if "Too many files" in detail:
            raise RequestError(413, f"more than {max_images} images in one request exceeds the limit") from err
        raise RequestError(400, f"malformed multipart body: {detail}") from err
    method: str | None = None
    options: dict[str, Any] = {}
    uploads: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                ctype = (value.content_type or "").split(";")[0].strip().lower()
                if ctype and not ctype.startswith(_OK_PART_TYPES):
                    raise RequestError(
                        415,
                        f"part {key!r} ({value.filename or 'unnamed'}) has content type {ctype!r}; expected an "
                        "image (image/*) or application/octet-stream",
                    )
                data = await value.read()
                uploads.append(Upload(name=_clean_name(value.filename), data=data))
            elif key == "method":
                method = value
            elif key == "options":
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError as err:
                    raise RequestError(400, f"the 'options' field is not valid JSON ({err})") from err
                if not isinstance(parsed, dict):
                    raise RequestError(422, "the 'options' field must be a JSON object")
                options.update(parsed)
            elif key in ("image", "images", "file", "files"):
                raise RequestError(400, f"field {key!r} must be a file upload (curl: -F {key}=@photo.jpg)")
            else:
                options[key] = value
    finally:
        await form.close()
    return method, options, uploads


def _clean_name(name: str | None) -> str | None:
    if not name:
        return None
    return name.replace("\\", "/").rsplit("/", 1)[-1][:255] or None


_MODELS: dict[str, Any] = {}


def _models() -> dict[str, Any]:
    """Pydantic request/response models (created on first use)."""
    if _MODELS:
        return _MODELS
    from pydantic import BaseModel, ConfigDict, Field

    class ImageData(BaseModel):
        """An image as base64 (or a ``data:image/...;base64,`` URL) with an optional name echoed as ``image``."""

        model_config = ConfigDict(extra="forbid")
        data: str = Field(description="base64 bytes or a data: URL (URLs of other schemes are refused)")
        name: str | None = Field(default=None, max_length=255, description="reported as the result's 'image'")

    class ScoreJSONRequestModel(BaseModel):
        """JSON body of ``POST /v1/score`` and ``POST /v1/assess``."""

        model_config = ConfigDict(extra="forbid", title="ScoreJSONRequest")
        images: list[str | ImageData] = Field(description="base64 strings, data: URLs, or {data, name} objects")
        method: str | None = Field(default=None, description="a served method (default: the server's)")
        options: dict[str, Any] = Field(
            default_factory=dict, description="per-request method options (see GET /v1/methods)"
        )

    class ScoreResultModel(BaseModel):
        """``ScoreResult.to_dict()``: one image's quality as judged by one method."""

        image: str
        score: float | None
        higher_is_better: bool
        scale: list[float] | None
        method: str
        model: str | list[str] | None
        probabilities: dict[str, float] | None
        details: dict[str, Any]
        error: str | None
        timings: dict[str, float]

    class ScoreResponse(BaseModel):
        """Results in upload order."""

        results: list[ScoreResultModel]

    class ErrorDetail(BaseModel):
        status: int
        type: str
        message: str

    class ErrorResponse(BaseModel):
        """Every non-2xx answer."""

        error: ErrorDetail

    _MODELS.update(
        ImageData=ImageData,
        ScoreJSONRequest=ScoreJSONRequestModel,
        ScoreResultModel=ScoreResultModel,
        ScoreResponse=ScoreResponse,
        ErrorResponse=ErrorResponse,
    )
    return _MODELS


# ----------------------------------------------------------------------------------------------- ASGI middleware


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 when a request body exceeds ``max_bytes`` (checked on Content-Length and while streaming).

    A body announced too large is drained (up to ``drain_limit`` bytes) before answering, so that ordinary
    clients that send the whole body before reading see the 413 instead of a reset connection.
    """

    def __init__(self, app: Any, max_bytes: int, drain_limit: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_limit = drain_limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = None
        message = f"request body exceeds the limit of {self.max_bytes} bytes"
        if declared is not None and declared > self.max_bytes:
            if declared <= self.drain_limit:
                more = True
                while more:
                    msg = await receive()
                    more = msg.get("type") == "http.request" and msg.get("more_body", False)
            await _send_json(send, 413, error_body(413, message), close=True)
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg.get("type") == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return msg  # type: ignore[no-any-return]

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg.get("type") == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, error_body(413, message), close=True)


async def _send_json(send: Any, status: int, body: dict[str, Any], close: bool = False) -> None:
    payload = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ----------------------------------------------------------------------------------------------- the app


def create_app(service: ScoringService) -> Any:
    """The FastAPI application serving ``service`` (see the module docstring for the endpoints).

    The app's lifespan closes the service on shutdown; callers that run it without lifespan events (e.g.
    :func:`lmmiqa.service.openai_compat.serve_in_thread`) call ``service.close()`` themselves.
    """
    fastapi = require("fastapi", "serve", "the HTTP API")
    import contextlib

    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import lmmiqa

    def _takes_request(fn: Any) -> Any:
        # FastAPI finds the Request parameter by its annotation; with postponed annotations a string naming a
        # local import cannot be resolved, so the class itself is set here.
        fn.__annotations__ = {"request": fastapi.Request, "return": Any}
        return fn

    models = _models()
    cfg = service.config
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        service.batcher.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = fastapi.FastAPI(
        title="lmmiqa",
        version=lmmiqa.__version__,
        description="Image quality assessment with multimodal LLMs. Scores are `ScoreResult.to_dict()`; "
        "the web page is at `/`.",
        lifespan=lifespan,
    )
    app.state.service = service

    def fail(err: RequestError) -> Any:
        metrics.failures.labels(reason=_FAILURE_REASONS.get(err.status, "error")).inc()
        return JSONResponse(status_code=err.status, content=err.body(), headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Any, exc: Any) -> Any:
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(exc.status_code, str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )

    def check_key(request: Any) -> None:
        if cfg.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not given or not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise RequestError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    error_responses = {
        code: {"model": models["ErrorResponse"], "description": RequestError.TYPES[code]}
        for code in (400, 401, 413, 415, 422, 429, 503)
    }
    score_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                      "description": "one or more image files (every file part is an image)"},
                            "method": {"type": "string", "description": "a served method (default: the server's)"},
                            "options": {"type": "string", "description": "per-request method options as JSON"},
                        },
                        "required": ["image"],
                        "additionalProperties": {"type": "string", "description": "a method option"},
                    }
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoreJSONRequest"}},
            },
        }
    }

    async def handle(request: Any, endpoint: str) -> Any:
        try:
            check_key(request)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if endpoint == "assess" and AGENTIC_METHOD not in registry.names("method"):
                raise RequestError(
                    501,
                    f"agentic assessment is not available: the {AGENTIC_METHOD!r} method is not registered in "
                    f"this installation (registered: {', '.join(registry.names('method'))})",
                )
            if ctype == "multipart/form-data":
                method_name, options, uploads = await _multipart_uploads(request, cfg.max_images)
            elif ctype == "application/json":
                raw = await request.body()
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise RequestError(400, f"the body is not valid JSON ({err})") from err
                if not isinstance(body, dict):
                    raise RequestError(422, "the JSON body must be an object with 'images'")
                method_name, options, uploads = _json_uploads(body)
            else:
                raise RequestError(
                    415,
                    f"content type {ctype or '(none)'!r} is not accepted; send multipart/form-data (image files) "
                    "or application/json (base64 images)",
                )
            method = service.resolve_method(method_name, endpoint=endpoint)
            results = await service.score(method, options, uploads)
        except RequestError as err:
            return fail(err)
        return JSONResponse({"results": results})

    ok_response = {200: {"model": models["ScoreResponse"], "description": "results in upload order"}}

    @app.post(
        "/v1/score",
        summary="Score images",
        responses={**ok_response, **error_responses},
        openapi_extra=score_body,
    )
    @_takes_request
    async def score(request):  # type: ignore[no-untyped-def]
        """Score one or more images (multipart upload or JSON with base64 images) with a served method."""
        return await handle(request, "score")

    @app.post(
        "/v1/assess",
        summary="Agentic assessment",
        responses={**ok_response, **error_responses, 501: {"model": models["ErrorResponse"], "description": "no agentic method"}},
        openapi_extra=score_body,
    )
    @_takes_request
    async def assess(request):  # type: ignore[no-untyped-def]
        """Assess images with the agentic method (explanation and tool scores in ``details``); 501 without it."""
        return await handle(request, "assess")

    @app.get("/v1/methods", summary="Served methods and their per-request options")
    @_takes_request
    async def methods(request):  # type: ignore[no-untyped-def]
        try:
            check_key(request)
        except RequestError as err:
            return fail(err)
        return service.methods_info()

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> Any:
        return {
            "status": "ok",
            "method": cfg.method,
            "model": service.default_scorer.model_name,
            "queue_depth": service.batcher.depth,
            "uptime_s": round(time.time() - service.started, 3),
            "auth_required": cfg.api_key is not None,
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    @_takes_request
    async def metrics_endpoint(request):  # type: ignore[no-untyped-def]
        try:
            check_key(request)
        except RequestError as err:
            return fail(err)
        payload, content_type = metrics.render()
        return Response(content=payload, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> Any:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        request_schema = models["ScoreJSONRequest"].model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        components["ScoreJSONRequest"] = request_schema
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    # outermost last: metrics see every answer, including the body limit's 413
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


class _MetricsMiddleware:
    """Counts requests by route and status and records their latency."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg.get("type") == "http.response.start":
                status = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in _KNOWN_ENDPOINTS else ("static" if path.startswith("/static/") else "other")
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)


_KNOWN_ENDPOINTS = frozenset({"/v1/score", "/v1/assess", "/v1/methods", "/healthz", "/metrics", "/", "/openapi.json", "/docs"})


# ----------------------------------------------------------------------------------------------- running


def serve(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Build the service (loading the model) and run it with uvicorn until interrupted.

    Raises:
        ConfigError: a non-loopback ``host`` without an API key, or invalid options.
    """
    check_bind(host, config.api_key)
    uvicorn = require("uvicorn", "serve", "running the server")
    service = ScoringService(config)
    app = create_app(service)
    log.info("serving %s (%s) on http://%s:%d", config.method, service.default_scorer.model_name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
