"""Error types of the service, and the ONE table that maps each to an HTTP status.

Every error a client can see has the JSON shape
``{"code": 400, "type": "InvalidInput", "message": "inputs[3] must be [instruction, sentence], ..."}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of the errors that are answered to the client; ``type`` names it in the JSON body."""

    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_body(self) -> dict[str, Any]:
        return {"code": self.status, "type": self.type, "message": self.message}


class InvalidInput(ServiceError):
    """Malformed JSON, wrong types or shapes, empty input, unknown fields."""


class PayloadTooLarge(ServiceError):
    """More pairs than max_pairs_per_request, or a text longer than max_chars_per_text."""


class InputTooLong(ServiceError):
    """A pair is longer than max_seq_length tokens and the request asked for no truncation."""


class InsufficientMemory(ServiceError):
    """A single item does not fit in accelerator memory even alone."""


class InternalError(ServiceError):
    """Anything unexpected; the message carries the request id, the log has the traceback."""


# The one place where error types meet HTTP status codes (documented in README "Errors").
HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    InputTooLong: 422,
    InternalError: 500,
    InsufficientMemory: 507,
}
for _error_type, _status in HTTP_STATUS.items():
    _error_type.status = _status
