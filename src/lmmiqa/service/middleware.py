"""ASGI middleware of the HTTP app: request metrics, security headers, the request's framing and host (request
smuggling, oversized heads, DNS rebinding), the API key (checked before any body is read), the body-read deadline
(slow clients get 408) and the request-body size limit and memory charge.

Order, outermost first: :class:`MetricsMiddleware` → :class:`SecurityHeadersMiddleware` →
:class:`RequestGuardMiddleware` → :class:`ApiKeyMiddleware` → :class:`BodyTimeoutMiddleware` →
:class:`BodyLimitMiddleware` → the app.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any

from lmmiqa.service.budget import Budget, Hold, body_charge
from lmmiqa.service.config import FLAGS, MAX_HEAD_BYTES, is_loopback_host, normalize_host
from lmmiqa.service.errors import error_body
from lmmiqa.service.metrics import ServiceMetrics

#: paths that need the API key when one is configured (the page, its static files and /healthz stay public;
#: the OpenAPI document describes the API, so it is the key holders')
PROTECTED_PREFIXES = ("/v1/", "/metrics", "/openapi.json")

#: where :class:`BodyLimitMiddleware` leaves the request body's memory :class:`~lmmiqa.service.budget.Hold` in
#: the ASGI scope (the route releases it once the uploads are decoded)
BODY_HOLD_KEY = "lmmiqa.body_hold"

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


class RequestGuardMiddleware:
    """Refuse, before anything else reads the request: a head (request line and headers) over
    :data:`~lmmiqa.service.config.MAX_HEAD_BYTES` (431), a request with both ``Content-Length`` and
    ``Transfer-Encoding`` (400: behind a proxy that reads the other one, the rest of the body would be taken for a
    second request), and a ``Host:`` the server does not answer (421): without an API key only loopback names and
    ``allowed_hosts``, so that a web page whose name was rebound to 127.0.0.1 cannot read the API.

    Args:
        allowed_hosts: further host names answered (``--allowed-host``).
        check_host: whether to check ``Host:`` at all (off for a server with an API key and no allowed hosts).
    """

    def __init__(self, app: Any, allowed_hosts: Iterable[str] = (), check_host: bool = True) -> None:
        self.app = app
        self.allowed = frozenset(normalize_host(h) for h in allowed_hosts)
        self.check_host = check_host

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """(status, message) when the request is refused, else None."""
        headers = scope.get("headers", [])
        size = len(scope.get("method", "")) + len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + 12
        host = None
        framing = set()
        for k, v in headers:
            size += len(k) + len(v) + 4
            if k == b"host":
                host = v.decode("latin-1")
            elif k in (b"content-length", b"transfer-encoding"):
                framing.add(k)
        if size > MAX_HEAD_BYTES:
            return 431, f"the request's headers are {size} bytes, over the limit of {MAX_HEAD_BYTES}"
        if len(framing) == 2:
            return 400, (
                "a request may not carry both Content-Length and Transfer-Encoding (refused: a proxy reading the "
                "other one would take the rest of the body for another request)"
            )
        if self.check_host and host is not None:
            name = normalize_host(host)
            if not (is_loopback_host(name) or name in self.allowed):
                allowed = ", ".join(sorted(self.allowed)) or "none"
                return 421, (
                    f"this server does not answer for host {host[:100]!r}: it answers loopback names (localhost, "
                    f"127.0.0.1, [::1]) and the names given with {FLAGS['allowed_hosts']} ({allowed})"
                )
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                await _send_json(send, refused[0], error_body(*refused), close=True)
                return
        await self.app(scope, receive, send)


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


class _BodyOverBudget(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 when a request body exceeds ``max_bytes`` (checked on Content-Length and while streaming), and
    charge the body's memory to the server's memory ``budget`` (:func:`~lmmiqa.service.budget.body_charge`):
    429 with Retry-After when it does not fit now, 413 when it never can.

    The charge is taken from the announced Content-Length before any byte is read (chunked bodies: as they
    arrive) and left in the scope under :data:`BODY_HOLD_KEY`; the route releases it once the uploads are
    decoded, and this middleware releases what is left when the answer is sent. A refused body announced at up
    to ``drain_limit`` bytes is drained (read and dropped: it costs no memory) before answering, so that
    ordinary clients that send the whole body before reading see the answer instead of a reset connection.
    """

    def __init__(self, app: Any, max_bytes: int, drain_limit: int = 64 * 1024 * 1024, budget: Budget | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_limit = drain_limit
        self.budget = budget

    async def _refuse(self, receive: Any, send: Any, status: int, message: str, declared: int | None,
                      drained: bool = False) -> None:
        if not drained and (declared is None or declared <= self.drain_limit):
            seen, more = 0, True
            while more and seen <= self.drain_limit:
                msg = await receive()
                seen += len(msg.get("body", b""))
                more = msg.get("type") == "http.request" and msg.get("more_body", False)
        extra = [(b"retry-after", b"1")] if status == 429 else None
        await _send_json(send, status, error_body(status, message), close=True, extra=extra)

    def _over_budget(self, need: int) -> tuple[int, str]:
        assert self.budget is not None
        flag = FLAGS["max_memory_bytes"]
        if need > self.budget.capacity(need):
            return 413, (f"reading and parsing this body takes {need >> 20} MiB, over the "
                         f"{self.budget.capacity(need) >> 20} MiB of the server's memory budget a request may take "
                         f"({flag} {self.budget.limit >> 20}); send a smaller body (multipart costs least)")
        return 429, (f"the server holds {self.budget.used >> 20} MiB of request memory in flight; this body needs "
                     f"{need >> 20} MiB more, over the budget of {self.budget.limit >> 20} MiB ({flag}); retry later")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        ctype = ""
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = None
            elif k == b"content-type":
                ctype = v.decode("latin-1").split(";")[0].strip().lower()
        message = f"request body exceeds the limit of {self.max_bytes} bytes ({FLAGS['max_body_bytes']})"
        if declared is not None and declared > self.max_bytes:
            await self._refuse(receive, send, 413, message, declared)
            return
        hold = None
        if self.budget is not None:
            need = body_charge(ctype, declared or 0)
            hold = Hold.take(self.budget, need)
            if hold is None:
                await self._refuse(receive, send, *self._over_budget(need), declared)
                return
            scope[BODY_HOLD_KEY] = hold
        factor = body_charge(ctype, 1) - body_charge(ctype, 0)
        received = 0
        started = False
        finished = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, finished
            msg = await receive()
            if msg.get("type") == "http.request":
                n = len(msg.get("body", b""))
                received += n
                finished = not msg.get("more_body", False)
                if received > self.max_bytes:
                    raise _BodyTooLarge
                if hold is not None and declared is None and not hold.grow(factor * n):
                    raise _BodyOverBudget
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
        except _BodyOverBudget:
            if not started:
                await self._refuse(receive, send, *self._over_budget(factor * received), declared, drained=finished)
        finally:
            if hold is not None:
                hold.release()


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
