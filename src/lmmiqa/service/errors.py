"""The service's HTTP errors and their JSON shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmmiqa.errors import LmmiqaError


class RequestError(LmmiqaError):
    """A request the service answers with an HTTP error status (the message is shown to the client)."""

    TYPES = {
        400: "bad_request",
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "payload_too_large",
        415: "unsupported_media_type",
        421: "misdirected_request",
        422: "invalid_request",
        429: "queue_full",
        431: "headers_too_large",
        500: "internal_error",
        501: "not_implemented",
        503: "unavailable",
        504: "timeout",
    }

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        message = cap_message(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return self.TYPES.get(self.status, "error")

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message)


#: longest error message sent to a client (messages may quote what the client sent)
MAX_MESSAGE_CHARS = 2000


def cap_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how much was cut (never echoes a megabyte back)."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters not shown)"


def clip(value: Any, limit: int = 80) -> str:
    """``repr`` of a client-supplied value for a message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON error shape of every non-2xx answer."""
    message = cap_message(message)
    return {"error": {"status": status, "type": RequestError.TYPES.get(status, "error"), "message": message}}


#: metrics label of a failed request, by status
FAILURE_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    408: "body_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    421: "misdirected_request",
    422: "invalid_options",
    429: "queue_full",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}

