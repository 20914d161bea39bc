"""ASGI middleware of the HTTP app: request metrics, security headers, the API key (checked before any body is
read), the body-read deadline (slow clients get 408) and the request-body size limit.

Order, outermost first: :class:`MetricsMiddleware` → :class:`SecurityHeadersMiddleware` →
:class:`ApiKeyMiddleware` → :class:`BodyTimeoutMiddleware` → :class:`BodyLimitMiddleware` → the app.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

from lmmiqa.service.config import FLAGS
from lmmiqa.service.errors import error_body
from lmmiqa.service.metrics import ServiceMetrics

#: paths that need the API key when one is configured (the page, its static files and /healthz stay public)
PROTECTED_PREFIXES = ("/v1/", "/metrics")

#: headers added to every answer; the page's policy allows only its own scripts, styles and API calls, and
#: images from the files the user picked (blob:) or inline data
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
)


def api_key_ok(headers: Iterable[tuple[bytes, bytes]], api_key: str) -> bool:
    """True when the request's ``Authorization: Bearer`` or ``X-API-Key`` header holds ``api_key``
    (constant-time comparison)."""
    auth = given = b""
    for k, v in headers:
        if k == b"authorization":
            auth = v
        elif k == b"x-api-key":
            given = v
    if auth.lower().startswith(b"bearer "):
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given, api_key.encode())


#: the answer to a request without the right key
UNAUTHORIZED_MESSAGE = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


class ApiKeyMiddleware:
    """Answer 401 to a protected path without the right key before the body is read (and close the
    connection, so an unauthenticated client cannot make the server read its upload)."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            self.api_key is None
            or scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or not str(scope.get("path", "")).startswith(PROTECTED_PREFIXES)
            or api_key_ok(scope.get("headers", []), self.api_key)
        ):
            await self.app(scope, receive, send)
            return
        await _send_json(
            send, 401, error_body(401, UNAUTHORIZED_MESSAGE), close=True, extra=[(b"www-authenticate", b"Bearer")]
        )


class SecurityHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` to every answer (those the app set itself are kept)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(msg: dict[str, Any]) -> None:
            if msg.get("type") == "http.response.start":
                present = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in present)]}
            await send(msg)

        await self.app(scope, receive, with_headers)


class _BodyTimeout(Exception):
    pass


class BodyTimeoutMiddleware:
    """Answer 408 and close the connection when a client takes longer than ``timeout_s`` (from the end of
    its headers) to send its request body: a client trickling one byte per second cannot hold a connection,
    a decode thread or memory for longer than that."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False
        started = False

        async def timed_receive() -> dict[str, Any]:
            nonlocal body_done
            if body_done:
                return await receive()  # type: ignore[no-any-return]  # (waiting for a disconnect)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _BodyTimeout
            try:
                msg = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError as err:
                raise _BodyTimeout from err
            if msg.get("type") != "http.request" or not msg.get("more_body", False):
                body_done = True
            return msg  # type: ignore[no-any-return]

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg.get("type") == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimeout:
            if not started:
                message = (
                    f"the request body was not received within {self.timeout_s:g} s "
                    f"({FLAGS['body_timeout_s']}); the connection is closed"
                )
                await _send_json(send, 408, error_body(408, message), close=True)


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
        message = f"request body exceeds the limit of {self.max_bytes} bytes ({FLAGS['max_body_bytes']})"
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


async def _send_json(
    send: Any, status: int, body: dict[str, Any], close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    headers.extend(extra or [])
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


KNOWN_ENDPOINTS = frozenset({"/v1/score", "/v1/assess", "/v1/methods", "/healthz", "/metrics", "/", "/openapi.json"})
