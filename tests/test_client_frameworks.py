"""The client as INSTRUCTOR, sentence-transformers, LangChain and LlamaIndex users write it, against a real
TorchServe serving a tiny INSTRUCTOR model: ``encode`` returns 1.0.1's vectors in 1.0.1's types, the adapters
take their upstream classes' arguments and survive copy / pickle / to_dict, LangChain's own standard embedding
suites pass, and LlamaIndex builds and queries an index with the adapter as its embed model."""

from __future__ import annotations

import asyncio
import copy
import pickle

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from instructor_client import AsyncInstructorClient, InstructorClient
from instructor_client.langchain import InstructorEmbeddings
from instructor_client.llama_index import InstructorEmbedding
from tests.tiny_models import DENSE_OUT
from tests.torchserve_harness import (
    TorchServe,
    served_models,
)

pytestmark = pytest.mark.torchserve

NAME = "tiny"
MODEL = "tiny-instructor-gated"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    model = (tiny_models[MODEL], ("--batch-size", "8", "--max-batch-delay", "5"))
    with served_models(tmp_path_factory.mktemp("store"), {NAME: model}) as ts:
        yield ts


@pytest.fixture(scope="module")
def pairs_1_0_1(reference_fixture):
    expected = reference_fixture["models"][MODEL]["encode"]["pairs"]
    cases = [case for case in reference_fixture["cases"]["pairs"] if expected[case["id"]]["pooled_tokens"] > 0]
    return [[c["instruction"], c["text"]] for c in cases], np.array([expected[c["id"]]["vector"] for c in cases])


@pytest.fixture(scope="module")
def texts_1_0_1(reference_fixture):
    expected = reference_fixture["models"][MODEL]["encode"]["texts"]
    cases = reference_fixture["cases"]["texts"]
    return [c["text"] for c in cases], np.array([expected[c["id"]]["vector"] for c in cases])


@pytest.fixture
def model(server: TorchServe):
    with InstructorClient(server.inference_url, NAME, key_file=server.key_file) as client:
        yield client


def close(got, want) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()


# --- encode, as INSTRUCTOR.encode / SentenceTransformer.encode ------------------------------------------------

def test_encode_takes_pairs_and_strings_and_returns_numpy_like_1_0_1(server, model, pairs_1_0_1, texts_1_0_1):
    pairs, want = pairs_1_0_1
    got = model.encode(pairs, batch_size=8)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (len(pairs), DENSE_OUT)
    close(got, want)
    texts, want_texts = texts_1_0_1
    close(model.encode(texts), want_texts)
    one = model.encode(texts[0])  # one string: one vector, as 1.0.1 returns it
    assert one.shape == (DENSE_OUT,)
    close(one, want_texts[0])
    rows = model.encode(pairs[:3], convert_to_numpy=False, normalize_embeddings=True, show_progress_bar=False,
                        device="cuda")  # device: accepted, the server's computes
    assert isinstance(rows, list) and len(rows) == 3 and all(isinstance(r, np.ndarray) for r in rows)
    np.testing.assert_allclose(np.linalg.norm(np.array(rows), axis=1), 1.0, atol=1e-6)
    close(asyncio.run(_aencode(server, pairs)), want)


