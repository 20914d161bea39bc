"""The routes of the HTTP API: ``/v1/score``, ``/v1/assess``, ``/v1/methods``, ``/healthz``, ``/metrics`` and the
web page (see :mod:`lmmiqa.service.app` for the endpoints and error statuses)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from lmmiqa.errors import require
from lmmiqa.service.errors import FAILURE_REASONS, RequestError, clip
from lmmiqa.service.middleware import BODY_HOLD_KEY, UNAUTHORIZED_MESSAGE, api_key_ok
from lmmiqa.service.schemas import api_models
from lmmiqa.service.scoring import SHUTTING_DOWN, ScoringService
from lmmiqa.service.uploads import json_request, multipart_uploads, options_limit

STATIC_DIR = Path(__file__).with_name("static")


def add_routes(app: Any, service: ScoringService) -> None:
    """Register the endpoints of ``service`` on the FastAPI ``app``."""
    fastapi = require("fastapi", "serve", "the HTTP API")
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.requests import ClientDisconnect

    def _takes_request(fn: Any) -> Any:
        # FastAPI finds the Request parameter by its annotation; with postponed annotations a string naming a
        # local import cannot be resolved, so the class itself is set here.
        fn.__annotations__ = {"request": fastapi.Request, "return": Any}
        return fn

    models = api_models()
    cfg = service.config
    metrics = service.metrics

    def fail(err: RequestError) -> Any:
        metrics.failures.labels(reason=FAILURE_REASONS.get(err.status, "error")).inc()
        return JSONResponse(status_code=err.status, content=err.body(), headers=err.headers)

    def check_key(request: Any) -> None:
        # ApiKeyMiddleware answers first, before any body is read; this keeps each route safe on its own
        if cfg.api_key is not None and not api_key_ok(request.headers.raw, cfg.api_key):
            raise RequestError(401, UNAUTHORIZED_MESSAGE, headers={"WWW-Authenticate": "Bearer"})

    error_responses = {
        code: {"model": models["ErrorResponse"], "description": RequestError.TYPES[code]}
        for code in (400, 401, 408, 413, 415, 422, 429, 503, 504)
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

    async def read_body(request: Any) -> bytearray:
        """The request body in one buffer (sized from Content-Length when given: no doubling copy)."""
        try:
            declared = int(request.headers.get("content-length", ""))
        except ValueError:
            declared = -1
        if 0 <= declared <= cfg.max_body_bytes:
            buf = bytearray(declared)
            n = 0
            async for chunk in request.stream():
                buf[n : n + len(chunk)] = chunk
                n += len(chunk)
            del buf[n:]
            return buf
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
        return buf

    async def until_disconnect(request: Any) -> None:
        """Return when the client closes the connection (the body was read: only a disconnect can come)."""
        while True:
            msg = await request.receive()
            if msg.get("type") == "http.disconnect":
                return

    async def handle(request: Any, endpoint: str) -> Any:
        try:
            check_key(request)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if endpoint == "assess":
                service.resolve_method(None, endpoint="assess")  # 404/501 before reading the body
            if service.closing.is_set():
                raise RequestError(503, SHUTTING_DOWN, headers={"Retry-After": "5"})
            most = max(cfg.max_images, cfg.max_assess_images)
            max_options = options_limit(cfg.max_query_chars)
            if ctype == "multipart/form-data":
                method_name, options, uploads = await multipart_uploads(request, most, max_options)
            elif ctype == "application/json":
                buf = await read_body(request)
                loop = asyncio.get_running_loop()  # parsed off the event loop: /healthz stays responsive
                method_name, options, uploads = await loop.run_in_executor(
                    service.decode_pool, json_request, buf, most, max_options
                )
                del buf
            else:
                raise RequestError(
                    415,
                    f"content type {clip(ctype or '(none)')} is not accepted; send multipart/form-data (image files) "
                    "or application/json (base64 images)",
                )
            method = service.resolve_method(method_name, endpoint=endpoint)
            gone = threading.Event()
            work = asyncio.ensure_future(
                service.score(method, options, uploads, body=request.scope.get(BODY_HOLD_KEY), gone=gone)
            )
            watch = asyncio.ensure_future(until_disconnect(request))
            try:
                await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                if not work.done():  # the client left (or this request is being cancelled): stop its work
                    gone.set()
                    work.cancel()
            if not work.done() or work.cancelled():
                with contextlib.suppress(BaseException):
                    await work
                metrics.failures.labels(reason="client_disconnect").inc()
                return Response(status_code=499)
            results = work.result()
        except RequestError as err:
            return fail(err)
        except ClientDisconnect:  # the client left while sending its body: nobody to answer, nothing to log
            metrics.failures.labels(reason="client_disconnect").inc()
            return Response(status_code=400)
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
        responses={
            **ok_response,
            **error_responses,
            404: {"model": models["ErrorResponse"], "description": "assessment not enabled on this server"},
            501: {"model": models["ErrorResponse"], "description": "no agentic method installed"},
        },
        openapi_extra=score_body,
    )
    @_takes_request
    async def assess(request):  # type: ignore[no-untyped-def]
        """Assess images with the agentic method (explanation and tool scores in ``details``); 404 unless the
        server was started with ``--allow-method agentic-iqa``."""
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
        model = service.public_model
        return {
            "status": "shutting_down" if service.closing.is_set() else "ok",
            "method": cfg.method,
            "model": ", ".join(model) if isinstance(model, list) else model,
            "queue_depth": service.depth,
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
