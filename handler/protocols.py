"""Which protocol a request speaks, from its route first and its body second; parse and answer in it.

TorchServe 0.12 routes these POSTs to the handler and marks the route only with the headers it adds:

  /predictions/<name>[/<version>]              url_path = ""               -> the native forms
  /predictions/<name>/<version>/v1/embeddings  url_path = "v1/embeddings"  -> OpenAI embeddings
  /predictions/<name>/<version>/v1/models      url_path = "v1/models"      -> OpenAI model list (any method)
  /v1/models/<name>:predict, /v2/models/<name>/infer   explain, no url_path -> KServe v1 or v2
  /invocations, /models/<name>/invoke, /<name>/predict  neither             -> told from the body

TorchServe does not say which of its two KServe routes was called: there ``instances`` is v1 and anything
else v2 (so a native body there gets a v2 error). On the routes that carry no header, ``instances`` is v1,
tensors (or tritonclient's ``Inference-Header-Content-Length`` header) v2, a native body native, and an error
for a body that speaks none of them is answered with both shapes' keys (``error`` for KServe clients,
``code``/``type``/``message`` for this project's).

Each request is parsed once, by the parser of its protocol, into the same ParsedRequest, so one dynamic batch
mixing every protocol makes one core call; each answer is rendered in the protocol of its request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from handler import protocol_kserve, protocol_openai
from handler.errors import InvalidInput, NotFound, ServiceError
from handler.protocol_types import ModelIdentity, Protocol, Reply
from handler.request_parsing import FORMS as _NATIVE_FORMS
from handler.request_parsing import ParsedRequest, decode_json, parse_request
from handler.request_state import RequestState
from handler.settings import Settings

__all__ = ["ModelIdentity", "Protocol", "Reply", "parse_row", "render_error", "render_reply", "request_body"]

URL_PATH = "url_path"
KSERVE_ROUTE_HEADER = "explain"  # added by TorchServe on /predictions and on its KServe routes, not elsewhere
_FORM_HINT = ("send the JSON as the raw request body with the header 'Content-Type: application/json' "
              "(curl: -H 'Content-Type: application/json' -d @body.json)")
# TorchServe's own keys in a request row; everything else in a row is a form or multipart field.
_ROW_KEYS = ("body", "data")


def request_body(row: Mapping[str, Any]) -> Any:
    """TorchServe puts the payload under "body" (or "data" for some clients), a multipart upload under its
    field's name (curl -F 'file=@body.json'); None if the row holds neither."""
    body = row.get("body")
    if body is None:
        body = row.get("data")
    if body is not None:
        return body
    fields = [key for key in row if key not in _ROW_KEYS]
    if len(fields) == 1 and _looks_like_json(row[fields[0]]):
        return row[fields[0]]
    return None


def _form_error(row: Mapping[str, Any], content_type: str) -> InvalidInput | None:
    """curl -d without a Content-Type sends application/x-www-form-urlencoded: TorchServe decodes it as form
    fields (a JSON text with no '=' becomes none at all), and the text cannot be put back together reliably."""
    fields = [str(key) for key in row if key not in _ROW_KEYS]
    if not fields and not content_type.lower().startswith(("application/x-www-form-urlencoded", "multipart/")):
        return None
    shown = f" ({', '.join(repr(field[:40]) for field in fields[:3])})" if fields else ""
    return InvalidInput(f"the body arrived as form fields{shown} ({content_type or 'no Content-Type'}), not as "
                        f"JSON; {_FORM_HINT}")


def parse_row(row: Mapping[str, Any], headers: Mapping[str, str] | None, settings: Settings,
              model: ModelIdentity) -> RequestState:
    """One request of a dynamic batch -> its state: parsed pairs, a ready reply, or an error; never raises
    a ServiceError. ``headers`` are the request's HTTP headers as TorchServe passes them."""
    lowered = {str(key).lower(): value for key, value in (headers or {}).items()}
    kserve_route = URL_PATH not in lowered and KSERVE_ROUTE_HEADER in lowered
    protocol = Protocol.NATIVE if URL_PATH in lowered else Protocol.V2 if kserve_route else Protocol.UNKNOWN
    try:
        if URL_PATH in lowered:
            protocol = _predictions_route(str(lowered[URL_PATH]).strip("/"))
            if protocol is Protocol.OPENAI_MODELS:
                return RequestState(protocol=protocol, reply=protocol_openai.render_models(model))
        raw = request_body(row)
        if raw is None and (form_error := _form_error(row, lowered.get("content-type", ""))) is not None:
            raise form_error
        _check_content_encoding(lowered.get("content-encoding", ""))
        if protocol in (Protocol.UNKNOWN, Protocol.V2) and protocol_kserve.BINARY_HEADER in lowered:
            protocol = Protocol.V2
            body = protocol_kserve.split_binary(raw, lowered[protocol_kserve.BINARY_HEADER])
        elif isinstance(raw, (bytes, bytearray, memoryview, str)):
            body = decode_json(raw, _route_forms(protocol, kserve_route, model))
        else:
            body = raw
        if kserve_route and isinstance(body, dict) and "instances" in body:
            protocol = Protocol.V1
        elif protocol is Protocol.UNKNOWN:
            protocol = protocol_kserve.detect(body)
        return RequestState(protocol=protocol, request=_parse(protocol, body, settings, model))
    except ServiceError as error:
        # Without its traceback: the frames hold the parsed body, and exception -> traceback -> frame ->
        # exception is a cycle that only a full GC frees.
        return RequestState(protocol=protocol, error=error.with_traceback(None))


