"""KServe v2 as its own clients speak it, against a real TorchServe 0.12 in its Open Inference Protocol mode.

tritonclient with its library defaults (the binary tensor extension for BYTES inputs, ``infer()`` with no
``outputs``, hence raw float32 back) and the ``kserve`` package's InferenceRESTClient (an InferRequest naming
the model in the body, v1 and v2 routes) get InstructorEmbedding 1.0.1's vectors; the health GETs TorchServe
serves itself in that mode (``ts_open_inference_protocol=true``) answer 200, and the ones it does not route are
pinned here as TorchServe answers them, so that docs/kserve.md stays true.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.tiny_models import DENSE_OUT
from tests.torchserve_harness import (
    TorchServe,
    post_bytes,
    served_models,
)

pytestmark = pytest.mark.torchserve

NAME = "tiny"
MODEL = "tiny-instructor-gated"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    model = (tiny_models[MODEL], ("--batch-size", "8", "--max-batch-delay", "20"))
    with served_models(tmp_path_factory.mktemp("store"), {NAME: model},
                       config={"ts_open_inference_protocol": "true"}) as ts:
        yield ts


@pytest.fixture(scope="module")
def reference(reference_fixture):
    expected = reference_fixture["models"][MODEL]["encode"]["pairs"]
    cases = [case for case in reference_fixture["cases"]["pairs"] if expected[case["id"]]["pooled_tokens"] > 0]
    pairs = [(case["instruction"], case["text"]) for case in cases][:16]
    return pairs, np.array([expected[case["id"]]["vector"] for case in cases][:16], dtype=np.float64)


def auth(ts: TorchServe) -> dict[str, str]:
    return {"Authorization": f"Bearer {ts.keys().inference}"}


def close(got, want) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()


def test_tritonclient_with_its_defaults_binary_in_and_raw_float32_out(server, reference):
    import tritonclient.http as triton

    pairs, want = reference
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.ports['inference']}")
    tensor = triton.InferInput("pairs", [len(pairs), 2], "BYTES")
    tensor.set_data_from_numpy(np.array(pairs, dtype=object))  # binary_data=True: the library default
    result = client.infer(NAME, [tensor], headers=auth(server))  # no outputs: all of them, in binary
    output = result.get_output("embedding")
    assert output["datatype"] == "FP32" and output["parameters"]["binary_data_size"] == len(pairs) * DENSE_OUT * 4
    close(result.as_numpy("embedding"), want)

    as_json = triton.InferInput("pairs", [len(pairs), 2], "BYTES")
    as_json.set_data_from_numpy(np.array(pairs, dtype=object), binary_data=False)
    result = client.infer(NAME, [as_json], request_id="triton-1", headers=auth(server),
                          outputs=[triton.InferRequestedOutput("embedding", binary_data=False)])
    assert result.get_response()["id"] == "triton-1" and "data" in result.get_output("embedding")
    close(result.as_numpy("embedding"), want)
    client.close()


def test_tritonclient_health_and_metadata(server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.ports['inference']}")
    assert client.is_server_live(headers=auth(server)) and client.is_server_ready(headers=auth(server))
    assert client.get_server_metadata(headers=auth(server))["name"] == "Torchserve"
    # Not routed by TorchServe 0.12 (its inference API has no per-model v2 GETs): a 404. KServe's model server
    # (the wrapper in deploy/kserve) answers these in a cluster.
    assert not client.is_model_ready(NAME, headers=auth(server))
    with pytest.raises(InferenceServerException):
        client.get_model_metadata(NAME, headers=auth(server))
    client.close()


def test_kserve_rest_client_v2_infer_request_names_the_model_in_the_body(server, reference):
    kserve = pytest.importorskip("kserve", reason="the kserve package is not in the test extras (it pins "
                                 "protobuf < 7, which breaks the spiece.model conversion): pip install kserve")
    InferenceRESTClient, InferInput = kserve.InferenceRESTClient, kserve.InferInput
    InferRequest, RESTConfig = kserve.InferRequest, kserve.RESTConfig

    pairs, want = reference
    base = f"http://127.0.0.1:{server.ports['inference']}"

    async def run() -> tuple:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            answers = []
            for binary in (False, True):
                tensor = InferInput("pairs", [len(pairs), 2], "BYTES")
                tensor.set_data_from_numpy(np.array(pairs, dtype=object), binary_data=binary)
                request = InferRequest(model_name=NAME, infer_inputs=[tensor], request_id=f"kserve-{binary}")
                answers.append(await client.infer(base, request, model_name=NAME, headers=auth(server)))
            live = await client.is_server_live(base, headers=auth(server))
            ready = await client.is_server_ready(base, headers=auth(server))
            v1 = await InferenceRESTClient(RESTConfig(protocol="v1", retries=0)).infer(
                base, {"instances": [list(pair) for pair in pairs]}, model_name=NAME, headers=auth(server))
            return answers, live, ready, v1
        finally:
            await client.close()

    answers, live, ready, v1 = asyncio.run(run())
    for response in answers:
        (output,) = response.outputs
        assert response.model_name == NAME and output.name == "embedding"
        close(output.as_numpy(), want)
    assert live and ready
    close(v1["predictions"], want)


def test_answers_are_in_the_protocol_of_the_route(server):
    json_type = {"Content-Type": "application/json"}
    native = json.dumps({"inputs": [["", "x"]]}).encode()
    status, body = post_bytes(server, f"/v2/models/{NAME}/infer", native, json_type)
    assert status == 400 and list(body) == ["error"] and "inputs[0]" in body["error"], body
    kserve = json.dumps({"instances": [["", "x"]]}).encode()
    status, body = post_bytes(server, f"/predictions/{NAME}", kserve, json_type)
    assert status == 400 and "unknown field 'instances'" in body["message"], body
    # A shape that disagrees with its data is a 400, however large the shape.
    lying = json.dumps({"inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [100000, 2],
                                    "data": ["", "x"]}]}).encode()
    status, body = post_bytes(server, f"/v2/models/{NAME}/infer", lying, json_type)
    assert status == 400 and "inputs[0].data has 2 elements" in body["error"], body
