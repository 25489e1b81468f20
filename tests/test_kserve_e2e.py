"""KServe v1 and v2 through a real TorchServe in production mode, started from the KServe storage layout.

A tiny INSTRUCTOR model is archived with scripts/build_archive.sh --format mar, turned into the storageUri layout by
deploy/kserve/make_storage.py (--token-auth on) and served by TorchServe 0.12 with no envelope; the model loads
at start-up from the layout's model_snapshot and the model API is off. Requests go to the paths KServe uses,
POST /v1/models/<name>:predict and POST /v2/models/<name>/infer, with the inference token.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.kserve_support import free_layout_ports, layout_port_args, make_storage, serve_layout
from tests.tiny_models import DENSE_OUT
from tests.torchserve_harness import TorchServe, build_with_script

pytestmark = pytest.mark.torchserve

NAME = "tiny"
MODEL = "tiny-instructor-gated"
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    store = tmp_path_factory.mktemp("store")
    build_with_script(str(tiny_models[MODEL]), NAME, store, "--format", "mar", "--batch-size", "8",
                      "--max-batch-delay", "20", "--max-pairs-per-request", "64")
    layout = tmp_path_factory.mktemp("kserve-storage")
    ports = free_layout_ports()
    proc = make_storage(store / f"{NAME}.mar", layout, "--force", "--token-auth", "on",
                        *layout_port_args(ports, layout))
    assert proc.returncode == 0, proc.stderr
    with serve_layout(layout, ports, NAME, token=True) as ts:
        yield ts


@pytest.fixture(scope="module")
def reference(reference_fixture):
    """The fixture's pairs and the vectors InstructorEmbedding 1.0.1 produced for them on this model."""
    expected = reference_fixture["models"][MODEL]["encode"]["pairs"]
    # Pairs 1.0.1 pooled nothing for (a zero vector) are refused with 422 instead, in every protocol.
    cases = [case for case in reference_fixture["cases"]["pairs"] if expected[case["id"]]["pooled_tokens"] > 0]
    pairs = [(case["instruction"], case["text"]) for case in cases]
    return pairs, np.array([expected[case["id"]]["vector"] for case in cases], dtype=np.float64)


def v2_body(pairs, **extra):
    return {"inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [len(pairs), 2],
                        "data": [list(pair) for pair in pairs]}], **extra}


def v2_vectors(body: dict) -> np.ndarray:
    (output,) = body["outputs"]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    return np.array(output["data"], dtype=np.float64).reshape(output["shape"])


def test_the_model_is_loaded_at_start_and_the_model_api_is_off(server: TorchServe):
    info = server.describe(NAME)
    assert [w["status"] for w in info["workers"]] == ["READY"]
    assert info["minWorkers"] == info["maxWorkers"] == 1 and info["batchSize"] == 8 and info["maxBatchDelay"] == 20
    # Registering and unregistering are refused; scaling (PUT) is not part of TorchServe's model API switch.
    for method, path in (("POST", f"/models?url={NAME}.mar&initial_workers=1"), ("DELETE", f"/models/{NAME}")):
        resp = server.call(method, path, api="management")
        assert resp.status == 405, (method, path, resp)
    assert [w["status"] for w in server.describe(NAME)["workers"]] == ["READY"]


def test_v1_and_v2_return_the_vectors_of_predictions_and_of_instructor_embedding_1_0_1(server, reference):
    pairs, want = reference
    native = server.call("POST", f"/predictions/{NAME}", {"inputs": [list(p) for p in pairs]})
    assert native.status == 200, native
    answers = {
        "v1 lists": server.call("POST", V1, {"instances": [list(p) for p in pairs]}),
        "v1 objects": server.call("POST", V1, {"instances": [{"instruction": i, "text": t} for i, t in pairs]}),
        "v2 nested": server.call("POST", V2, v2_body(pairs)),
        "v2 flat": server.call("POST", V2, {"inputs": [{"name": "pairs", "datatype": "BYTES",
                                                        "shape": [len(pairs), 2],
                                                        "data": [s for p in pairs for s in p]}]}),
        "v2 named": server.call("POST", V2, {"inputs": [
            {"name": "instruction", "datatype": "BYTES", "shape": [len(pairs)], "data": [i for i, _ in pairs]},
            {"name": "text", "datatype": "BYTES", "shape": [len(pairs)], "data": [t for _, t in pairs]}]}),
    }
    for form, resp in answers.items():
        assert resp.status == 200, (form, resp)
        got = np.array(resp.body["predictions"]) if form.startswith("v1") else v2_vectors(resp.body)
        assert got.shape == (len(pairs), DENSE_OUT), form
        assert np.abs(got - want).max() <= 1e-5, form
        assert np.abs(got - np.array(native.body)).max() == 0, form  # the same bytes as /predictions


