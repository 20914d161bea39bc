"""Options of the scoring service and the bind rule (a non-loopback address needs an API key)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from lmmiqa import registry
from lmmiqa.errors import ConfigError

#: the registered name of the agentic method behind ``POST /v1/assess``
AGENTIC_METHOD = "agentic-iqa"

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
