"""The lmmiqa HTTP API and web page (FastAPI + uvicorn).

Endpoints:

- ``POST /v1/score``: score one or more images. ``multipart/form-data`` (every file part is an image; an
  optional ``method`` field; method options as an ``options`` JSON field and/or as plain fields, e.g.
  ``-F readout=argmax``), or ``application/json`` (``{"images": ["<base64 or data: URL>" | {"data": ..., "name":
  ...}], "method": ..., "options": {...}}``). Answers ``{"results": [ScoreResult.to_dict(), ...]}`` in upload
  order. URLs are never fetched by the server.
- ``POST /v1/assess``: the same for the agentic method (``agentic-iqa``), served only when the server allows
  that method (``--allow-method agentic-iqa``); 404 otherwise, 501 when it is allowed but not installed.
- ``GET /v1/methods``: the served methods, their summaries and the JSON schema of their per-request options.
- ``GET /healthz`` (the model's public name, never its path), ``GET /metrics`` (Prometheus), ``GET
  /openapi.json`` (both need the key when one is set), and the web page at ``GET /`` (static files from
  ``lmmiqa/service/static``). No ``/docs``: Swagger UI loads its scripts from a CDN.

Results, ``/v1/methods`` and ``/healthz`` name the model by its public name (``--model-name``; by default the
model folder's name or the hub id), never by where the server keeps it (:mod:`lmmiqa.service.naming`).

Requests from concurrent clients are micro-batched (:mod:`lmmiqa.service.batching`): uploads are budgeted from
their headers and decoded straight to the model's pixel budget in a thread pool (overlapping with the
backend's work), then queued; one worker thread per lane (scoring, agentic assessment) runs batches of up to
``max_batch`` images through :meth:`lmmiqa.methods.base.Scorer.score_loaded`. A bad upload is rejected before
it reaches a batch, so it never disturbs other requests. JSON bodies are parsed in the decode pool, one image
at a time (:func:`~lmmiqa.service.uploads.json_request`); bodies, decoding and decoded images are charged to
the memory budget (:mod:`lmmiqa.service.budget`). Slow, numerous and greedy clients are bounded by
:mod:`lmmiqa.service.server` (header and write deadlines, connection caps in all and per client, the key
holders' reserve) and :class:`~lmmiqa.service.middleware.BodyTimeoutMiddleware` (body deadline).

Errors are JSON ``{"error": {"status": ..., "type": ..., "message": ...}}`` and name the limit and its flag:
400 (malformed or too deeply nested request, corrupt image, both Content-Length and Transfer-Encoding), 401
(API key, before the body is read), 404 (``/v1/assess`` not enabled), 408 (body too slow), 413 (body, image
pixels, decoded pixels, memory or images per request over the limit), 415 (not multipart/JSON, or a part that
is not an image), 421 (a host name the server does not answer), 422 (unknown method, invalid or too long
options), 429 (queue, pixel or memory budget full; too many requests from one client behind a proxy), 431
(request headers over 64 KiB), 500 (a bug), 501 (no agentic method), 503 (waited the timeout, backend failure on
the batch, shutting down, too many connections), 504 (still being scored after the timeout).

This module imports FastAPI lazily (inside :func:`create_app`); ``import lmmiqa`` never loads it.

The package is layered, each module importing only those above it: :mod:`~lmmiqa.service.config` (options, bind
rule) → :mod:`~lmmiqa.service.errors` → :mod:`~lmmiqa.service.metrics` → :mod:`~lmmiqa.service.schemas` (pydantic
models) → :mod:`~lmmiqa.service.budget` → :mod:`~lmmiqa.service.naming` → :mod:`~lmmiqa.service.uploads` (request
parsing) → :mod:`~lmmiqa.service.scoring` (the service: scorers,
batching, decoding; with :mod:`~lmmiqa.service.batching` and :mod:`~lmmiqa.service.options`) →
:mod:`~lmmiqa.service.middleware` → :mod:`~lmmiqa.service.routes` → :mod:`~lmmiqa.service.server` (uvicorn) → this
module (the app factory and :func:`serve`). The names tests and the CLI use are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lmmiqa.errors import require
from lmmiqa.service.config import AGENTIC_METHOD, ServiceConfig, check_bind, is_loopback
from lmmiqa.service.errors import RequestError, error_body
from lmmiqa.service.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    BodyTimeoutMiddleware,
    MetricsMiddleware,
    RequestGuardMiddleware,
    SecurityHeadersMiddleware,
)
from lmmiqa.service.routes import STATIC_DIR, add_routes
from lmmiqa.service.schemas import api_models
from lmmiqa.service.scoring import ScoringService
from lmmiqa.service.server import check_descriptor_limit, install_log_filter, make_server
from lmmiqa.service.uploads import Upload

__all__ = [
    "AGENTIC_METHOD",
    "STATIC_DIR",
    "RequestError",
    "ScoringService",
    "ServiceConfig",
    "Upload",
    "check_bind",
    "create_app",
    "error_body",
    "is_loopback",
    "serve",
]

#: the service's logger (its flood filter applies to records logged on it, see :mod:`lmmiqa.service.server`)
log = logging.getLogger("lmmiqa.service")


def create_app(service: ScoringService) -> Any:
    """The FastAPI application serving ``service`` (see the module docstring for the endpoints).

    The app's lifespan closes the service on shutdown; callers that run it without lifespan events (e.g.
    :func:`lmmiqa.service.server.serve_in_thread`) call ``service.close()`` themselves.
    """
    fastapi = require("fastapi", "serve", "the HTTP API")
    import contextlib

    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import lmmiqa

    models = api_models()
    cfg = service.config
    metrics = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        service.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = fastapi.FastAPI(
        title="lmmiqa",
        version=lmmiqa.__version__,
        description="Image quality assessment with multimodal LLMs. Scores are `ScoreResult.to_dict()`; "
        "the web page is at `/`.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: off, so the server works offline and serves no
        # third-party code; the OpenAPI document is at /openapi.json (open it in any OpenAPI viewer)
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Any, exc: Any) -> Any:
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(exc.status_code, str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(_request: Any, exc: Exception) -> Any:
        # every answer is JSON, even for a bug (the traceback goes to the log, not to the client)
        log.error("unhandled %s while answering a request", type(exc).__name__, exc_info=exc)
        return JSONResponse(status_code=500, content=error_body(500, "internal server error (see the server log)"))

    add_routes(app, service)

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

    # outermost last: metrics see every answer, including the host check's 421, the key's 401, the body
    # deadline's 408 and the body limit's 413/429; the key is checked before the body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes, budget=service.memory)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=cfg.body_timeout_s)
    app.add_middleware(ApiKeyMiddleware, api_key=cfg.api_key)
    app.add_middleware(
        RequestGuardMiddleware, allowed_hosts=cfg.allowed_hosts, check_host=cfg.api_key is None or bool(cfg.allowed_hosts)
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


# ----------------------------------------------------------------------------------------------- running


def serve(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info") -> None:
    """Build the service (loading the model) and run it with uvicorn until interrupted.

    Raises:
        ConfigError: a non-loopback ``host`` without an API key, or invalid options.
    """
    check_bind(host, config.api_key)
    require("uvicorn", "serve", "running the server")
    install_log_filter()
    check_descriptor_limit(config.max_connections)
    service = ScoringService(config)
    app = create_app(service)
    log.info("serving %s (%s, served as %r) on http://%s:%d", config.method, service.default_scorer.model_name,
             service.public_model, host, port)
    make_server(app, config, host, port, log_level=log_level).run()
