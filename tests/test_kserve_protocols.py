"""KServe v1/v2 bodies parse (once) into the same pairs as the native forms; every bad body names its field."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import orjson
import pytest

from handler.errors import InvalidInput, NotFound, PayloadTooLarge
from handler.protocol_kserve import detect
from handler.protocols import ModelIdentity, Protocol, parse_row, render_error, render_reply
from handler.request_state import RequestState
from handler.settings import Settings

MODEL = ModelIdentity("tiny", "1.0", 3)
# What TorchServe adds on /v1/models/<name>:predict and /v2/models/<name>/infer: "explain", no url_path.
KSERVE_ROUTE = {"explain": "False"}
OTHER_ROUTE: dict[str, str] = {}  # /invocations, /models/<name>/invoke: no header at all


def parse(body, headers=None) -> RequestState:
    return parse_row({"body": body}, KSERVE_ROUTE if headers is None else headers, SETTINGS, MODEL)


def parsed(body, headers=None):
    state = parse(body, headers)
    assert state.error is None, state.error
    return state


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
    state = parsed(body)
    assert state.protocol is protocol
    assert state.request.pairs == PAIRS and not state.request.single and state.request.truncate


def test_native_forms_are_native_on_the_routes_that_do_not_say():
    for body in ({"inputs": ["a", "b"]}, {"inputs": [["a", "b"]]}, {"instruction": "a", "sentences": ["b"]}):
        assert parsed(body, OTHER_ROUTE).protocol is Protocol.NATIVE
    assert parsed({"inputs": ["a", "b"]}, OTHER_ROUTE).request.single
    assert parsed({"instances": [["a", "x"]]}, OTHER_ROUTE).protocol is Protocol.V1


def test_on_the_kserve_routes_a_native_body_gets_a_v2_error():
    state = parse({"inputs": [["a", "x"]]})
    assert state.protocol is Protocol.V2 and "inputs[0] must be a tensor object" in state.error.message
    assert orjson.loads(render_error(state.error, state.protocol)) == {"error": state.error.message}
    unreadable = parse(b"{not json")
    assert unreadable.protocol is Protocol.V2 and list(orjson.loads(render_error(unreadable.error, Protocol.V2))) == [
        "error"]


def test_on_predictions_the_route_decides_not_the_body():
    """/predictions/<name> (url_path "") speaks only the native forms: a KServe body there is refused natively."""
    state = parse({"instances": [["a", "x"]]}, {"url_path": ""})
    assert state.protocol is Protocol.NATIVE and "unknown field 'instances'" in state.error.message
    assert set(orjson.loads(render_error(state.error, state.protocol))) == {"code", "type", "message"}


def test_model_name_in_the_body_is_accepted_when_it_is_this_model():
    """The kserve package's InferRequest sends model_name (and model_version) in the body."""
    assert parsed(v2_pairs([["a", "x"]], [1, 2], model_name="tiny", model_version="1.0")).request.pairs == [("a", "x")]
    state = parse(v2_pairs([["a", "x"]], [1, 2], model_name="other"))
    assert isinstance(state.error, NotFound) and "'model_name' is 'other'" in state.error.message
    assert orjson.loads(render_error(state.error, state.protocol)) == {"error": state.error.message}


