"""Parse and validate one request body into pairs; every rejection names the offending field.

Accepted bodies (JSON objects):
  {"inputs": [INSTRUCTION, SENTENCE]}                      -> one flat vector
  {"inputs": [[INSTRUCTION, SENTENCE], ...]}               -> a list of vectors, in order
  {"instruction": INSTRUCTION, "sentences": [S1, S2, ...]} -> a list of vectors (compact form)
Optional: "truncate": true|false (default true; false -> 422 for a pair over max_seq_length);
"encoding_format": "float" (default: JSON numbers) | "base64" (each vector as the base64 of its
little-endian float32 bytes, as the OpenAI embeddings API does: 2.4x smaller, no float printing/parsing).
An empty instruction ("") embeds the sentence as plain text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from typing import Any

import orjson

from handler.errors import InvalidInput, PayloadTooLarge
from handler.settings import Settings

Pair = tuple[str, str]
_ALLOWED_KEYS = ("inputs", "instruction", "sentences", "truncate", "encoding_format")
ENCODING_FORMATS = ("float", "base64")
FORMS = ('{"inputs": [instruction, sentence]}, {"inputs": [[instruction, sentence], ...]} '
         'or {"instruction": ..., "sentences": [...]}')


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    pairs: list[Pair]
    single: bool  # the flat {"inputs": [instruction, sentence]} form: answer with one flat vector
    truncate: bool
    encoding_format: str = "float"
    request_id: str | None = None  # KServe v2 "id", echoed in the answer
    binary_output: bool = False  # KServe v2 binary tensor extension: raw float32 after a JSON header


def parse_request(body: Any, settings: Settings) -> ParsedRequest:
    """Validate a body (parsed JSON, or raw bytes/str to parse); raise InvalidInput or PayloadTooLarge."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        body = decode_json(body)
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object like {FORMS}; got {json_type(body)}")
    unknown = [key for key in body if key not in _ALLOWED_KEYS]
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; allowed fields: {', '.join(_ALLOWED_KEYS)}")

    truncate = checked_bool(body.get("truncate", True), "truncate")
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        shown = repr(encoding_format) if isinstance(encoding_format, str) else json_type(encoding_format)
        raise InvalidInput(f"'encoding_format' must be one of {', '.join(map(repr, ENCODING_FORMATS))}; got {shown}")

    if "inputs" in body:
        if "instruction" in body or "sentences" in body:
            raise InvalidInput("use either 'inputs' or 'instruction' + 'sentences', not both")
        pairs = _parse_inputs(body["inputs"], settings)
        single = isinstance(body["inputs"][0], str)
    elif "sentences" in body or "instruction" in body:
        pairs = _parse_compact(body, settings)
        single = False
    else:
        raise InvalidInput(f"missing field 'inputs'; expected {FORMS}")
    return ParsedRequest(pairs=pairs, single=single, truncate=truncate, encoding_format=encoding_format)


def _parse_inputs(inputs: Any, settings: Settings) -> list[Pair]:
    checked_list(inputs, "inputs", empty_hint="send [instruction, sentence] or a list of such pairs")
    if all(isinstance(item, str) for item in inputs):
        if len(inputs) != 2:
            raise InvalidInput(
                f"'inputs' must be [instruction, sentence] (2 strings) or a list of pairs; "
                f"got a list of {len(inputs)} string(s)"
            )
        return [_checked_pair(inputs, "inputs", settings)]
    if isinstance(inputs[0], str):
        bad = next(i for i, item in enumerate(inputs) if not isinstance(item, str))
        raise InvalidInput(f"inputs[{bad}] must be a string like inputs[0]; got {json_type(inputs[bad])}")
    check_count(len(inputs), "inputs", settings)
    pairs = []
    for index, item in enumerate(inputs):
        field = f"inputs[{index}]"
        if not isinstance(item, list):
            raise InvalidInput(f"{field} must be [instruction, sentence]; got {json_type(item)}")
        if len(item) != 2:
            raise InvalidInput(f"{field} must be [instruction, sentence]; got a list of {len(item)}")
        pairs.append(_checked_pair(item, field, settings))
    return pairs


def _parse_compact(body: dict[str, Any], settings: Settings) -> list[Pair]:
    if "instruction" not in body:
        raise InvalidInput("missing field 'instruction' (use \"\" for plain sentences)")
    if "sentences" not in body:
        raise InvalidInput("missing field 'sentences' (a list of strings)")
    instruction = checked_string(body["instruction"], "instruction", settings)
    sentences = checked_list(body["sentences"], "sentences", kind="a list of strings")
    check_count(len(sentences), "sentences", settings)
    return [(instruction, checked_string(s, f"sentences[{i}]", settings)) for i, s in enumerate(sentences)]


def _checked_pair(item: list[Any], field: str, settings: Settings) -> Pair:
    return checked_pair(item[0], item[1], f"{field}[0]", f"{field}[1]", settings, text_name="sentence")


def checked_pair(instruction: Any, text: Any, instruction_field: str, text_field: str, settings: Settings,
                 text_name: str = "text") -> Pair:
    """An (instruction, text) pair of checked strings; errors name the field and its role."""
    return (checked_string(instruction, f"{instruction_field} (instruction)", settings),
            checked_string(text, f"{text_field} ({text_name})", settings))


def checked_bool(value: Any, field: str) -> bool:
    """``value`` if it is true or false, else InvalidInput naming ``field``."""
    if not isinstance(value, bool):
        raise InvalidInput(f"'{field}' must be true or false; got {json_type(value)}")
    return value


def checked_list(value: Any, field: str, kind: str = "a list", empty_hint: str = "") -> list[Any]:
    """``value`` if it is a non-empty list, else InvalidInput naming ``field`` (and what to send instead)."""
    if not isinstance(value, list):
        raise InvalidInput(f"'{field}' must be {kind}; got {json_type(value)}")
    if not value:
        raise InvalidInput(f"'{field}' is empty" + (f"; {empty_hint}" if empty_hint else ""))
    return value


def checked_string(value: Any, field: str, settings: Settings) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string; got {json_type(value)}")
    if len(value) > settings.max_chars_per_text:
        raise PayloadTooLarge(
            f"{field} has {len(value)} characters; the limit is {settings.max_chars_per_text} "
            "(setting max_chars_per_text)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Python's json accepts "\ud800"; the tokenizer cannot take a lone surrogate.
        raise InvalidInput(f"{field} is not valid Unicode (it contains a lone surrogate)") from None
    return value


def check_count(count: int, field: str, settings: Settings) -> None:
    if count > settings.max_pairs_per_request:
        raise PayloadTooLarge(
            f"'{field}' has {count} items; the limit is {settings.max_pairs_per_request} per request "
            "(setting max_pairs_per_request): split the request"
        )


def decode_json(raw: bytes | bytearray | memoryview | str, forms: str = FORMS) -> Any:
    """Decode a raw body (InvalidInput if empty or not JSON), with the collector paused. ``forms``: what the
    route takes, for the message of an empty body."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    if not raw or not bytes(raw).strip():
        raise InvalidInput(f"the request body is empty; send JSON like {forms}")
    try:
        with _gc_paused():
            return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON ({exc})") from None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """JSON makes no reference cycles, but every 700 new containers trigger a collection that walks the
    model's millions of live objects: a 2 MB body of 700k empty lists took 1.7 s to parse in a worker
    (0.18 s with the collector paused)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
