"""ASGI middleware of the HTTP app: the request-body limit and request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from lmmiqa.service.errors import error_body
from lmmiqa.service.metrics import ServiceMetrics


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


class MetricsMiddleware:
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
            endpoint = path if path in KNOWN_ENDPOINTS else ("static" if path.startswith("/static/") else "other")
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)


KNOWN_ENDPOINTS = frozenset({"/v1/score", "/v1/assess", "/v1/methods", "/healthz", "/metrics", "/", "/openapi.json", "/docs"})
