"""The OpenAI embeddings API, at /predictions/<name>/<version>/v1/embeddings (TorchServe's ``url_path``).

Request  {"model": "<served name>", "input": "text" | ["text", ...], "encoding_format"?: "float" | "base64",
          "dimensions"?: <the model's own>, "user"?: ignored, "instruction"?: "Represent ...:"}
Response {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "<base64>"}],
          "model": "<served name>", "usage": {"prompt_tokens": n, "total_tokens": n}}
Errors   {"error": {"message", "type", "param", "code"}} with this project's statuses.

``instruction`` is this server's extension (the openai client sends it with ``extra_body``); without it every
input is embedded with the archive's ``default_instruction`` setting, empty by default: plain text, the vector
of InstructorEmbedding 1.0.1's ``encode([text])``. The token counts are the tokens the model embedded
(instruction included, after truncation).
"""

from __future__ import annotations

import base64
import re
from typing import Any, ClassVar

import numpy as np
import orjson

from handler.errors import InvalidInput, NotFound, ServiceError
from handler.protocol_types import ModelIdentity, Reply
from handler.request_parsing import ParsedRequest, check_count, checked_string, json_type
from handler.settings import Settings

EMBEDDINGS_PATHS = ("v1/embeddings", "embeddings")
MODELS_PATHS = ("v1/models", "models")
_KEYS = ("model", "input", "encoding_format", "dimensions", "user", "instruction")
_ENCODINGS = ("float", "base64")
# Which request field an error is about, for the "param" of OpenAI's error body: every message of this
# module's parser starts with the field it is about ('input' ..., input[3] ..., unknown field 'prompt' ...).
_PARAM = re.compile(r"^(?:unknown field )?'?([A-Za-z_]+)\b")
_TOKENS_HINT = ("token arrays are not accepted: send text (this model has its own tokenizer; LangChain's "
                "OpenAIEmbeddings sends tokens unless check_embedding_ctx_length=False)")


class ModelNotFound(NotFound):
    """OpenAI's 404 for a ``model`` this server does not serve (code ``model_not_found``)."""

    status: ClassVar[int] = 404


def parse(body: Any, settings: Settings, model: ModelIdentity) -> ParsedRequest:
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object like {{\"model\": \"{model.name}\", \"input\": "
                           f"[\"text\"]}}; got {json_type(body)}")
    unknown = [key for key in body if key not in _KEYS]
    if unknown:
        raise InvalidInput(f"unknown field '{unknown[0]}'; allowed: {', '.join(_KEYS)}")
    name = body.get("model")
    if not isinstance(name, str):
        raise InvalidInput(f"'model' must be the served model's name ({model.name!r}); got {json_type(name)}")
    if name != model.name:
        raise ModelNotFound(f"The model '{name}' does not exist; this server serves '{model.name}'")
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in _ENCODINGS:
        raise InvalidInput(f"'encoding_format' must be 'float' or 'base64'; got {encoding_format!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions != model.dimension):
        raise InvalidInput(f"'dimensions' must be this model's dimension, {model.dimension} (it cannot shorten "
                           f"its vectors); got {dimensions!r}")
    instruction = body.get("instruction", settings.default_instruction)
    instruction = checked_string(instruction, "'instruction'", settings)
    texts = _inputs(body.get("input"), settings)
    return ParsedRequest(pairs=[(instruction, text) for text in texts], single=False, truncate=True,
                         encoding_format=encoding_format)


def _inputs(value: Any, settings: Settings) -> list[str]:
    if isinstance(value, str):
        return [checked_string(value, "'input'", settings)]
    if not isinstance(value, list):
        raise InvalidInput(f"'input' must be a string or a list of strings; got {json_type(value)}")
    if not value:
        raise InvalidInput("'input' is empty; send a string or a list of strings")
    # Token arrays are lists of integers (or one such list); a list holding lists of strings is no token array
    # and is told which item is not a string, below.
    if _token_ids(value) or any(isinstance(item, list) and _token_ids(item) for item in value):
        raise InvalidInput(f"'input': {_TOKENS_HINT}")
    check_count(len(value), "input", settings)
    return [checked_string(item, f"input[{index}]", settings) for index, item in enumerate(value)]


def _token_ids(value: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def render(request: ParsedRequest, vectors: np.ndarray, tokens: int, model: ModelIdentity) -> Reply:
    if request.encoding_format == "base64":
        embeddings: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        embeddings = list(vectors)
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": embedding}
                 for index, embedding in enumerate(embeddings)],
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Reply(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))


def render_models(model: ModelIdentity) -> Reply:
    """GET .../v1/models: the one model this route serves, as OpenAI lists models."""
    return Reply(orjson.dumps({"object": "list", "data": [
        {"id": model.name, "object": "model", "created": 0, "owned_by": "instructor-serve"}]}))


def render_error(error: ServiceError) -> bytes:
    if isinstance(error, ModelNotFound):
        kind, code, param = "invalid_request_error", "model_not_found", "model"
    else:
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        code = error.type
        match = _PARAM.match(error.message)
        known = match is not None and (match.group(1) in _KEYS or error.message.startswith("unknown field"))
        param = match.group(1) if known and error.status < 500 else None
    return orjson.dumps({"error": {"message": error.message, "type": kind, "param": param, "code": code}})
