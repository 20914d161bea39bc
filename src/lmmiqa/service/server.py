"""Running the app with uvicorn, hardened against slow and numerous clients.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the size of a request head
(``h11_max_incomplete_event_size``) but not the time a client may take to send its headers, nor the number of
open connections (``limit_concurrency`` answers 503 to *requests* over the limit, while a client that never
finishes its headers keeps its connection and descriptor). :class:`GuardedH11Protocol` adds both:

- a header deadline: a connection must deliver complete request headers within ``header_timeout_s`` of its
  first byte (or of connecting, or of the previous response), else it is answered 408 and closed;
- a connection cap: a connection over ``max_connections`` is answered 503 and closed at once, so descriptors
  stay bounded however many clients connect;
- after an answer sent before the client finished its body (401, 413, 408, ...), the connection is closed
  instead of silently reading the rest.

The body deadline is :class:`lmmiqa.service.middleware.BodyTimeoutMiddleware`. :class:`RateLimitFilter` keeps
a flood of identical log records (``Too many open files``, refused connections) to a few lines per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from lmmiqa.errors import require
from lmmiqa.service.config import FLAGS, ServiceConfig
from lmmiqa.service.errors import error_body
from lmmiqa.service.openai_compat import free_port, run_server_thread

log = logging.getLogger("lmmiqa.service")

#: loggers a flood of identical records can come from (asyncio's accept loop, uvicorn, this service)
FLOOD_LOGGERS = ("asyncio", "uvicorn.error", "lmmiqa.service", "lmmiqa.service.batching")


class RateLimitFilter(logging.Filter):
    """Let through at most ``burst`` records with the same (logger, level, message template) per ``window_s``;
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
        key = (record.name, record.levelno, str(record.msg)[:200])
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


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer in the service's JSON error shape, closing the connection (written before
    the app sees a request)."""
    import json

    payload = json.dumps(error_body(status, message)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + payload


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """A uvicorn h11 protocol class with a header deadline and a connection cap (see the module docstring)."""
    require("uvicorn", "serve", "running the server")
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            over = len(self.server_state.connections) >= max_connections
            super().connection_made(transport)
            if over:
                log.warning("refused a connection: %d open, the limit is %d (%s)",
                            len(self.connections) - 1, max_connections, FLAGS["max_connections"])
                self.transport.write(_raw_response(
                    503, "Service Unavailable",
                    f"too many open connections (the limit is {max_connections}, {FLAGS['max_connections']}); "
                    "retry later",
                ))
                self.transport.close()
                return
            self._arm_header_timer()

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

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


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
        http=guarded_protocol(config.header_timeout_s, config.max_connections),
        timeout_keep_alive=max(1, round(config.keep_alive_s)),
        h11_max_incomplete_event_size=64 * 1024,
        backlog=min(2048, max(128, 4 * config.max_connections)),
        timeout_graceful_shutdown=5,
    )


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
    uvicorn = require("uvicorn", "serve", "running the server")
    install_log_filter()
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, config, host, port, log_level="warning", lifespan="off"))
    with run_server_thread(server, host, port, timeout) as url:
        yield url
