"""The client's error types: one class per kind of failure, each carrying what the caller needs to act.

Server errors keep the server's JSON (``{"code", "type", "message"}``) and, when the message names an
item of the request (``inputs[3][1] (sentence) ...``, ``pair 3 has ...``), the index of that item in
the CALLER's input, not in the request the client happened to send.
"""

from __future__ import annotations

import re
from typing import Any

# Request-relative item references in the server's messages (handler/request_parsing.py and the
# "truncate": false check): inputs[3], inputs[3][1] (sentence), sentences[3], pair 3.
_ITEM_REFERENCE = re.compile(r"\binputs\[(\d+)\]|\bsentences\[(\d+)\]|\bpair (\d+)\b")


class InstructorServeError(Exception):
    """Base class of every error this package raises."""


class InvalidPairError(InstructorServeError, ValueError):
    """A pair given to the client is not ``(instruction: str, text: str)``; nothing was sent."""

    def __init__(self, index: int, problem: str) -> None:
        self.index = index
        super().__init__(f"pairs[{index}]: {problem}")


class APIError(InstructorServeError):
    """The server answered with an error status.

    Attributes: ``status`` (HTTP status), ``type`` and ``message`` (the server's JSON, or the raw body
    when it sent none), ``body`` (the parsed JSON or text), ``url``, ``request_index`` (the item the
    message names, counted in the request) and ``index`` (the same item counted in the caller's input).
    """

    def __init__(self, status: int, body: Any, url: str, *, offset: int = 0) -> None:
        self.status = status
        self.body = body
        self.url = url
        if isinstance(body, dict):
            self.type = str(body.get("type", "")) or f"HTTP{status}"
            self.message = str(body.get("message", body))
        else:
            self.type = f"HTTP{status}"
            self.message = str(body or "").strip() or f"HTTP {status}"
        self.request_index = item_index_in_message(self.message)
        self.index = None if self.request_index is None else offset + self.request_index
        super().__init__(self._describe())

    def _describe(self) -> str:
        if self.index is None:
            return f"{self.status} {self.type}: {self.message} [{self.url}]"
        where = f"item {self.index} of the input (item {self.request_index} of its request)"
        return f"{self.status} {self.type}: {where}: {self.message} [{self.url}]"

    def with_offset(self, offset: int) -> APIError:
        """The same error with ``index`` counted from ``offset`` (the request's first item in the input)."""
        return type(self)(self.status, self.body, self.url, offset=offset)


class InvalidInputError(APIError):
    """400 InvalidInput: the server refused a pair (wrong type, invalid Unicode, ...)."""


class AuthenticationError(APIError):
    """TorchServe refused the token (missing, wrong, expired or the management key)."""


class PayloadTooLargeError(APIError):
    """413: a text over the server's max_chars_per_text, too many pairs, or a body over max_request_size."""


class InputTooLongError(APIError):
    """422: a pair over max_seq_length tokens in a request with ``truncate=False``."""


class NothingToEmbedError(APIError):
    """422 NothingToEmbed: a pair whose instruction covers its whole text, leaving no token to embed."""


class ServerError(APIError):
    """5xx that is not worth retrying (a handler bug), or a retryable status after the last retry."""


class ServiceUnavailableError(ServerError):
    """503 (queue full, no worker) or 507 (worker died, out of memory) after every retry was spent."""


class ConnectionFailedError(InstructorServeError):
    """The server could not be reached (refused, reset, timed out) after every retry was spent."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        super().__init__(f"cannot reach {url}: {type(cause).__name__}: {cause}")


class ResponseFormatError(InstructorServeError):
    """The server answered 200 with something that is not one vector per pair."""


def item_index_in_message(message: str) -> int | None:
    """The request-relative item index a server message names first, or None."""
    match = _ITEM_REFERENCE.search(message)
    if not match:
        return None
    return int(next(group for group in match.groups() if group is not None))


def error_for_status(status: int, body: Any, url: str, offset: int = 0) -> APIError:
    """The typed error for a non-2xx answer (``offset``: index of the request's first item in the input)."""
    message = str(body.get("message", "")) if isinstance(body, dict) else str(body or "")
    if "Token Authorization failed" in message or status in (401, 403):
        cls: type[APIError] = AuthenticationError
    elif status == 413:
        cls = PayloadTooLargeError
    elif status == 422:
        kind = body.get("type") if isinstance(body, dict) else None
        cls = NothingToEmbedError if kind == "NothingToEmbed" else InputTooLongError
    elif status in (503, 507) or (status == 500 and "Worker died" in message):
        cls = ServiceUnavailableError
    elif status >= 500:
        cls = ServerError
    elif status == 400:
        cls = InvalidInputError
    else:
        cls = APIError
    return cls(status, body, url, offset=offset)