def binary_body(rows, **extra) -> tuple[bytes, dict[str, str]]:
    """What tritonclient sends by default: a JSON header, then each BYTES element as <uint32 length><utf-8>."""
    raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for row in rows for s in row)
    header = json.dumps({"inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [len(rows), 2],
                                     "parameters": {"binary_data_size": len(raw)}}], **extra}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def test_the_binary_tensor_extension_carries_the_same_pairs_and_asks_for_raw_float32():
    body, headers = binary_body([*PAIRS, ("", "héllo ✓")], parameters={"binary_data_output": True})
    state = parsed(body, headers)
    assert state.protocol is Protocol.V2 and state.request.pairs == [*PAIRS, ("", "héllo ✓")]
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    reply = render_reply(dataclasses.replace(state, vectors=vectors), MODEL)
    length = int(reply.headers["Inference-Header-Content-Length"])
    header = orjson.loads(reply.body[:length])
    assert reply.content_type == "application/octet-stream"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 48} and "data" not in header["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(reply.body[length:], "<f4").reshape(4, 3), vectors)


BINARY_BAD = {
    "length past the body": (lambda b, h: (b, {**h, "Inference-Header-Content-Length": str(len(b) + 1)}),
                             "Inference-Header-Content-Length is"),
    "truncated tensor": (lambda b, h: (b[:-2], h), "binary_data_size is"),
    "trailing bytes": (lambda b, h: (b + b"xx", h), "2 bytes after its tensors"),
    "not a number": (lambda b, h: (b, {**h, "Inference-Header-Content-Length": "x"}), "must be an integer"),
}


@pytest.mark.parametrize("mangle,message", BINARY_BAD.values(), ids=BINARY_BAD.keys())
def test_broken_binary_bodies_get_a_v2_400(mangle, message):
    state = parse(*mangle(*binary_body(PAIRS)))
    assert state.protocol is Protocol.V2 and type(state.error) is InvalidInput and message in state.error.message



def test_one_instruction_of_shape_1_applies_to_every_text():
    assert parsed(v2_named(["Represent:"], ["x", "y"])).request.pairs == [("Represent:", "x"), ("Represent:", "y")]


def test_v1_object_without_instruction_is_plain_text_and_truncate_is_honoured():
    assert parsed({"instances": [{"text": "x"}]}).request.pairs == [("", "x")]
    assert not parsed({"instances": [["a", "x"]], "truncate": False}).request.truncate
    assert not parsed(v2_pairs([["a", "x"]], [1, 2], parameters={"truncate": False})).request.truncate


def test_v2_id_and_requested_json_output_are_accepted():
    body = v2_pairs([["a", "x"]], [1, 2], id="req-7",
                    outputs=[{"name": "embedding", "parameters": {"binary_data": False}}])
    assert parsed(body).request.request_id == "req-7" and not parsed(body).request.binary_output


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
    "v2 binary input without header": ({"inputs": [{"name": "p", "datatype": "BYTES", "shape": [1, 2],
                                                    "data": ["a", "b"], "parameters": {"binary_data_size": 10}}]},
                                       InvalidInput, "needs the header Inference-Header-Content-Length"),
    "v2 shape bigger than data": (v2_pairs(["a", "b"], [1000, 2]), InvalidInput, "inputs[0].data has 2 elements"),
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
}


@pytest.mark.parametrize("body,error_type,message", BAD.values(), ids=BAD.keys())
def test_bad_kserve_bodies_are_refused_in_kserve_shape_naming_the_field(body, error_type, message):
    state = parse(body)
    error = state.error
    assert type(error) is error_type and message in error.message, error.message
    assert state.protocol in (Protocol.V1, Protocol.V2)
    assert orjson.loads(render_error(error, state.protocol)) == {"error": error.message}
    assert error.status in (400, 413)


def test_a_bad_native_body_keeps_the_native_error_shape():
    state = parse(b"{not json", {"url_path": ""})
    assert state.protocol is Protocol.NATIVE
    assert set(orjson.loads(render_error(state.error, Protocol.NATIVE))) == {"code", "type", "message"}


def test_an_unreadable_body_on_a_route_that_does_not_say_gets_both_error_shapes():
    state = parse(b"{not json", OTHER_ROUTE)
    assert state.protocol is Protocol.UNKNOWN
    body = orjson.loads(render_error(state.error, state.protocol))
    assert body["error"] == body["message"] and body["code"] == 400 and "not valid JSON" in body["error"]


def test_detect_by_shape():
    assert detect({"instances": []}) is Protocol.V1
    assert detect({"inputs": [{"name": "x"}]}) is Protocol.V2
    assert detect({"inputs": "oops", "id": "1"}) is Protocol.V2
    assert detect({"inputs": ["a", "b"]}) is Protocol.NATIVE
    assert detect([1]) is Protocol.UNKNOWN


def test_responses_have_each_protocols_shape_and_exact_floats():
    vectors = np.array([[0.1, -0.2, 0.3], [1 / 3, 2 / 3, 1.0]], dtype=np.float32)
    model = ModelIdentity("tiny", "1.0")
    v1 = dataclasses.replace(parsed({"instances": [["a", "x"], ["b", "y"]]}), vectors=vectors)
    predictions = orjson.loads(render_reply(v1, model).body)["predictions"]
    np.testing.assert_array_equal(np.array(predictions, dtype=np.float32), vectors)  # float32 round-trips
    v2 = dataclasses.replace(parsed(v2_pairs([["a", "x"], ["b", "y"]], [2, 2], id="abc")), vectors=vectors)
    out = orjson.loads(render_reply(v2, model).body)
    assert out["model_name"] == "tiny" and out["model_version"] == "1.0" and out["id"] == "abc"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "embedding" and tensor["datatype"] == "FP32" and tensor["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(tensor["data"], dtype=np.float32).reshape(2, 3), vectors)
    no_version = orjson.loads(render_reply(v2, ModelIdentity("tiny")).body)
    assert "model_version" not in no_version
