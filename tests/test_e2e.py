"""End to end over HTTP: a tiny INSTRUCTOR model archived and registered WITH THE SCRIPTS, served by a real
TorchServe with the repo's configuration (token auth on, one pinned worker).

What is proven here and nowhere else: the archive's settings reach TorchServe, the served vectors equal
InstructorEmbedding 1.0.1's through the whole path (HTTP, frontend, dynamic batching, JSON), and the
handler's metrics reach Prometheus. Tokens, hostile input, load, worker death, registration sources and
stopping are tested in tests/test_reliability.py; request forms and per-request errors in
tests/test_handler_unit.py.
"""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from scripts.torchserve_ctl import base_url
from tests.torchserve_harness import (
    TorchServe,
    served_models,
)

pytestmark = pytest.mark.torchserve

NAME = "tiny"
INSTRUCTION = "Represent the Science title:"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    model = (tiny_models["tiny-instructor-gated"], ("--batch-size", "8", "--max-batch-delay", "20"))
    with served_models(tmp_path_factory.mktemp("store"), {NAME: model}) as ts:
        yield ts


def embed(ts: TorchServe, body: dict):
    return ts.call("POST", f"/predictions/{NAME}", body)


def test_the_archive_batching_reaches_torchserve_with_exactly_one_ready_worker(server: TorchServe):
    info = server.describe(NAME)
    assert info["minWorkers"] == info["maxWorkers"] == 1
    assert [w["status"] for w in info["workers"]] == ["READY"]
    assert (info["batchSize"], info["maxBatchDelay"]) == (8, 20)


def test_served_vectors_equal_instructor_embedding_1_0_1(server: TorchServe, reference_fixture):
    """One batch request, and every pair as its own concurrent request (so TorchServe batches them)."""
    expected = reference_fixture["models"]["tiny-instructor-gated"]["encode"]["pairs"]
    # Pairs 1.0.1 pooled nothing for (a zero vector) are refused with 422 instead: the reliability tests cover that.
    cases = [c for c in reference_fixture["cases"]["pairs"] if expected[c["id"]]["pooled_tokens"] > 0]
    want = np.array([expected[case["id"]]["vector"] for case in cases])
    resp = embed(server, {"inputs": [[case["instruction"], case["text"]] for case in cases]})
    assert resp.status == 200, resp
    assert np.abs(np.array(resp.body) - want).max() <= 1e-5
    with ThreadPoolExecutor(max_workers=16) as pool:
        singles = list(pool.map(lambda c: embed(server, {"inputs": [c["instruction"], c["text"]]}), cases))
    assert [r.status for r in singles] == [200] * len(cases)
    assert np.abs(np.array([r.body for r in singles]) - want).max() <= 1e-5


def test_handler_metrics_reach_prometheus_without_a_token(server: TorchServe):
    assert embed(server, {"inputs": [INSTRUCTION, "counted"]}).status == 200
    resp = server.call("GET", "/metrics", api="metrics", token=None)
    assert resp.status == 200
    items = re.search(rf'^InstructorItems{{ModelName="{NAME}",[^}}]*}} ([0-9.]+)$', resp.body, re.M)
    assert items and float(items.group(1)) >= 1, resp.body[:2000]
    assert f'InstructorEncodeSeconds_count{{ModelName="{NAME}"' in resp.body


def test_raw_float32_replies_and_token_counts_cross_the_frontend_intact(server: TorchServe):
    """The project's compact transport through real TorchServe: Accept: application/octet-stream gives the
    JSON answer's float32 values bit for bit, with the dimension and the tokens used in response headers."""
    body = {"inputs": [[INSTRUCTION, "3D ActionSLAM: wearable person tracking"], ["", "plain text"]]}
    as_json = embed(server, body)
    assert as_json.status == 200
    request = urllib.request.Request(
        base_url(server.props, "inference") + f"/predictions/{NAME}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {server.keys().inference}", "Content-Type": "application/json",
                 "Accept": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        raw, headers = resp.read(), resp.headers
    assert headers["Content-Type"] == "application/octet-stream"
    vectors = np.frombuffer(raw, "<f4").reshape(-1, int(headers["X-Instructor-Dimension"]))
    assert np.array_equal(vectors, np.array(as_json.body, dtype=np.float32))
    assert int(headers["X-Instructor-Tokens"]) > 2
    # q=0 means "not acceptable": such a client gets JSON, as does one that prefers JSON.
    for accept in ("application/octet-stream;q=0, application/json",
                   "application/json, application/octet-stream;q=0.5"):
        request.headers["Accept"] = accept  # urllib keeps headers under capitalized names
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert resp.headers["Content-Type"] == "application/json", accept
            assert np.array_equal(np.array(json.loads(resp.read()), dtype=np.float32), vectors), accept


def test_customized_describe_answers_200_with_the_model_facts_and_counts_no_error(server: TorchServe):
    def errors() -> float:
        text = server.call("GET", "/metrics", api="metrics", token=None).body
        return sum(float(v) for v in re.findall(rf'^InstructorErrors{{ModelName="{NAME}"[^}}]*}} ([0-9.]+)$', text,
                                                re.M))

    before = errors()
    resp = server.call("GET", f"/models/{NAME}?customized=true", api="management")
    assert resp.status == 200, resp
    facts = resp.body[0]["customizedMetadata"]
    assert facts["dimension"] > 0 and facts["max_seq_length"] > 0 and facts["batch_budgets"]["tokens"] > 0
    assert errors() == before