def _check_content_encoding(encoding: str) -> None:
    """TorchServe hands the body over as it came: a compressed one would only get "not valid JSON"."""
    if encoding.strip().lower() not in ("", "identity"):
        raise InvalidInput(f"header Content-Encoding: {encoding}: compressed bodies are not accepted; send the "
                           "JSON uncompressed")


def _route_forms(protocol: Protocol, kserve_route: bool, model: ModelIdentity) -> str:
    """What the route takes, for the message of an empty body: the forms of the protocol the client called."""
    if protocol is Protocol.OPENAI:
        return f'{{"model": "{model.name}", "input": ["text", ...]}}'
    if kserve_route:
        return ('{"instances": [[instruction, text], ...]} (KServe v1) or {"inputs": [{"name": "pairs", '
                '"datatype": "BYTES", "shape": [n, 2], "data": [[instruction, text], ...]}]} (KServe v2)')
    return _NATIVE_FORMS


def _predictions_route(url_path: str) -> Protocol:
    if url_path == "":
        return Protocol.NATIVE
    if url_path in protocol_openai.EMBEDDINGS_PATHS:
        return Protocol.OPENAI
    if url_path in protocol_openai.MODELS_PATHS:
        return Protocol.OPENAI_MODELS
    raise NotFound(f"no route '{url_path}' after /predictions/<name>/<version>/; the routes are '' (this "
                   f"project's forms), {', '.join(map(repr, protocol_openai.EMBEDDINGS_PATHS))} and "
                   f"{', '.join(map(repr, protocol_openai.MODELS_PATHS))} (OpenAI)")


def _parse(protocol: Protocol, body: Any, settings: Settings, model: ModelIdentity) -> ParsedRequest:
    if protocol is Protocol.OPENAI:
        return protocol_openai.parse(body, settings, model)
    if protocol is Protocol.V1:
        return protocol_kserve.parse_v1(body, settings)
    if protocol is Protocol.V2:
        return protocol_kserve.parse_v2(body, settings, model)
    return parse_request(body, settings)


def render_reply(state: RequestState, model: ModelIdentity) -> Reply:
    """The answer of a request that was embedded (or answered at parse time) in the protocol it spoke."""
    if state.reply is not None:
        return state.reply
    vectors = np.ascontiguousarray(state.vectors, dtype=np.float32)
    if state.protocol is Protocol.OPENAI:
        return protocol_openai.render(state.request, vectors, state.tokens, model)
    if state.protocol is Protocol.V1:
        return Reply(orjson.dumps({"predictions": vectors}, option=orjson.OPT_SERIALIZE_NUMPY))
    if state.protocol is Protocol.V2:
        return protocol_kserve.render_v2(state.request, vectors, model)
    raise ValueError(f"render_reply is for the protocols other than native; got {state.protocol}")


def render_error(error: ServiceError, protocol: Protocol) -> bytes:
    """The error body in the protocol's shape (every one names the field in its message)."""
    if protocol in (Protocol.OPENAI, Protocol.OPENAI_MODELS):
        return protocol_openai.render_error(error)
    if protocol in (Protocol.V1, Protocol.V2):
        return orjson.dumps({"error": error.message})
    if protocol is Protocol.UNKNOWN:
        return orjson.dumps({"error": error.message, **error.to_body()})
    return orjson.dumps(error.to_body())


def _looks_like_json(value: Any) -> bool:
    """A multipart part TorchServe decoded already (application/json), or JSON text or bytes."""
    if isinstance(value, (dict, list)):
        return True
    if isinstance(value, str):
        return value.lstrip()[:1] in ("{", "[")
    return isinstance(value, (bytes, bytearray)) and bytes(value[:64]).lstrip()[:1] in (b"{", b"[")