def test_encode_of_no_sentences_is_an_empty_result_as_sentence_transformers_returns(server, model):
    # No row: nothing to send and no dimension to shape; 1.0.1's users get the empty array they got before.
    empty = model.encode([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0,) and empty.dtype == np.float32
    assert model.encode([], convert_to_numpy=False) == []
    assert model.encode([], normalize_embeddings=True).shape == (0,)
    assert tuple(model.encode([], convert_to_tensor=True).shape) == (0,)
    assert asyncio.run(_aencode(server, [])).shape == (0,)
    # A vector store adding no documents asks for none: LangChain's adapter answers [], normalized or not.
    for kwargs in ({}, {"normalize_embeddings": True}):
        emb = InstructorEmbeddings(url=server.inference_url, model_name=NAME, key_file=server.key_file,
                                   encode_kwargs=kwargs)
        assert emb.embed_documents([]) == [] and asyncio.run(emb.aembed_documents([])) == [], kwargs


def test_encode_takes_numpy_arrays_as_1_0_1_and_sentence_transformers_do(model, pairs_1_0_1, texts_1_0_1):
    # model.encode(df["text"].values) is how many users call it; it was a TypeError.
    pairs, want = pairs_1_0_1
    texts, want_texts = texts_1_0_1
    close(model.encode(np.array(texts)), want_texts)
    close(model.encode(np.array([list(pair) for pair in pairs]), batch_size=8), want)


async def _aencode(server: TorchServe, pairs):
    async with AsyncInstructorClient(server.inference_url, NAME, key_file=server.key_file) as client:
        return await client.encode(pairs)


BAD_ENCODE = {
    "mixed rows": ([["a", "b"], "c"], ValueError, "sentences[1] is a string but sentences[0] is a pair"),
    "a triple": ([["a", "b", "c"]], ValueError, "sentences[0] must be [instruction, text]"),
    "tokens": ({"a": 1}, TypeError, "sentences must be"),
}


@pytest.mark.parametrize("sentences,error,message", BAD_ENCODE.values(), ids=BAD_ENCODE.keys())
def test_encode_refuses_what_1_0_1_would_embed_wrongly(model, sentences, error, message):
    with pytest.raises(error) as caught:
        model.encode(sentences)
    assert message in str(caught.value)
    with pytest.raises(ValueError, match="output_value"):
        model.encode(["x"], output_value="token_embeddings")


# --- LangChain ---------------------------------------------------------------------------------------------

def test_langchain_takes_upstream_arguments_and_survives_copy_and_pickle(server, pairs_1_0_1):
    pairs, want = pairs_1_0_1
    instruction = pairs[0][0]
    rows = [i for i, pair in enumerate(pairs) if pair[0] == instruction]
    emb = InstructorEmbeddings(url=server.inference_url, model_name=NAME, key_file=server.key_file,
                               embed_instruction=instruction, query_instruction=instruction,
                               encode_kwargs={"batch_size": 4, "normalize_embeddings": True},
                               model_kwargs={"device": "cpu"}, timeout=60)
    texts = [pairs[i][1] for i in rows]
    for clone in (emb, copy.copy(emb), copy.deepcopy(emb), pickle.loads(pickle.dumps(emb)),
                  InstructorEmbeddings.model_validate(emb.model_dump())):
        close(clone.embed_documents(texts), want[rows])
        close([clone.embed_query(texts[0])], want[rows[:1]])
    with pytest.raises(ValueError, match=r"encode_kwargs\['prompt_name'\]"):
        InstructorEmbeddings(model_name=NAME, encode_kwargs={"prompt_name": "query"})
    with pytest.raises(ValueError, match=r"model_kwargs\['trust_remote_code'\]"):
        InstructorEmbeddings(model_name=NAME, model_kwargs={"trust_remote_code": True})
    with pytest.raises(TypeError, match="'multi_process'"):
        InstructorEmbeddings(model_name=NAME, multi_process=True)


class TestLangChainStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[InstructorEmbeddings]:
        return InstructorEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": NAME, "token": "not-used-offline"}


@pytest.mark.asyncio  # the suite's async tests (pytest-asyncio comes with langchain-tests)
class TestLangChainStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[InstructorEmbeddings]:
        return InstructorEmbeddings

    @pytest.fixture
    def model(self, server: TorchServe) -> InstructorEmbeddings:
        return InstructorEmbeddings(url=server.inference_url, model_name=NAME, key_file=server.key_file)


# --- LlamaIndex --------------------------------------------------------------------------------------------

def test_llama_index_round_trips_through_to_dict_copy_and_pickle(server, pairs_1_0_1):
    pairs, want = pairs_1_0_1
    instruction = pairs[0][0]
    rows = [i for i, pair in enumerate(pairs) if pair[0] == instruction]
    emb = InstructorEmbedding(url=server.inference_url, model_name=NAME, key_file=server.key_file,
                              text_instruction=instruction, query_instruction=instruction, embed_batch_size=3,
                              num_workers=2, device="cuda", cache_folder=None, timeout=60)
    texts = [pairs[i][1] for i in rows]
    data = emb.to_dict()
    assert data["class_name"] == "InstructorServeEmbedding" and data["num_workers"] == 2
    for clone in (emb, InstructorEmbedding.from_dict(data), copy.copy(emb), copy.deepcopy(emb),
                  pickle.loads(pickle.dumps(emb))):
        close(clone.get_text_embedding_batch(texts), want[rows])
        close([clone.get_query_embedding(texts[0])], want[rows[:1]])
        close(asyncio.run(clone.aget_text_embedding_batch(texts)), want[rows])
    with pytest.raises(TypeError, match="'trust_remote_code'"):
        InstructorEmbedding(model_name=NAME, trust_remote_code=True)


def test_llama_index_builds_and_queries_an_index_with_it(server):
    """LlamaIndex's contract as its users meet it: Settings.embed_model, an index, a retriever."""
    from llama_index.core import Document, Settings, VectorStoreIndex

    emb = InstructorEmbedding(url=server.inference_url, model_name=NAME, key_file=server.key_file)
    previous = Settings._embed_model
    Settings.embed_model = emb
    try:
        docs = [Document(text=t) for t in ("tidal energy from ocean currents", "a sourdough bread recipe",
                                           "graph neural networks for molecules")]
        index = VectorStoreIndex.from_documents(docs)
        nodes = index.as_retriever(similarity_top_k=3).retrieve("tidal energy from ocean currents")
    finally:
        Settings._embed_model = previous
    assert len(nodes) == 3 and nodes[0].node.get_content() == "tidal energy from ocean currents"