def test_v2_answers_carry_model_name_version_and_the_request_id(server):
    resp = server.call("POST", V2, v2_body([("Represent the title:", "tidal energy")], id="req-42"))
    assert resp.status == 200, resp
    assert {k: resp.body[k] for k in ("model_name", "model_version", "id")} == {
        "model_name": NAME, "model_version": "1.0", "id": "req-42"}
    assert resp.body["outputs"][0]["shape"] == [1, DENSE_OUT]


BAD = [
    (V1, {"instances": [["a", "b"], ["only one"]]}, 400, "instances[1]"),
    (V1, {"instances": [{"instruction": "a", "txt": "b"}]}, 400, "instances[0].txt"),
    (V1, {"instances": [["", f"t{i}"] for i in range(65)]}, 413, "'instances' has 65 items"),
    (V1, {"instances": [["", "word " * 600]], "truncate": False}, 422, "pair 0 has"),
    (V2, {"inputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}, 400,
     "inputs[0].datatype"),
    (V2, {"inputs": [{"name": "p", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}]}, 400,
     "inputs[0].shape"),
    (V2, {"inputs": [{"name": "p", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c"]}]}, 400,
     "inputs[0].data has 3 elements"),
    (V2, v2_body([("", "word " * 600)], parameters={"truncate": False}), 422, "pair 0 has"),
    (V2, v2_body([("", "x")], outputs=[{"name": "logits"}]), 400, "outputs[0].name"),
]


@pytest.mark.parametrize("path,body,status,field", BAD, ids=[f"{p[:3]}-{f}" for p, _, _, f in BAD])
def test_bad_kserve_bodies_get_4xx_in_kserve_error_shape_naming_the_field(server, path, body, status, field):
    resp = server.call("POST", path, body)
    assert resp.status == status, resp
    assert list(resp.body) == ["error"] and field in resp.body["error"], resp.body


def test_mixed_protocols_in_concurrent_batches_each_get_their_own_answer(server, reference):
    pairs, want = reference
    jobs = []  # (path, body, row of `want`)
    for row, pair in enumerate(pairs[:24]):
        kind = row % 3
        if kind == 0:
            jobs.append((V1, {"instances": [list(pair)]}, row))
        elif kind == 1:
            jobs.append((V2, v2_body([pair], id=f"r{row}"), row))
        else:
            jobs.append((f"/predictions/{NAME}", {"inputs": list(pair)}, row))
    jobs.insert(5, (V2, {"inputs": [{"name": "p", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, None))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        responses = list(pool.map(lambda job: server.call("POST", job[0], job[1]), jobs))
    for (path, body, row), resp in zip(jobs, responses, strict=True):
        if row is None:
            assert resp.status == 400 and "inputs[0].shape" in resp.body["error"], resp
            continue
        assert resp.status == 200, (path, resp)
        if path == V1:
            got = np.array(resp.body["predictions"][0])
        elif path == V2:
            assert resp.body["id"] == body["id"]
            got = v2_vectors(resp.body)[0]
        else:
            got = np.array(resp.body)
        assert np.abs(got - want[row]).max() <= 1e-5, (path, row)


def test_kserve_paths_need_the_inference_token_too(server):
    for path, body in ((V1, {"instances": [["", "x"]]}), (V2, v2_body([("", "x")]))):
        for token in (None, "wrong", server.keys().management):
            resp = server.call("POST", path, body, token=token)
            assert 400 <= resp.status < 500 and "Token" in str(resp.body), (path, token, resp)


def test_tritonclient_speaks_the_open_inference_protocol_to_it(server, reference):
    """tritonclient's HTTP client is a KServe v2 (Open Inference Protocol) REST client."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    pairs, want = reference
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.ports['inference']}")
    headers = {"Authorization": f"Bearer {server.keys().inference}"}
    tensor = triton.InferInput("pairs", [len(pairs), 2], "BYTES")
    tensor.set_data_from_numpy(np.array(pairs, dtype=object), binary_data=False)
    result = client.infer(NAME, [tensor], request_id="triton-1", headers=headers,
                          outputs=[triton.InferRequestedOutput("embedding", binary_data=False)])
    assert result.get_response()["id"] == "triton-1"
    assert np.abs(result.as_numpy("embedding").astype(np.float64) - want).max() <= 1e-5

    binary = triton.InferInput("pairs", [1, 2], "BYTES")
    binary.set_data_from_numpy(np.array([pairs[0]], dtype=object), binary_data=True)  # the binary extension
    assert np.abs(client.infer(NAME, [binary], headers=headers).as_numpy("embedding") - want[:1]).max() <= 1e-5
    binary = triton.InferInput("pairs", [2, 1], "BYTES")
    binary.set_data_from_numpy(np.array([pairs[0]], dtype=object).reshape(2, 1), binary_data=True)
    with pytest.raises(InferenceServerException) as caught:  # [2, 1] is not [n, 2]
        client.infer(NAME, [binary], headers=headers)
    assert caught.value.status() == "400" and "inputs[0].shape" in caught.value.message()
    client.close()
