"""Retries against a real full queue: a TorchServe whose job queue holds one request answers 503 to the
rest of a concurrent burst; the client backs off, retries and still returns every vector in order."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from instructor_client import AsyncInstructorClient, InstructorClient, ServiceUnavailableError
from tests.torchserve_harness import TorchServe, build_with_script, register_with_script, running_torchserve

pytestmark = pytest.mark.torchserve

NAME = "tiny"
PAIRS = [("Represent the Science title:", f"paper {i} on topic {i % 7}") for i in range(24)]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    # Batches of one, so the burst queues up behind the worker instead of being served in one batch.
    build_with_script(str(tiny_models["tiny-instructor-relu"]), NAME, store, "--batch-size", "1",
                      "--max-batch-delay", "1")
    with running_torchserve(store, config={"job_queue_size": "1"}) as ts:
        register_with_script(ts, NAME, "--workers", "1")
        yield ts


@pytest.fixture(scope="module")
def expected(server: TorchServe) -> np.ndarray:
    resp = server.call("POST", f"/predictions/{NAME}", {"inputs": [list(p) for p in PAIRS]})
    assert resp.status == 200, resp
    return np.array(resp.body, dtype=np.float32)


def test_a_burst_over_the_queue_gets_503_without_retries(server):
    with InstructorClient(server.inference_url, NAME, key_file=server.key_file, max_retries=0) as client, \
            pytest.raises(ServiceUnavailableError) as caught:
        client.embed(PAIRS, batch_size=1, concurrency=8)
    assert caught.value.status == 503


def test_the_client_backs_off_and_retries_until_every_pair_is_embedded(server, expected):
    with InstructorClient(server.inference_url, NAME, key_file=server.key_file, max_retries=12) as client:
        got = client.embed(PAIRS, batch_size=1, concurrency=8)
    np.testing.assert_allclose(np.array(got, dtype=np.float32), expected, rtol=0, atol=1e-6)
    assert client.retries > 0  # the queue really was full, and the client rode it out


def test_the_async_client_retries_too(server, expected):
    async def run():
        async with AsyncInstructorClient(server.inference_url, NAME, key_file=server.key_file,
                                         max_retries=12) as client:
            return await client.embed(PAIRS, batch_size=1, concurrency=8), client.retries

    got, retries = asyncio.run(run())
    np.testing.assert_allclose(np.array(got, dtype=np.float32), expected, rtol=0, atol=1e-6)
    assert retries > 0
