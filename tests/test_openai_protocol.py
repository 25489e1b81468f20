"""The OpenAI embeddings route without a server: which route a request took, what its body may hold, and the
exact shapes of answers and errors (the end-to-end checks with real clients are in tests/test_openai_api.py)."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import orjson
import pytest

from handler.errors import InvalidInput, NotFound, PayloadTooLarge
from handler.protocols import ModelIdentity, Protocol, parse_row, render_error, render_reply
from handler.settings import Settings

SETTINGS = Settings(max_pairs_per_request=4, max_chars_per_text=50, default_instruction="Represent the title:")
MODEL = ModelIdentity("tiny", "1.0", 3)
EMBEDDINGS = {"url_path": "v1/embeddings", "explain": "False"}


def parse(body, headers=EMBEDDINGS):
    return parse_row({"body": body}, headers, SETTINGS, MODEL)


def test_inputs_become_pairs_with_the_default_or_the_given_instruction():
    state = parse({"model": "tiny", "input": ["a", "b"], "user": "u1"})
    assert state.protocol is Protocol.OPENAI and state.error is None
    assert state.request.pairs == [("Represent the title:", "a"), ("Represent the title:", "b")]
    assert parse({"model": "tiny", "input": "a", "instruction": ""}).request.pairs == [("", "a")]
    base64_request = parse({"model": "tiny", "input": "a", "encoding_format": "base64", "dimensions": 3}).request
    assert base64_request.encoding_format == "base64"
    assert parse(orjson.dumps({"model": "tiny", "input": "a"})).request.pairs == [("Represent the title:", "a")]


BAD = {
    "other model": ({"model": "text-embedding-3-small", "input": "a"}, NotFound, "model", "model_not_found"),
    "no model": ({"input": "a"}, InvalidInput, "model", "InvalidInput"),
    "token ids": ({"model": "tiny", "input": [1, 2, 3]}, InvalidInput, "input", "InvalidInput"),
    "token id lists": ({"model": "tiny", "input": [[1, 2], [3]]}, InvalidInput, "input", "InvalidInput"),
    "empty": ({"model": "tiny", "input": []}, InvalidInput, "input", "InvalidInput"),
    "a number": ({"model": "tiny", "input": ["a", 5]}, InvalidInput, "input", "InvalidInput"),
    "too many": ({"model": "tiny", "input": ["a"] * 5}, PayloadTooLarge, "input", "PayloadTooLarge"),
    "too long": ({"model": "tiny", "input": "x" * 51}, PayloadTooLarge, "input", "PayloadTooLarge"),
    "dimensions": ({"model": "tiny", "input": "a", "dimensions": 2}, InvalidInput, "dimensions", "InvalidInput"),
    "encoding": ({"model": "tiny", "input": "a", "encoding_format": "int8"}, InvalidInput, "encoding_format",
                 "InvalidInput"),
    "instruction type": ({"model": "tiny", "input": "a", "instruction": 3}, InvalidInput, "instruction",
                         "InvalidInput"),
    "unknown field": ({"model": "tiny", "input": "a", "prompt": "x"}, InvalidInput, "prompt", "InvalidInput"),
    "not an object": (["a"], InvalidInput, None, "InvalidInput"),
}


@pytest.mark.parametrize("body,error_type,param,code", BAD.values(), ids=BAD.keys())
def test_bad_requests_get_openai_errors_naming_the_param(body, error_type, param, code):
    state = parse(body)
    assert isinstance(state.error, error_type), state.error
    error = orjson.loads(render_error(state.error, state.protocol))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param, error
    assert state.error.status in (400, 404, 413)


def test_the_answer_has_openai_shape_with_the_tokens_embedded():
    vectors = np.array([[0.1, -0.2, 0.3], [1 / 3, 2 / 3, 1.0]], dtype=np.float32)
    for encoding in ("float", "base64"):
        state = parse({"model": "tiny", "input": ["a", "b"], "encoding_format": encoding})
        reply = render_reply(dataclasses.replace(state, vectors=vectors), MODEL)
        body = orjson.loads(reply.body)
        assert body["object"] == "list" and body["model"] == "tiny" and reply.content_type == "application/json"
        assert [item["index"] for item in body["data"]] == [0, 1]
        assert {item["object"] for item in body["data"]} == {"embedding"}
        got = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") if encoding == "base64"
               else np.array(item["embedding"], dtype=np.float32) for item in body["data"]]
        np.testing.assert_array_equal(np.array(got), vectors)
        assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}  # no tokenized items in this state


def test_model_list_and_unknown_routes():
    listing = parse(None, {"url_path": "v1/models"})
    assert listing.error is None and listing.request is None
    assert orjson.loads(listing.reply.body)["data"][0]["id"] == "tiny"
    missing = parse({"model": "tiny", "prompt": "x"}, {"url_path": "v1/completions"})
    assert isinstance(missing.error, NotFound) and "v1/embeddings" in missing.error.message


def test_form_encoded_bodies_say_what_to_send():
    """curl -d without a Content-Type: TorchServe hands the handler form fields (or none) instead of a body."""
    state = parse_row({}, {"url_path": "", "Content-Type": "application/x-www-form-urlencoded"}, SETTINGS, MODEL)
    assert isinstance(state.error, InvalidInput) and "Content-Type: application/json" in state.error.message
    fields = parse_row({'{"inputs": ["a", "b"]}': b""}, {"url_path": ""}, SETTINGS, MODEL)
    assert "arrived as form fields" in fields.error.message
    upload = parse_row({"file": {"inputs": ["a", "b"]}}, {"url_path": ""}, SETTINGS, MODEL)
    assert upload.error is None and upload.request.pairs == [("a", "b")]


@pytest.mark.parametrize("value,message", [
    ([["a", "b"]], "input[0] must be a string; got a list"),
    (["a", ["b"]], "input[1] must be a string; got a list"),
    ([[1, 2], [3]], "token arrays are not accepted"),
])
def test_nested_lists_of_strings_are_named_by_item_not_called_token_arrays(value, message):
    # A list holding a list of strings (e.g. a [instruction, text] pair) is no token array: the message said so.
    state = parse({"model": "tiny", "input": value})
    assert isinstance(state.error, InvalidInput) and message in state.error.message, state.error
