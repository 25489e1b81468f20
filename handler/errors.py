"""Error types of the service; each declares its own HTTP status.

Every error a client can see has the JSON shape
``{"code": 400, "type": "InvalidInput", "message": "inputs[3] must be [instruction, sentence], ..."}``.
A subclass that forgets ``status`` cannot be defined (``__init_subclass__``), so no error silently becomes a 500.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of the errors that are answered to the client; ``type`` names it in the JSON body."""

    status: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "status" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must declare its HTTP status (status: ClassVar[int] = ...)")

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

    status: ClassVar[int] = 400


class NotFound(ServiceError):
    """A route after /predictions/<name>/<version>/ that does not exist, or a request naming another model."""

    status: ClassVar[int] = 404


class PayloadTooLarge(ServiceError):
    """More pairs than max_pairs_per_request, a text longer than max_chars_per_text, or a request carrying
    more tokens than one dynamic batch may (max_batch_request_tokens)."""

    status: ClassVar[int] = 413


class InputTooLong(ServiceError):
    """A pair is longer than max_seq_length tokens and the request asked for no truncation."""

    status: ClassVar[int] = 422


class NothingToEmbed(ServiceError):
    """A pair's instruction covers its whole joined text: no token is left to pool (1.0.1 fails too)."""

    status: ClassVar[int] = 422


class InternalError(ServiceError):
    """Anything unexpected; the message carries the request id, the log has the traceback."""

    status: ClassVar[int] = 500


class Overloaded(ServiceError):
    """This dynamic batch already carries its token budget; the request may be retried at once."""

    status: ClassVar[int] = 503


class InsufficientMemory(ServiceError):
    """A single item does not fit in accelerator memory even alone."""

    status: ClassVar[int] = 507


class EngineUnavailable(ServiceError):
    """The device engine shared by the workers (handler/engine.py) is gone or starting; retry."""

    status: ClassVar[int] = 503
