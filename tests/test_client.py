"""The Python client and the LangChain / LlamaIndex adapters against a real TorchServe (one per module)
serving a tiny INSTRUCTOR model: order, splitting over the 256-pair limit, typed errors with the caller's
index, tokens, and vectors equal to the server's own /predictions answers and to InstructorEmbedding 1.0.1."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from instructor_client import (
    DEFAULT_EMBED_INSTRUCTION,
    DEFAULT_QUERY_INSTRUCTION,
    AsyncInstructorClient,
    AuthenticationError,
    InstructorClient,
    InvalidPairError,
    PayloadTooLargeError,
)
from tests.served_vectors import assert_same
from tests.served_vectors import served as served_vectors
from tests.torchserve_harness import TorchServe, build_with_script, free_ports, register_with_script, running_torchserve

pytestmark = pytest.mark.torchserve

NAME = "tiny"
MODEL = "tiny-instructor-gated"
TOO_LONG = "x" * 20001  # over the server's max_chars_per_text (20000): 413 naming the field


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_with_script(str(tiny_models[MODEL]), NAME, store, "--batch-size", "8", "--max-batch-delay", "5")
    with running_torchserve(store) as ts:
        register_with_script(ts, NAME, "--workers", "1")
        yield ts


@pytest.fixture
def client(server: TorchServe):
    with InstructorClient(server.inference_url, NAME, key_file=server.key_file) as c:
        yield c


def served(ts: TorchServe, pairs) -> np.ndarray:
    return served_vectors(ts, NAME, pairs)



def corpus(n: int) -> list[tuple[str, str]]:
    instructions = ["Represent the Science title:", "Represent the question for retrieval:", ""]
    return [(instructions[i % 3], f"document {i}: " + "word " * (i % 17)) for i in range(n)]


def fixture_cases(reference_fixture):
    """The fixture's pairs that have something to embed (the server refuses the others with 422)."""
    vectors = reference_fixture["models"][MODEL]["encode"]["pairs"]
    cases = [c for c in reference_fixture["cases"]["pairs"] if vectors[c["id"]]["pooled_tokens"] > 0]
    return cases, np.array([vectors[c["id"]]["vector"] for c in cases])


def test_more_pairs_than_one_request_takes_come_back_whole_and_in_order(server, client):
    pairs = corpus(600)
    refused = server.call("POST", f"/predictions/{NAME}", {"inputs": [list(p) for p in pairs[:300]]})
    assert refused.status == 413, refused  # the limit the client must split under is real
    want = served(server, pairs)
    for batch_size, concurrency in ((256, 2), (7, 4)):
        got = client.embed(pairs, batch_size=batch_size, concurrency=concurrency)
        assert len(got) == 600
        assert_same(got, want)
    assert client.retries == 0


def test_the_async_client_returns_the_same_vectors(server):
    pairs = corpus(300)

    async def run():
        async with AsyncInstructorClient(server.inference_url, NAME, key_file=server.key_file) as c:
            return await c.embed(pairs, batch_size=50, concurrency=3), await c.embed_one(*pairs[7])

    many, one = asyncio.run(run())
    want = served(server, pairs)
    assert_same(many, want)
    assert_same(one, want[7])


def test_client_vectors_equal_instructor_embedding_1_0_1(client, reference_fixture):
    cases, want = fixture_cases(reference_fixture)
    got = client.embed([(c["instruction"], c["text"]) for c in cases], batch_size=5)
    assert np.abs(np.array(got) - want).max() <= 1e-5
    single = client.embed_one(cases[0]["instruction"], cases[0]["text"])
    assert np.abs(np.array(single) - want[0]).max() <= 1e-5


def test_a_refused_pair_raises_a_typed_error_with_its_index_in_the_callers_input(server, client):
    pairs = corpus(300)
    pairs[270] = ("Represent the title:", TOO_LONG)  # in the second request (256..299): its item 14
    with pytest.raises(PayloadTooLargeError) as caught:
        client.embed(pairs, batch_size=256, concurrency=1)
    error = caught.value
    assert (error.status, error.type, error.index, error.request_index) == (413, "PayloadTooLarge", 270, 14)
    assert error.body["code"] == 413 and error.message.startswith("inputs[14][1] (sentence) has 20001 characters")

    async def run():
        async with AsyncInstructorClient(server.inference_url, NAME, key_file=server.key_file) as c:
            await c.embed(pairs, batch_size=100)

    with pytest.raises(PayloadTooLargeError) as caught:
        asyncio.run(run())
    assert (caught.value.index, caught.value.request_index) == (270, 70)


def test_pairs_that_are_not_two_strings_are_refused_before_sending(client):
    with pytest.raises(InvalidPairError) as caught:
        client.embed([("a", "b"), ("a", None), ("c",)])
    assert caught.value.index == 1 and "pairs[1]" in str(caught.value)
    with pytest.raises(InvalidPairError, match=r"pairs\[0\].*lone surrogate"):
        client.embed([("", "\ud800")])
    assert client.embed([]) == []


