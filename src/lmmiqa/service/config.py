"""Options of the scoring service and the bind rule (a non-loopback address needs an API key)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from lmmiqa import registry
from lmmiqa.errors import ConfigError

#: the registered name of the agentic method behind ``POST /v1/assess``
AGENTIC_METHOD = "agentic-iqa"

#: the ``lmmiqa serve`` flag that sets each limit (error messages name it, so a client or operator knows what to raise)
FLAGS = {
    "max_batch": "--max-batch",
    "max_queue": "--max-queue",
    "max_body_bytes": "--max-body-mb",
    "max_images": "--max-images",
    "max_assess_images": "--max-assess-images",
    "max_image_pixels": "--max-image-pixels",
    "max_request_pixels": "--max-request-pixels",
    "max_queue_pixels": "--max-queue-pixels",
    "decode_max_pixels": "--decode-max-pixels",
    "max_query_chars": "--max-query-chars",
    "request_timeout_s": "--timeout",
    "assess_timeout_s": "--assess-timeout",
    "body_timeout_s": "--body-timeout",
    "header_timeout_s": "--header-timeout",
    "keep_alive_s": "--keep-alive",
    "max_connections": "--max-connections",
    "max_client_connections": "--max-client-connections",
    "write_timeout_s": "--write-timeout",
    "max_memory_bytes": "--max-memory-mb",
    "shutdown_grace_s": "--shutdown-grace",
    "allowed_hosts": "--allowed-host",
    "trusted_proxies": "--trusted-proxy",
    "model_name": "--model-name",
}

#: the limit on a request's head (request line and headers)
MAX_HEAD_BYTES = 64 * 1024


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
            ``{"max_new_tokens": 128, "tools": "niqe,brisque"}``), on top of the model-level ones. ``/v1/assess``
            is served only when the agentic method is the default or an allowed method.
        max_batch: most images per backend batch.
        max_wait_ms: longest wait of the oldest pending image for its batch to fill.
        max_queue: most images pending; beyond it requests get 429.
        max_body_bytes: largest request body; beyond it 413.
        max_images: most images per request; beyond it 413.
        max_assess_images: most images per request of the agentic method (``/v1/assess``); beyond it 413.
        max_image_pixels: largest width*height of one image (read from its header); beyond it 413.
        max_request_pixels: most decoded pixels (after the reduction below) of all images of one request;
            beyond it 413.
        max_queue_pixels: most decoded pixels held by all requests in flight (decoding, queued, scoring);
            a request that would exceed it gets 429 (413 when it alone exceeds it).
        decode_max_pixels: decode large images straight to about this many pixels (JPEG ``draft``, integer
            ``reduce`` for other formats; never below it). None: the model's own pixel budget, read from its
            processor (no reduction when it has none); 0: always decode at full resolution.
        max_query_chars: longest string option of a request (the agentic ``query``); beyond it 422.
        request_timeout_s: longest time a scoring request waits for its results; beyond it 503 (still queued)
            or 504 (still being scored).
        assess_timeout_s: the same for the agentic method (long generations).
        body_timeout_s: longest time a client may take to send a request body, from the end of its headers;
            beyond it 408 and the connection is closed (slow clients cannot hold the server).
        header_timeout_s: longest time a client may take to send the headers of a request once it sent its
            first byte (or connected); beyond it the connection is closed.
        keep_alive_s: how long an idle keep-alive connection stays open.
        max_connections: most open connections; more are answered 503 and closed at once. On a server with an
            API key, a quarter of them (:attr:`reserved_connections`) is kept for clients that send the key: a
            connection accepted into that reserve is answered 503 and closed unless its first request carries it.
        max_client_connections: most open connections from one client address (beyond it 503 and closed at
            once); behind a ``trusted_proxies`` proxy, most requests in progress per forwarded client address
            (beyond it 429).
        write_timeout_s: longest time an answer may wait for the client to read it (the server's send buffer
            stays full); beyond it the connection is dropped (a client that pipelines requests and never reads
            cannot hold a connection).
        max_memory_bytes: request memory the server holds at most (bodies being read and parsed, images being
            decoded, decoded images; see :mod:`lmmiqa.service.budget`); a request that does not fit now gets 429,
            one that can never fit 413.
        shutdown_grace_s: on shutdown, how long requests in flight may still finish; then running decodes and
            generations are stopped and their requests answered 503.
        allowed_hosts: host names (``Host:`` header, without the port) the server answers besides loopback ones
            (``localhost``, ``127.0.0.1``, ``[::1]``). Without an API key only these are answered (421 otherwise:
            a web page that rebinds its name to 127.0.0.1 cannot read the API); with a key, any host unless
            this is set.
        trusted_proxies: addresses or networks of reverse proxies whose ``X-Forwarded-For`` names the client
            (per-client limits and the log then use the forwarded address; the proxy itself is not limited per
            address).
        model_name: the model's public name in results, ``/v1/methods`` and ``/healthz`` (an ensemble: one per
            model, separated by commas); None: the model folder's name or the hub id, never a local path.
        decode_workers: threads decoding uploads (overlaps decoding with backend work).
        api_key: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>`` or ``X-API-Key``
            (checked before the body is read).
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
    max_assess_images: int = 4
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 200_000_000
    max_queue_pixels: int = 800_000_000
    decode_max_pixels: int | None = None
    max_query_chars: int = 1000
    request_timeout_s: float = 60.0
    assess_timeout_s: float = 300.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 64
    max_client_connections: int = 16
    write_timeout_s: float = 30.0
    max_memory_bytes: int = 1024 * 1024 * 1024
    shutdown_grace_s: float = 5.0
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    model_name: str | None = None
    decode_workers: int = 4
    api_key: str | None = field(default=None, repr=False)
    max_scorers: int = 16

    def __post_init__(self) -> None:
        self.method = registry.canonical("method", self.method)
        self.allow_methods = tuple(dict.fromkeys(registry.canonical("method", m) for m in self.allow_methods))
        for name in (
            "max_batch", "max_queue", "max_body_bytes", "max_images", "max_assess_images", "max_image_pixels",
            "max_request_pixels", "max_queue_pixels", "max_query_chars", "max_connections", "max_scorers",
            "max_client_connections", "max_memory_bytes",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} ({FLAGS.get(name, name)}) must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "assess_timeout_s", "body_timeout_s", "header_timeout_s", "keep_alive_s",
                     "write_timeout_s", "shutdown_grace_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} ({FLAGS[name]}) must be > 0 seconds, got {getattr(self, name)}")
        if self.decode_max_pixels is not None and self.decode_max_pixels < 0:
            raise ConfigError(f"decode_max_pixels (--decode-max-pixels) must be >= 0, got {self.decode_max_pixels}")
        if self.max_request_pixels > self.max_queue_pixels:
            raise ConfigError(
                f"max_request_pixels (--max-request-pixels {self.max_request_pixels}) cannot exceed "
                f"max_queue_pixels (--max-queue-pixels {self.max_queue_pixels})"
            )
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.decode_workers < 1:
            raise ConfigError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.max_images > self.max_queue:
            raise ConfigError(f"max_images ({self.max_images}) cannot exceed max_queue ({self.max_queue})")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty")
        self.allowed_hosts = tuple(dict.fromkeys(normalize_host(h) for h in self.allowed_hosts))
        for host in self.allowed_hosts:
            if not host or any(c in host for c in "/ @?#"):
                raise ConfigError(f"--allowed-host {host!r} is not a host name (give the name only, e.g. iqa.example.org)")
        networks = []
        for proxy in self.trusted_proxies:
            try:
                networks.append(str(ipaddress.ip_network(proxy.strip(), strict=False)))
            except ValueError as err:
                raise ConfigError(
                    f"--trusted-proxy {proxy!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)"
                ) from err
        self.trusted_proxies = tuple(dict.fromkeys(networks))
        if self.model_name is not None:
            self.model_name = self.model_name.strip()
            if not self.model_name or len(self.model_name) > 200 or not self.model_name.isprintable():
                raise ConfigError(f"--model-name must be a short printable name, got {self.model_name!r}")
        if self.assess_options and not self.assess_enabled:
            raise ConfigError(
                f"assess options given but POST /v1/assess is not enabled: serve the agentic method with "
                f"--allow-method {AGENTIC_METHOD} (or --method {AGENTIC_METHOD})"
            )

    @property
    def assess_enabled(self) -> bool:
        """True when the agentic method behind ``POST /v1/assess`` is served (default or allowed)."""
        return AGENTIC_METHOD in self.served_methods

    @property
    def reserved_connections(self) -> int:
        """Connections kept for clients that send the API key (0 without a key)."""
        return max(1, self.max_connections // 4) if self.api_key else 0

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


def normalize_host(host: str) -> str:
    """A ``Host:`` header's name: lower case, without the port and a final dot; IPv6 keeps its brackets."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def is_loopback_host(host: str) -> bool:
    """True for a ``Host:`` name that always means this machine: ``localhost`` (and ``*.localhost``, RFC 6761)
    and loopback addresses."""
    h = normalize_host(host)
    return h == "localhost" or h.endswith(".localhost") or is_loopback(h)


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
