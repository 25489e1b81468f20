"""Every request form and every rejection: right status class, and a message that names the field."""

from __future__ import annotations

import pytest

from handler.errors import InvalidInput, PayloadTooLarge, ServiceError
from handler.request_parsing import parse_request
from handler.settings import Settings

SETTINGS = Settings(max_pairs_per_request=4, max_chars_per_text=50)


def test_single_pair_form():
    parsed = parse_request({"inputs": ["Represent:", "text"]}, SETTINGS)
    assert parsed.pairs == [("Represent:", "text")] and parsed.single and parsed.truncate


def test_batch_form_keeps_order_and_is_not_single():
    parsed = parse_request({"inputs": [["a:", "x"], ["", "y"]], "truncate": False}, SETTINGS)
    assert parsed.pairs == [("a:", "x"), ("", "y")] and not parsed.single and not parsed.truncate
    assert parsed.encoding_format == "float"
    assert parse_request({"inputs": ["a", "b"], "encoding_format": "base64"}, SETTINGS).encoding_format == "base64"


def test_a_batch_of_one_pair_is_still_a_list_of_vectors():
    parsed = parse_request({"inputs": [["a:", "x"]]}, SETTINGS)
    assert parsed.pairs == [("a:", "x")] and not parsed.single


def test_compact_form():
    parsed = parse_request({"instruction": "a:", "sentences": ["x", "y"]}, SETTINGS)
    assert parsed.pairs == [("a:", "x"), ("a:", "y")] and not parsed.single


def test_bytes_and_text_bodies_parse_like_json():
    assert parse_request(b'{"inputs": ["a", "b"]}', SETTINGS).pairs == [("a", "b")]
    assert parse_request(bytearray(b'{"inputs": ["a", "b"]}'), SETTINGS).pairs == [("a", "b")]
    assert parse_request('{"inputs": ["a", "b"]}', SETTINGS).pairs == [("a", "b")]


def test_empty_strings_are_accepted_as_in_instructor_embedding():
    assert parse_request({"inputs": ["", ""]}, SETTINGS).pairs == [("", "")]


BAD = [
    (None, InvalidInput, "JSON object"),
    (b"", InvalidInput, "empty"),
    (b"   ", InvalidInput, "empty"),
    (b"{", InvalidInput, "not valid JSON"),
    (b"\xff\xfe{}", InvalidInput, "not valid JSON"),
    ('{"inputs": ["\\ud800", "x"]}', InvalidInput, "not valid JSON"),
    ({"inputs": ["\ud800", "x"]}, InvalidInput, "inputs[0] (instruction) is not valid Unicode"),
    ([["a", "b"]], InvalidInput, "got a list"),
    ("[1, 2]", InvalidInput, "got a list"),
    (42, InvalidInput, "got a number"),
    ({}, InvalidInput, "missing field 'inputs'"),
    ({"inputs": None}, InvalidInput, "'inputs' must be a list; got null"),
    ({"inputs": "a b"}, InvalidInput, "'inputs' must be a list; got a string"),
    ({"inputs": {"a": "b"}}, InvalidInput, "'inputs' must be a list; got an object"),
    ({"inputs": []}, InvalidInput, "'inputs' is empty"),
    ({"inputs": ["only one"]}, InvalidInput, "got a list of 1 string"),
    ({"inputs": ["a", "b", "c"]}, InvalidInput, "got a list of 3 string"),
    ({"inputs": ["a", ["b", "c"]]}, InvalidInput, "inputs[1] must be a string"),
    ({"inputs": [["a", "b"], "c"]}, InvalidInput, "inputs[1] must be [instruction, sentence]; got a string"),
    ({"inputs": [["a", "b"], ["c"]]}, InvalidInput, "inputs[1] must be [instruction, sentence]; got a list of 1"),
    ({"inputs": [["a", "b", "c"]]}, InvalidInput, "inputs[0] must be [instruction, sentence]; got a list of 3"),
    ({"inputs": [["a", 1]]}, InvalidInput, "inputs[0][1] (sentence) must be a string; got a number"),
    ({"inputs": [[None, "x"]]}, InvalidInput, "inputs[0][0] (instruction) must be a string; got null"),
    ({"inputs": [[["a"], "x"]]}, InvalidInput, "inputs[0][0] (instruction) must be a string; got a list"),
    ({"inputs": [1, 2]}, InvalidInput, "inputs[0] must be [instruction, sentence]; got a number"),
    ({"inputs": [True, "x"]}, InvalidInput, "got a boolean"),
    ({"inputs": ["a", "b"], "truncate": "no"}, InvalidInput, "'truncate' must be true or false"),
    ({"inputs": ["a", "b"], "encoding_format": "binary"}, InvalidInput, "'encoding_format' must be one of"),
    ({"inputs": ["a", "b"], "encoding_format": 1}, InvalidInput, "got a number"),
    ({"inputs": ["a", "b"], "normalize": True}, InvalidInput, "unknown field 'normalize'"),
    ({"inputs": ["a", "b"], "instruction": "x"}, InvalidInput, "not both"),
    ({"sentences": ["x"]}, InvalidInput, "missing field 'instruction'"),
    ({"instruction": "x"}, InvalidInput, "missing field 'sentences'"),
    ({"instruction": 3, "sentences": ["x"]}, InvalidInput, "instruction must be a string"),
    ({"instruction": "x", "sentences": "x"}, InvalidInput, "'sentences' must be a list"),
    ({"instruction": "x", "sentences": []}, InvalidInput, "'sentences' is empty"),
    ({"instruction": "x", "sentences": ["a", 2]}, InvalidInput, "sentences[1] must be a string"),
    ({"inputs": [["", "x"]] * 5}, PayloadTooLarge, "'inputs' has 5 items; the limit is 4"),
    ({"instruction": "", "sentences": ["x"] * 5}, PayloadTooLarge, "'sentences' has 5 items"),
    ({"inputs": ["", "x" * 51]}, PayloadTooLarge, "inputs[1] (sentence) has 51 characters; the limit is 50"),
    ({"inputs": [["i" * 51, "x"]]}, PayloadTooLarge, "inputs[0][0] (instruction) has 51 characters"),
    ("[" * 100_000, InvalidInput, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "error_type", "fragment"), BAD)
def test_bad_requests_are_rejected_with_a_message_naming_the_field(body, error_type, fragment):
    with pytest.raises(ServiceError) as caught:
        parse_request(body, SETTINGS)
    assert type(caught.value) is error_type
    assert fragment in caught.value.message
    assert 400 <= caught.value.status < 500