def test_the_token_comes_from_the_key_file_the_environment_or_the_argument(server, monkeypatch):
    pair = ("Represent the title:", "tokens")
    want = served(server, [pair])[0]
    monkeypatch.delenv("INSTRUCTOR_SERVE_TOKEN", raising=False)
    with InstructorClient(server.inference_url, NAME) as anonymous, pytest.raises(AuthenticationError):
        anonymous.embed_one(*pair)
    monkeypatch.setenv("INSTRUCTOR_SERVE_TOKEN", server.keys().inference)
    with InstructorClient(server.inference_url, NAME) as from_env:
        assert_same(from_env.embed_one(*pair), want)
    with InstructorClient(server.inference_url, NAME, token="wrong") as wrong, \
            pytest.raises(AuthenticationError) as caught:
        wrong.embed_one(*pair)
    assert wrong.retries == 0 and "Token Authorization failed" in caught.value.message
    with InstructorClient(server.inference_url, NAME, token=server.keys().inference) as explicit:
        assert_same(explicit.embed_one(*pair), want)


def test_requests_spread_over_servers_and_skip_one_that_is_down(server):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    key = server.keys().inference
    with InstructorClient([dead, server.inference_url], NAME, token=[key, key], max_retries=4) as client:
        pairs = corpus(40)
        got = client.embed(pairs, batch_size=4, concurrency=2)
    assert_same(got, served(server, pairs))
    assert client.retries >= 1  # every other request went to the dead server first


def test_langchain_embeddings_equal_the_served_pairs_with_langchains_instructions(server):
    from langchain_core.embeddings import Embeddings

    from instructor_client.langchain import InstructorEmbeddings

    emb = InstructorEmbeddings(url=server.inference_url, model=NAME, key_file=str(server.key_file))
    assert isinstance(emb, Embeddings)
    assert emb.embed_instruction == "Represent the document for retrieval: "
    assert emb.query_instruction == "Represent the question for retrieving supporting documents: "
    texts = ["tidal power", "a bread recipe", "graph neural networks"]
    docs = served(server, [(DEFAULT_EMBED_INSTRUCTION, t) for t in texts])
    query = served(server, [(DEFAULT_QUERY_INSTRUCTION, "how do tides make power?")])[0]
    assert_same(emb.embed_documents(texts), docs)
    assert_same(emb.embed_query("how do tides make power?"), query)
    assert_same(asyncio.run(emb.aembed_documents(texts)), docs)
    assert_same(asyncio.run(emb.aembed_query("how do tides make power?")), query)


def test_langchain_embeddings_equal_instructor_embedding_1_0_1(server, reference_fixture):
    from instructor_client.langchain import InstructorEmbeddings

    cases, want = fixture_cases(reference_fixture)
    for instruction in sorted({c["instruction"] for c in cases}):
        rows = [i for i, c in enumerate(cases) if c["instruction"] == instruction]
        emb = InstructorEmbeddings(url=server.inference_url, model=NAME, key_file=str(server.key_file),
                                   embed_instruction=instruction, query_instruction=instruction)
        got = emb.embed_documents([cases[i]["text"] for i in rows])
        assert np.abs(np.array(got) - want[rows]).max() <= 1e-5, instruction
        assert np.abs(np.array(emb.embed_query(cases[rows[0]]["text"])) - want[rows[0]]).max() <= 1e-5


def test_llama_index_embedding_equals_the_served_pairs_with_its_defaults(server):
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from instructor_client.llama_index import InstructorEmbedding

    emb = InstructorEmbedding(url=server.inference_url, model_name=NAME, key_file=str(server.key_file))
    assert isinstance(emb, BaseEmbedding) and emb.embed_batch_size == 10
    texts = [f"note {i} about tides" for i in range(23)]  # 3 batches of embed_batch_size
    docs = served(server, [(DEFAULT_EMBED_INSTRUCTION, t) for t in texts])
    query = served(server, [(DEFAULT_QUERY_INSTRUCTION, "tides?")])[0]
    assert_same(emb.get_text_embedding_batch(texts), docs)
    assert_same(emb.get_text_embedding(texts[4]), docs[4])
    assert_same(emb.get_query_embedding("tides?"), query)
    assert_same(asyncio.run(emb.aget_text_embedding_batch(texts)), docs)
    assert_same(asyncio.run(emb.aget_query_embedding("tides?")), query)


def test_llama_index_embedding_equals_instructor_embedding_1_0_1(server, reference_fixture):
    from instructor_client.llama_index import InstructorEmbedding

    cases, want = fixture_cases(reference_fixture)
    for instruction in sorted({c["instruction"] for c in cases}):
        rows = [i for i, c in enumerate(cases) if c["instruction"] == instruction]
        emb = InstructorEmbedding(url=server.inference_url, model_name=NAME, key_file=str(server.key_file),
                                  text_instruction=instruction, query_instruction=instruction)
        got = emb.get_text_embedding_batch([cases[i]["text"] for i in rows])
        assert np.abs(np.array(got) - want[rows]).max() <= 1e-5, instruction
        assert np.abs(np.array(emb.get_query_embedding(cases[rows[0]]["text"])) - want[rows[0]]).max() <= 1e-5


def test_large_texts_are_split_under_the_servers_body_limit(server, client):
    """200 texts of 15,000 characters are ~3 MB of JSON: one request would get TorchServe's bare 413."""
    pairs = [("Represent the document:", f"document {i} " + "word " * 3000) for i in range(200)]
    body = sum(len(text) for _, text in pairs)
    limit = int(server.props["max_request_size"])
    assert body > limit  # the case is real: it does not fit one request
    got = client.embed(pairs, batch_size=256)
    assert len(got) == 200
    assert_same(got[:3], served(server, pairs[:3]))
