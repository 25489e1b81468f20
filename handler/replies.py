"""What a successful native request gets back, in the wire format it asked for, and what that will weigh.

  JSON floats (default)   ``[0.0123, ...]`` or ``[[...], ...]``: float32 printed as shortest round-trip numbers
  base64 (``"encoding_format": "base64"``)  each vector as the base64 of its little-endian float32 bytes
  raw float32 (request header ``Accept: application/octet-stream``)  the rows' little-endian float32 bytes,
      row-major, nothing else; Content-Type application/octet-stream, and the header
      ``X-Instructor-Dimension`` gives the row length: ``np.frombuffer(body, "<f4").reshape(-1, dim)``.
      The single-pair form is one row. Errors stay JSON (Content-Type application/json) with their status.

Every answered request also carries ``X-Instructor-Tokens``: the tokens it embedded (after truncation,
special tokens included), so clients can count what they used.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping

import numpy as np
import orjson

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TOKENS_HEADER = "X-Instructor-Tokens"
DIMENSION_HEADER = "X-Instructor-Dimension"
# A float32 printed by orjson takes at most 15 characters ("-1.2345678e-05"), plus its comma.
_JSON_BYTES_PER_FLOAT = 16
_ENVELOPE_BYTES = 256  # brackets, quotes, KServe's fields around the numbers


class Wire(str, enum.Enum):
    """How a request's vectors travel."""

    FLOAT = "float"
    BASE64 = "base64"
    RAW = "raw"  # little-endian float32 bytes


def wire_of(encoding_format: str, headers: Mapping[str, str]) -> Wire:
    """The header asks for raw bytes; else the body's ``encoding_format`` decides. ``headers``: lower-case names.

    Raw bytes only when Accept names application/octet-stream with a quality above 0 and no lower than
    application/json's: ``application/octet-stream;q=0`` says the client cannot take them."""
    qualities = accept_qualities(headers.get("accept", ""))
    raw = qualities.get(OCTET_STREAM, 0.0)
    if raw > 0 and raw >= qualities.get(JSON, 0.0):
        return Wire.RAW
    return Wire.BASE64 if encoding_format == "base64" else Wire.FLOAT


def accept_qualities(accept: str) -> dict[str, float]:
    """Media type -> quality (RFC 9110 ``q``, 1 when absent) of an Accept header; an unreadable q counts as 0."""
    qualities: dict[str, float] = {}
    for media_range in accept.lower().split(","):
        media, *parameters = (part.strip() for part in media_range.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        if media:
            qualities[media] = max(quality, qualities.get(media, 0.0))
    return qualities


def predicted_bytes(wire: Wire, rows: int, dimension: int) -> int:
    """An upper bound of the reply's size, known before anything is embedded."""
    if wire is Wire.RAW:
        return 4 * rows * dimension
    if wire is Wire.BASE64:
        return rows * (4 * -(-4 * dimension // 3) + 3) + _ENVELOPE_BYTES
    return rows * dimension * _JSON_BYTES_PER_FLOAT + _ENVELOPE_BYTES


def render(vectors: np.ndarray, single: bool, wire: Wire) -> tuple[bytes, str]:
    """(body, content type) of one native request's vectors."""
    if wire is Wire.RAW:
        return np.ascontiguousarray(vectors, dtype="<f4").tobytes(), OCTET_STREAM
    return render_vectors(vectors, single, wire.value), JSON


def render_vectors(vectors: np.ndarray, single: bool, encoding_format: str) -> bytes:
    """JSON for one request's vectors: float32 as shortest round-trip numbers, or base64 of little-endian float32."""
    if encoding_format == "base64":
        encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        return orjson.dumps(encoded[0] if single else encoded)
    return orjson.dumps(vectors[0] if single else vectors, option=orjson.OPT_SERIALIZE_NUMPY)
