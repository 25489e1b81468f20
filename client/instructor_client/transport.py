"""What goes over the wire: the request body, and the vectors and token count read back with numpy.

The client asks for ``"encoding_format": "base64"``: each vector comes back as the base64 of its
little-endian float32 bytes, 2.4x smaller than JSON numbers and decoded by numpy without parsing a
float (the server's float32 exactly). A 200 that holds JSON numbers (a server that ignores the field,
or a caller who asks for "float") is read too. A raw float32 transport would be one more branch in
``decode_vectors`` keyed on the response's Content-Type, and one more value of ``ENCODINGS``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from instructor_client.errors import ResponseFormatError

ENCODINGS = ("base64", "float")
DEFAULT_ENCODING = "base64"
# The request's token count (instruction + text tokens the model embedded), sent by the server when it can.
TOKENS_HEADER = "X-Instructor-Tokens"


@dataclass(frozen=True)
class Batch:
    """One request's answer: a float32 matrix (pairs x dim), its token count (None: not reported) and the
    seconds its successful attempt took (for a request of several, 0)."""

    vectors: np.ndarray
    tokens: int | None
    seconds: float = 0.0


def request_body(encoded: Sequence[bytes], truncate: bool = True, encoding: str = DEFAULT_ENCODING) -> bytes:
    """``{"inputs": [[i, t], ...]}`` (the batch form: always a list of vectors back) with the options set."""
    tail = b"" if truncate else b', "truncate": false'
    if encoding != "float":
        tail += b', "encoding_format": "' + encoding.encode() + b'"'
    return b'{"inputs": [' + b", ".join(encoded) + b"]" + tail + b"}"


def decode_vectors(content: bytes, n: int, url: str) -> np.ndarray:
    """The ``n`` vectors of a 200 body (base64 strings or lists of numbers) as a float32 matrix."""
    try:
        body = json.loads(content)
    except ValueError:
        raise ResponseFormatError(f"{url} answered 200 with a body that is not JSON: {content[:200]!r}") from None
    if not isinstance(body, list) or len(body) != n:
        got = f"{len(body)} items" if isinstance(body, list) else type(body).__name__
        raise ResponseFormatError(f"{url} answered 200 with {got}; expected {n} vectors")
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if all(isinstance(item, str) for item in body):
        return _from_base64(body, url)
    try:
        matrix = np.asarray(body, dtype=np.float32)
    except (TypeError, ValueError):
        raise ResponseFormatError(f"{url} answered 200 with vectors that are not lists of numbers") from None
    if matrix.ndim != 2:
        raise ResponseFormatError(f"{url} answered 200 with vectors of unequal lengths")
    return matrix


def _from_base64(items: list[str], url: str) -> np.ndarray:
    # Each vector is decoded straight into its row of the result: no list of decoded rows, no joined copy
    # (at 64 requests in flight of 256 x 768 floats, every copy per request is ~50 MB of peak memory).
    width = len(items[0]) // 4 * 3 - items[0][-2:].count("=")
    if width == 0 or width % 4:
        raise ResponseFormatError(f"{url} answered 200 with base64 vectors of {width} bytes (not float32)")
    matrix = np.empty((len(items), width // 4), dtype="<f4")
    for row, item in enumerate(items):
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ResponseFormatError(f"{url} answered 200 with a vector that is not base64") from None
        if len(raw) != width:
            raise ResponseFormatError(f"{url} answered 200 with base64 vectors of unequal byte lengths")
        matrix[row] = np.frombuffer(raw, dtype="<f4")
    return matrix.astype(np.float32, copy=False)


def tokens_of(headers: Mapping[str, str]) -> int | None:
    """The token count the server reported for a request, or None when it sent none (or garbage)."""
    value = headers.get(TOKENS_HEADER)
    if value is None:
        return None
    try:
        tokens = int(value.strip())
    except ValueError:
        return None
    return tokens if tokens >= 0 else None


class TokenTally:
    """Tokens over many requests; the total is None (not reported) when no request carried a count."""

    def __init__(self) -> None:
        self.tokens = 0
        self.counted = 0  # requests that reported a count
        self.uncounted = 0  # requests that did not

    def add(self, tokens: int | None) -> None:
        if tokens is None:
            self.uncounted += 1
        else:
            self.tokens += tokens
            self.counted += 1

    @property
    def total(self) -> int | None:
        return self.tokens if self.counted else None

    def describe(self, pairs: int) -> str:
        """The summary line: the count and tokens per pair, or why there is none."""
        if not self.counted:
            return "not reported by the server"
        text = f"{self.tokens:,}" + (f" ({self.tokens / pairs:.1f} per pair)" if pairs else "")
        if self.uncounted:
            text += f"; {self.uncounted} request(s) without a count are not included"
        return text
