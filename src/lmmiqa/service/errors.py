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
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "invalid_request",
        429: "queue_full",
        501: "not_implemented",
        503: "unavailable",
    }

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return self.TYPES.get(self.status, "error")

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON error shape of every non-2xx answer."""
    return {"error": {"status": status, "type": RequestError.TYPES.get(status, "error"), "message": message}}


#: metrics label of a failed request, by status
FAILURE_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_options",
    429: "queue_full",
    501: "not_implemented",
    503: "unavailable",
}

