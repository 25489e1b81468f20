"""KServe v1/v2 bodies parse into the same pairs as the native forms; every bad body names its field."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from handler.errors import InvalidInput, PayloadTooLarge, ServiceError
from handler.protocols import (
    ModelIdentity,
    Protocol,
    ProtocolRequest,
    detect,
    parse_body,
    protocol_of,
    render_error,
    render_response,
)
from handler.settings import Settings

SETTINGS = Settings(max_pairs_per_request=4, max_chars_per_text=50)
PAIRS = [("Represent the title:", "a"), ("", "b"), ("Represent the question:", "c")]


def v2_pairs(data, shape=None, **extra):
    return {"inputs": [{"name": "pairs", "datatype": "BYTES", "shape": shape or [len(PAIRS), 2], "data": data}],
            **extra}


def v2_named(instructions, texts, **extra):
    return {"inputs": [{"name": "instruction", "datatype": "BYTES", "shape": [len(instructions)],
                        "data": instructions},
                       {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


GOOD = {
    "v1 lists": ({"instances": [list(p) for p in PAIRS]}, Protocol.V1),
    "v1 objects": ({"instances": [{"instruction": i, "text": t} for i, t in PAIRS]}, Protocol.V1),
    "v2 nested [n, 2]": (v2_pairs([list(p) for p in PAIRS]), Protocol.V2),
    "v2 flat [n, 2]": (v2_pairs([s for p in PAIRS for s in p]), Protocol.V2),
    "v2 two tensors": (v2_named([i for i, _ in PAIRS], [t for _, t in PAIRS]), Protocol.V2),
    "v2 as raw bytes": (orjson.dumps(v2_pairs([list(p) for p in PAIRS])), Protocol.V2),
}


@pytest.mark.parametrize("body,protocol", GOOD.values(), ids=GOOD.keys())
def test_every_protocol_form_yields_the_same_pairs(body, protocol):
    parsed = parse_body(body, SETTINGS)
    assert isinstance(parsed, ProtocolRequest) and parsed.protocol is protocol
    assert parsed.pairs == PAIRS and not parsed.single and parsed.truncate


def test_native_forms_are_left_to_the_native_parser():
    for body in ({"inputs": ["a", "b"]}, {"inputs": [["a", "b"]]}, {"instruction": "a", "sentences": ["b"]}):
        parsed = parse_body(body, SETTINGS)
        assert type(parsed) is not ProtocolRequest and protocol_of(parsed) is Protocol.NATIVE
    assert parse_body({"inputs": ["a", "b"]}, SETTINGS).single


def test_one_instruction_of_shape_1_applies_to_every_text():
    parsed = parse_body(v2_named(["Represent:"], ["x", "y"]), SETTINGS)
    assert parsed.pairs == [("Represent:", "x"), ("Represent:", "y")]


def test_v1_object_without_instruction_is_plain_text_and_truncate_is_honoured():
    assert parse_body({"instances": [{"text": "x"}]}, SETTINGS).pairs == [("", "x")]
    assert not parse_body({"instances": [["a", "x"]], "truncate": False}, SETTINGS).truncate
    assert not parse_body(v2_pairs([["a", "x"]], [1, 2], parameters={"truncate": False}), SETTINGS).truncate


def test_v2_id_and_requested_json_output_are_accepted():
    body = v2_pairs([["a", "x"]], [1, 2], id="req-7",
                    outputs=[{"name": "embedding", "parameters": {"binary_data": False}}])
    assert parse_body(body, SETTINGS).request_id == "req-7"


BAD = {
    "v1 not a list": ({"instances": "x"}, InvalidInput, "'instances' must be a list"),
    "v1 empty": ({"instances": []}, InvalidInput, "'instances' is empty"),
    "v1 short pair": ({"instances": [["a", "b"], ["a"]]}, InvalidInput, "instances[1] must be [instruction, text]"),
    "v1 number text": ({"instances": [["a", 3]]}, InvalidInput, "instances[0][1] (text) must be a string"),
    "v1 unknown key": ({"instances": [{"instruction": "a", "txt": "b"}]}, InvalidInput,
                       "unknown field instances[0].txt"),
    "v1 missing text": ({"instances": [{"instruction": "a"}]}, InvalidInput, "instances[0].text is missing"),
    "v1 scalar": ({"instances": [7]}, InvalidInput, "instances[0] must be [instruction, text]"),
    "v1 extra field": ({"instances": [["a", "b"]], "signature": "x"}, InvalidInput, "unknown field signature"),
    "v1 too many": ({"instances": [["a", "b"]] * 5}, PayloadTooLarge, "'instances' has 5 items"),
    "v1 too long": ({"instances": [["a", "b" * 51]]}, PayloadTooLarge, "instances[0][1] (text) has 51 characters"),
    "v2 empty inputs": ({"inputs": [], "id": "x"}, InvalidInput, "'inputs' is empty"),
    "v2 fp32": ({"inputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}, InvalidInput,
                "inputs[0].datatype must be BYTES"),
    "v2 shape": (v2_pairs(["a", "b", "c"], [3]), InvalidInput, "inputs[0].shape must be [n, 2]"),
    "v2 shape type": (v2_pairs(["a", "b"], ["1", 2]), InvalidInput, "inputs[0].shape must be a list of non-negative"),
    "v2 data count": (v2_pairs(["a", "b", "c"], [2, 2]), InvalidInput, "inputs[0].data has 3 elements"),
    "v2 nested rows": (v2_pairs([["a", "b"], ["c"]], [2, 2]), InvalidInput, "inputs[0].data must hold 2 rows"),
    "v2 data type": (v2_pairs(["a", 5], [1, 2]), InvalidInput, "inputs[0].data[1] (text) must be a string"),
    "v2 no data": ({"inputs": [{"name": "p", "datatype": "BYTES", "shape": [1, 2]}]}, InvalidInput,
                   "inputs[0].data must be a list"),
    "v2 tensor key": ({"inputs": [{"name": "p", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"],
                                   "contents": {}}]}, InvalidInput, "unknown field inputs[0].contents"),
    "v2 binary input": ({"inputs": [{"name": "p", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"],
                                     "parameters": {"binary_data_size": 10}}]}, InvalidInput,
                        "inputs[0].parameters: binary"),
    "v2 binary output": (v2_pairs(["a", "b"], [1, 2], parameters={"binary_data_output": True}), InvalidInput,
                         "parameters.binary_data_output"),
    "v2 other output": (v2_pairs(["a", "b"], [1, 2], outputs=[{"name": "logits"}]), InvalidInput,
                        "outputs[0].name must be 'embedding'"),
    "v2 id type": (v2_pairs(["a", "b"], [1, 2], id=5), InvalidInput, "'id' must be a string"),
    "v2 three tensors": ({"inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": ["a"]}
                                     for n in "abc"]}, InvalidInput, "'inputs' has 3 tensors"),
    "v2 wrong names": (v2_named(["a"], ["b"]) | {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["a"]},
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["b"]}]}, InvalidInput,
        "named 'instruction' and 'text'"),
    "v2 named shapes": (v2_named(["a", "b"], ["x", "y", "z"]), InvalidInput, "inputs[0].shape must be [3]"),
    "v2 too many": (v2_pairs([["a", "b"]] * 5, [5, 2]), PayloadTooLarge, "'inputs[0].shape[0]' has 5 items"),
    "v2 too long": (v2_named(["a" * 51], ["b"]), PayloadTooLarge, "inputs[0].data[0] (instruction) has 51"),
    "v2 top-level key": (v2_pairs(["a", "b"], [1, 2], model="x"), InvalidInput, "unknown field model"),
    "v2 binary extension": (json.dumps(v2_pairs([], [1, 2])).encode() + b"\x05\x00\x00\x00hello", InvalidInput,
                            "binary tensor data"),
}


@pytest.mark.parametrize("body,error_type,message", BAD.values(), ids=BAD.keys())
def test_bad_kserve_bodies_are_refused_in_kserve_shape_naming_the_field(body, error_type, message):
    with pytest.raises(ServiceError) as caught:
        parse_body(body, SETTINGS)
    error = caught.value
    assert type(error) is error_type and message in error.message, error.message
    protocol = protocol_of(None, error)
    assert protocol in (Protocol.V1, Protocol.V2)
    assert orjson.loads(render_error(error, protocol)) == {"error": error.message}
    assert error.status in (400, 413)


def test_a_bad_native_body_keeps_the_native_error_shape():
    with pytest.raises(ServiceError) as caught:
        parse_body(b"{not json", SETTINGS)
    assert protocol_of(None, caught.value) is Protocol.NATIVE
    assert set(orjson.loads(render_error(caught.value, Protocol.NATIVE))) == {"code", "type", "message"}


def test_detect_by_shape():
    assert detect({"instances": []}) is Protocol.V1
    assert detect({"inputs": [{"name": "x"}]}) is Protocol.V2
    assert detect({"inputs": "oops", "id": "1"}) is Protocol.V2
    assert detect({"inputs": ["a", "b"]}) is Protocol.NATIVE
    assert detect([1]) is Protocol.NATIVE


def test_responses_have_each_protocols_shape_and_exact_floats():
    vectors = np.array([[0.1, -0.2, 0.3], [1 / 3, 2 / 3, 1.0]], dtype=np.float32)
    model = ModelIdentity("tiny", "1.0")
    v1 = parse_body({"instances": [["a", "x"], ["b", "y"]]}, SETTINGS)
    predictions = orjson.loads(render_response(v1, vectors, model))["predictions"]
    np.testing.assert_array_equal(np.array(predictions, dtype=np.float32), vectors)  # float32 round-trips
    v2 = parse_body(v2_pairs([["a", "x"], ["b", "y"]], [2, 2], id="abc"), SETTINGS)
    out = orjson.loads(render_response(v2, vectors, model))
    assert out["model_name"] == "tiny" and out["model_version"] == "1.0" and out["id"] == "abc"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "embedding" and tensor["datatype"] == "FP32" and tensor["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(tensor["data"], dtype=np.float32).reshape(2, 3), vectors)
    no_version = orjson.loads(render_response(v2, vectors, ModelIdentity("tiny")))
    assert "model_version" not in no_version
