"""Running the app with uvicorn, hardened against slow, numerous and greedy clients.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the size of an incomplete request head
(``h11_max_incomplete_event_size``) but not the time a client may take to send its headers or to read its
answers, nor the number of open connections (``limit_concurrency`` answers 503 to *requests* over the limit,
while a client that never finishes its headers keeps its connection and descriptor). :class:`GuardedH11Protocol`
adds, per connection:

- a header deadline: a connection must deliver complete request headers within ``header_timeout_s`` of its
  first byte (or of connecting, or of the previous response), else it is answered 408 and closed;
- a write deadline: an answer the client does not read for ``write_timeout_s`` (the send buffer stays full, e.g.
  a client that pipelines requests and never reads) drops the connection;
- a connection cap: a connection over ``max_connections`` is answered 503 and closed at once, so descriptors
  stay bounded however many clients connect; and a cap per client address (``max_client_connections``; behind a
  ``trusted_proxies`` proxy, on requests in progress per forwarded address, 429);
- on a server with an API key, the last quarter of the connections is kept for clients that send the key: a
  connection accepted into it must carry the key on its first request (else 503 and closed), so clients
  without the key (public paths: the page, its files, ``/healthz``) cannot lock key holders out;
- every answer the protocol writes itself (connection refused, 408, a malformed request's 400, an exception or a
  shutdown that cut a request short) is the service's JSON error with the security headers;
- after an answer sent before the client finished its body (401, 413, 408, ...), the connection is closed
  instead of silently reading the rest.

:class:`LmmiqaServer` shuts down in order: it stops accepting, answers new requests 503, lets the requests in
flight finish for ``shutdown_grace_s``, then stops the running decodes and generations (their requests are
answered 503) and exits. The body deadline is :class:`lmmiqa.service.middleware.BodyTimeoutMiddleware`.
:class:`RateLimitFilter` keeps a flood of identical log records (``Too many open files``, refused connections,
the multipart parser's warnings) to a few lines per minute.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from lmmiqa.errors import require
from lmmiqa.service.config import FLAGS, MAX_HEAD_BYTES, ServiceConfig
from lmmiqa.service.errors import error_body
from lmmiqa.service.middleware import SECURITY_HEADERS, api_key_ok
from lmmiqa.service.openai_compat import free_port, run_server_thread

log = logging.getLogger("lmmiqa.service")

#: loggers a flood of identical records can come from (asyncio's accept loop, uvicorn, this service, the multipart
#: parser); a logger's filter sees only the records logged on that very logger, so each is named
FLOOD_LOGGERS = (
    "asyncio", "uvicorn.error", "lmmiqa.service", "lmmiqa.service.batching", "python_multipart.multipart",
)


_DIGITS = re.compile(r"\d+")


class RateLimitFilter(logging.Filter):
    """Let through at most ``burst`` records with the same (logger, level, message template, its numbers masked)
    per ``window_s``;
    when a window in which records were dropped ends, the next one says how many were suppressed.

    Thread-safe; attach one instance to each logger of :data:`FLOOD_LOGGERS` (see :func:`install_log_filter`).
    """

    def __init__(self, burst: int = 5, window_s: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, count, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        # numbers are masked: a library that formats an offset or a count into its message (python_multipart's
        # "Did not find CR at end of boundary (57)") floods with messages that differ only there
        key = (record.name, record.levelno, _DIGITS.sub("#", str(record.msg)[:200]))
        now = self._clock()
        with self._lock:
            slot = self._seen.get(key)
            if slot is None or now - slot[0] >= self.window_s:
                suppressed = int(slot[2]) if slot is not None else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 1000:  # bounded memory: forget the oldest keys
                    for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                        del self._seen[old]
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} similar message(s) suppressed in the last {self.window_s:g} s]"
                return True
            slot[1] += 1
            if slot[1] <= self.burst:
                return True
            slot[2] += 1
            return False


_FILTER_LOCK = threading.Lock()


def install_log_filter(burst: int = 5, window_s: float = 60.0) -> RateLimitFilter:
    """Attach one :class:`RateLimitFilter` to every logger of :data:`FLOOD_LOGGERS` (idempotent)."""
    with _FILTER_LOCK:
        for name in FLOOD_LOGGERS:
            for f in logging.getLogger(name).filters:
                if isinstance(f, RateLimitFilter):
                    return f
        flt = RateLimitFilter(burst, window_s)
        for name in FLOOD_LOGGERS:
            logging.getLogger(name).addFilter(flt)
        return flt


def _json_error(status: int, message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(body, headers) of the service's JSON error with the security headers, closing the connection."""
    import json

    payload = json.dumps(error_body(status, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
    ]
    return payload, headers


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer in the service's JSON error shape, closing the connection (written before
    the app sees a request)."""
    payload, headers = _json_error(status, message)
    head = f"HTTP/1.1 {status} {reason}\r\n".encode() + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return head + b"\r\n" + payload


class ConnectionGuard:
    """What the connections of one server share: open connections per client address, connections that have
    not shown the API key, requests in progress per forwarded client (used on the event loop's thread only)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.by_address: collections.Counter[str] = collections.Counter()
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.anonymous = 0
        #: connections accepted and not closed (those answered 503 as they arrive are not counted)
        self.accepted = 0
        self.trusted = [ipaddress.ip_network(n) for n in config.trusted_proxies]

    def is_trusted(self, address: str | None) -> bool:
        """True when ``address`` is one of the ``trusted_proxies``."""
        if not address or not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def forwarded_client(self, peer: str, headers: list[tuple[bytes, bytes]]) -> str:
        """The client behind trusted proxies: the last ``X-Forwarded-For`` address that is not a trusted proxy
        (``peer`` when there is none)."""
        chain: list[str] = []
        for k, v in headers:
            if k == b"x-forwarded-for":
                chain += [part.strip() for part in v.decode("latin-1").split(",") if part.strip()]
        for address in reversed(chain):
            if not self.is_trusted(address):
                return address[:64]
        return peer


def guarded_protocol(config: ServiceConfig) -> type:
    """A uvicorn h11 protocol class enforcing ``config``'s connection limits (see the module docstring)."""
    require("uvicorn", "serve", "running the server")
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    guard = ConnectionGuard(config)
    header_timeout_s = config.header_timeout_s
    write_timeout_s = config.write_timeout_s
    max_connections = config.max_connections
    per_client = config.max_client_connections
    watch_every = min(1.0, write_timeout_s / 4)

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._inner_app = self.app
            self.app = self._guarded_app
            self._accepted = False  # counted in guard.accepted
            self._address: str | None = None  # counted in guard.by_address
            self._anonymous = False  # counted in guard.anonymous
            self._probation = False  # accepted into the key holders' reserve
            self._stalled_since: float | None = None

        # ----------------------------------------------------------------- connections
        def _refuse(self, reason: str, message: str, flag: str) -> None:
            log.warning("refused a connection: %s (%s)", reason, flag)
            self.transport.write(_raw_response(503, "Service Unavailable", message))
            self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            over = guard.accepted >= max_connections
            super().connection_made(transport)
            address = self.client[0] if self.client else None
            if over:
                self._refuse(
                    f"{guard.accepted} open, the limit is {max_connections}",
                    f"too many open connections (the limit is {max_connections}, {FLAGS['max_connections']}); "
                    "retry later",
                    FLAGS["max_connections"],
                )
                return
            if address is not None and not guard.is_trusted(address):
                if guard.by_address[address] >= per_client:
                    self._refuse(
                        f"{guard.by_address[address]} open from one address, the limit is {per_client}",
                        f"too many open connections from your address (the limit is {per_client} per client, "
                        f"{FLAGS['max_client_connections']}); retry later",
                        FLAGS["max_client_connections"],
                    )
                    return
                guard.by_address[address] += 1
                self._address = address
            guard.accepted += 1
            self._accepted = True
            if config.api_key:
                guard.anonymous += 1
                self._anonymous = True
                self._probation = guard.anonymous > max_connections - config.reserved_connections
            self._arm_header_timer()
            self._write_timer = self.loop.call_later(watch_every, self._watch_writes)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            self._release_slot()
            super().connection_lost(exc)

        def _release_slot(self) -> None:
            """Give back what this connection counts in (once): its slot, its address's, the key reserve's."""
            if self._accepted:
                self._accepted = False
                guard.accepted -= 1
            if self._address is not None:
                guard.by_address[self._address] -= 1
                if guard.by_address[self._address] <= 0:
                    del guard.by_address[self._address]
                self._address = None
            self._authenticated()

        def _authenticated(self) -> None:
            if self._anonymous:
                self._anonymous = False
                guard.anonymous -= 1

        # ----------------------------------------------------------------- deadlines
        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            log.warning("closed a connection that sent no complete request headers within %g s (%s)",
                        header_timeout_s, FLAGS["header_timeout_s"])
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_raw_response(
                    408, "Request Timeout",
                    f"request headers not received within {header_timeout_s:g} s ({FLAGS['header_timeout_s']})",
                ))
            self.transport.close()

        def _watch_writes(self) -> None:
            """Drop the connection when what it was sent has waited ``write_timeout_s`` to be read."""
            self._write_timer = None
            now = self.loop.time()
            if self.transport.get_write_buffer_size() > 0 or self.flow.write_paused:
                if self._stalled_since is None:
                    self._stalled_since = now
                elif now - self._stalled_since >= write_timeout_s:
                    log.warning("dropped a connection whose client did not read its answers for %g s (%s)",
                                write_timeout_s, FLAGS["write_timeout_s"])
                    sock = self.transport.get_extra_info("socket")
                    if sock is not None:  # reset, not close: the kernel would keep the unread answers for minutes
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.transport.abort()
                    return
            else:
                self._stalled_since = None
            self._write_timer = self.loop.call_later(watch_every, self._watch_writes)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm_header_timer()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing() and self.conn.their_state not in (h11.DONE, h11.IDLE):
                # answered before the client finished its body (401, 413, 408, ...): do not read the rest
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            """A malformed request (h11 refused it): the service's JSON 400, and close."""
            payload, headers = _json_error(400, f"malformed HTTP request ({msg.rstrip('.')})")
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
                self.transport.write(self.conn.send(h11.Data(data=payload)))
                self.transport.write(self.conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:  # h11 cannot answer in its state: write the answer raw
                self.transport.write(_raw_response(400, "Bad Request", f"malformed HTTP request ({msg.rstrip('.')})"))
            self.transport.close()

        # ----------------------------------------------------------------- requests
        async def _guarded_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            started = False

            async def tracking_send(msg: dict[str, Any]) -> None:
                nonlocal started
                if msg.get("type") == "http.response.start":
                    started = True
                await send(msg)

            if config.api_key and self._anonymous:
                if api_key_ok(scope.get("headers", []), config.api_key):
                    self._authenticated()
                elif self._probation:
                    log.warning("refused a request without the API key on a connection of the key holders' reserve")
                    self._release_slot()  # closing: its slot is free for a key holder now
                    await _send_error(send, 503, (
                        f"the server keeps its last {config.reserved_connections} connections for clients that send "
                        f"the API key ({FLAGS['max_connections']} {max_connections}); retry later"
                    ), retry_after="5")
                    return
            forwarded = None
            if guard.trusted and self.client and guard.is_trusted(self.client[0]):
                forwarded = guard.forwarded_client(self.client[0], scope.get("headers", []))
                if guard.forwarded[forwarded] >= per_client:
                    await _send_error(send, 429, (
                        f"too many requests in progress from your address (the limit is {per_client} per client, "
                        f"{FLAGS['max_client_connections']}); retry later"
                    ), retry_after="1")
                    return
                guard.forwarded[forwarded] += 1
            try:
                await self._inner_app(scope, receive, tracking_send)
            except asyncio.CancelledError:  # uvicorn's shutdown cancels the requests that outlived its grace
                if started:
                    raise
                await _send_error(send, 503, "the server is shutting down; retry later", retry_after="5")
            except Exception:
                if started:
                    raise
                log.exception("unhandled error while answering a request")
                await _send_error(send, 500, "internal server error (see the server log)")
            finally:
                if forwarded is not None:
                    guard.forwarded[forwarded] -= 1
                    if guard.forwarded[forwarded] <= 0:
                        del guard.forwarded[forwarded]

    return GuardedH11Protocol


async def _send_error(send: Any, status: int, message: str, retry_after: str | None = None) -> None:
    payload, headers = _json_error(status, message)
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def server_class() -> type:
    """:class:`LmmiqaServer`: uvicorn's server with the shutdown order of the module docstring."""
    uvicorn = require("uvicorn", "serve", "running the server")

    class LmmiqaServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        def __init__(self, config: Any, service: Any = None, grace_s: float = 5.0) -> None:
            super().__init__(config)
            self.service = service
            self.grace_s = grace_s

        async def shutdown(self, sockets: Any = None) -> None:
            if self.service is not None:
                for server in self.servers:
                    server.close()
                self.service.begin_shutdown()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.grace_s
                while self.server_state.tasks and loop.time() < deadline and not self.force_exit:
                    await asyncio.sleep(0.05)
                if self.server_state.tasks:
                    log.warning("shutting down: %d request(s) still running after %g s (%s) are stopped and answered 503",
                                len(self.server_state.tasks), self.grace_s, FLAGS["shutdown_grace_s"])
                    self.service.abort()
                    deadline = loop.time() + 2.0
                    while self.server_state.tasks and loop.time() < deadline and not self.force_exit:
                        await asyncio.sleep(0.05)
            await super().shutdown(sockets)

    return LmmiqaServer


def uvicorn_config(app: Any, config: ServiceConfig, host: str, port: int, *, log_level: str = "info",
                   lifespan: str = "on") -> Any:
    """The uvicorn configuration of a hardened server for ``config``'s limits."""
    uvicorn = require("uvicorn", "serve", "running the server")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan=lifespan,
        http=guarded_protocol(config),
        timeout_keep_alive=max(1, round(config.keep_alive_s)),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        backlog=min(2048, max(128, 4 * config.max_connections)),
        # LmmiqaServer waited shutdown_grace_s and stopped the work already: what is left only has to answer
        timeout_graceful_shutdown=1,
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies) or None,
    )


