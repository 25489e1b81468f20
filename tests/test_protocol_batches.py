"""One TorchServe dynamic batch that mixes every protocol, through the real handler with a real Context: each
request is answered in the protocol of its route (the headers TorchServe adds), the encoder is called once for
the whole batch, and a bad request fails alone in its own protocol's error shape."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import orjson
import pytest
from ts.context import RequestProcessor

from handler.torchserve_handler import InstructorHandler
from tests.ts_context import make_ts_context, set_batch

PREDICTIONS = {"url_path": "", "explain": "False"}
OPENAI = {"url_path": "v1/embeddings", "explain": "False"}
MODELS = {"url_path": "v1/models", "explain": "False"}
KSERVE = {"explain": "False"}  # /v1/models/<name>:predict and /v2/models/<name>/infer


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_model_dir: Path):
    root = tmp_path_factory.mktemp("mar")
    (root / "model").symlink_to(demo_model_dir, target_is_directory=True)
    context = make_ts_context(root, 1, {"handler": {"warmup": False}}, model_name="demo")
    handler = InstructorHandler()
    handler.initialize(context)
    return handler, context


def binary_v2(rows) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for row in rows for s in row)
    header = orjson.dumps({"inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [len(rows), 2],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}})  # as tritonclient's infer() without outputs
    return header + raw, {**KSERVE, "Inference-Header-Content-Length": str(len(header))}


def test_one_batch_of_every_protocol_makes_one_encoder_call(served, monkeypatch):
    handler, context = served
    pair = ("Represent the title:", "tidal energy")
    binary, binary_headers = binary_v2([pair])
    requests = [
        ({"inputs": list(pair)}, PREDICTIONS),
        ({"model": "demo", "input": [pair[1]], "instruction": pair[0]}, OPENAI),
        ({"instances": [list(pair)]}, KSERVE),
        (binary, binary_headers),
        (None, MODELS),
        ({"inputs": [list(pair)]}, KSERVE),  # a native body on a KServe route: a v2 error
        ({"model": "other", "input": "x"}, OPENAI),
    ]
    set_batch(context, len(requests))
    context.request_processor = [RequestProcessor(headers) for _, headers in requests]
    calls = []
    launch = handler.encoder.launch
    monkeypatch.setattr(handler.encoder, "launch", lambda items: calls.append(len(items)) or launch(items))
    out = handler.handle([{"body": body} for body, _ in requests], context)

    assert calls == [4]  # the four valid embedding requests, one pair each, in one call
    want = handler.encoder.encode([pair]).vectors[0]
    statuses = [context.get_response_status(index)[0] for index in range(len(requests))]
    assert statuses == [200, 200, 200, 200, 200, 400, 404]
    native, openai, v1, v2, models, wrong_route, wrong_model = out
    np.testing.assert_allclose(orjson.loads(native), want, atol=1e-6)
    body = orjson.loads(openai)
    np.testing.assert_allclose(body["data"][0]["embedding"], want, atol=1e-6)
    assert body["usage"]["prompt_tokens"] > 0
    np.testing.assert_allclose(orjson.loads(v1)["predictions"][0], want, atol=1e-6)
    length = int(context.get_response_headers(3)["Inference-Header-Content-Length"])
    assert context.get_response_content_type(3) == "application/octet-stream"
    np.testing.assert_allclose(np.frombuffer(v2[length:], "<f4"), want, atol=1e-6)
    assert orjson.loads(models)["data"][0]["id"] == "demo"
    assert list(orjson.loads(wrong_route)) == ["error"]
    assert orjson.loads(wrong_model)["error"]["code"] == "model_not_found"