def make_server(app: Any, config: ServiceConfig, host: str, port: int, *, log_level: str = "info",
                lifespan: str = "on") -> Any:
    """A :class:`LmmiqaServer` for ``app`` (its ``state.service`` is stopped in order at shutdown)."""
    service = getattr(getattr(app, "state", None), "service", None)
    return server_class()(uvicorn_config(app, config, host, port, log_level=log_level, lifespan=lifespan),
                          service=service, grace_s=config.shutdown_grace_s)


def check_descriptor_limit(max_connections: int) -> None:
    """Warn when ``max_connections`` leaves too few file descriptors for the model, the logs and the decoders."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and max_connections + 128 > soft:
        log.warning(
            "%s %d is close to the open-files limit (ulimit -n %d): lower it or raise the limit", FLAGS["max_connections"],
            max_connections, soft,
        )


@contextlib.contextmanager
def serve_in_thread(app: Any, config: ServiceConfig, host: str = "127.0.0.1", port: int | None = None,
                    timeout: float = 30.0) -> Iterator[str]:
    """Run the hardened server for ``app`` in a background thread (tests, benchmarks, embedding); yields the
    base URL. Lifespan events are off: the caller closes the service."""
    install_log_filter()
    port = port or free_port(host)
    server = make_server(app, config, host, port, log_level="warning", lifespan="off")
    with run_server_thread(server, host, port, timeout) as url:
        yield url
