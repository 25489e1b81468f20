"""The OpenAI embeddings API through a real TorchServe, called by the clients users already have.

The openai client (float and its default base64), LiteLLM and LangChain's OpenAIEmbeddings, each configured as
its own docs say, get InstructorEmbedding 1.0.1's vectors for the tiny models (<= 1e-5): plain texts by default
(1.0.1's ``encode([text])``), an ``instruction`` sent with ``extra_body``, or the archive's
``--default-instruction``. Errors come in OpenAI's shape, which the openai client turns into its own exceptions.
"""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.tiny_models import DENSE_OUT
from tests.torchserve_harness import (
    TorchServe,
    post_bytes,
    served_models,
)

pytestmark = pytest.mark.torchserve

MODEL = "tiny-instructor-gated"
NAME = "tiny"
NAME_WITH_INSTRUCTION = "tiny-titles"
TITLE = "Represent the Science title:"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    models = {NAME: (tiny_models[MODEL], ("--batch-size", "8", "--max-batch-delay", "20")),
              NAME_WITH_INSTRUCTION: (tiny_models[MODEL], ("--default-instruction", TITLE))}
    with served_models(tmp_path_factory.mktemp("store"), models) as ts:
        yield ts


@pytest.fixture(scope="module")
def texts(reference_fixture):
    """Plain texts and 1.0.1's ``encode([text])`` vectors for them."""
    expected = reference_fixture["models"][MODEL]["encode"]["texts"]
    cases = reference_fixture["cases"]["texts"]
    return [case["text"] for case in cases], np.array([expected[c["id"]]["vector"] for c in cases])


@pytest.fixture(scope="module")
def titles(reference_fixture):
    """Texts 1.0.1 embedded with the instruction TITLE, and its vectors."""
    expected = reference_fixture["models"][MODEL]["encode"]["pairs"]
    cases = [case for case in reference_fixture["cases"]["pairs"]
             if case["instruction"] == TITLE and expected[case["id"]]["pooled_tokens"] > 0]
    assert cases, "the fixture has pairs with the instruction " + TITLE
    return [case["text"] for case in cases], np.array([expected[c["id"]]["vector"] for c in cases])


def base_url(ts: TorchServe, name: str = NAME) -> str:
    return f"http://127.0.0.1:{ts.ports['inference']}/predictions/{name}/1.0/v1"


def openai_client(ts: TorchServe, name: str = NAME):
    import openai

    return openai.OpenAI(base_url=base_url(ts, name), api_key=ts.keys().inference, max_retries=0)


def close(got, want) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, np.abs(got - want).max()


def test_openai_client_gets_1_0_1_vectors_in_base64_and_float(server, texts):
    inputs, want = texts
    client = openai_client(server)
    default = client.embeddings.create(model=NAME, input=inputs)  # the client asks for base64 and decodes it
    close([item.embedding for item in default.data], want)
    assert [item.index for item in default.data] == list(range(len(inputs)))
    assert default.model == NAME and default.object == "list"
    assert default.usage.prompt_tokens == default.usage.total_tokens > len(inputs)
    as_float = client.embeddings.create(model=NAME, input=inputs, encoding_format="float")
    close([item.embedding for item in as_float.data], want)
    assert as_float.usage == default.usage
    one = client.embeddings.create(model=NAME, input=inputs[0], dimensions=DENSE_OUT)
    close([one.data[0].embedding], want[:1])


def test_an_instruction_goes_in_extra_body_or_comes_from_the_archive(server, titles):
    inputs, want = titles
    sent = openai_client(server).embeddings.create(model=NAME, input=inputs, extra_body={"instruction": TITLE})
    close([item.embedding for item in sent.data], want)
    default = openai_client(server, NAME_WITH_INSTRUCTION).embeddings.create(model=NAME_WITH_INSTRUCTION,
                                                                              input=inputs)
    close([item.embedding for item in default.data], want)


def test_litellm_embedding_reaches_it_as_an_openai_compatible_server(server, texts):
    import litellm

    inputs, want = texts
    resp = litellm.embedding(model=f"openai/{NAME}", input=inputs, api_base=base_url(server),
                             api_key=server.keys().inference)
    close([item["embedding"] for item in resp.data], want)
    assert resp.usage.prompt_tokens > 0


def test_langchain_openai_embeddings_with_text_inputs(server, texts):
    from langchain_openai import OpenAIEmbeddings

    inputs, want = texts
    embeddings = OpenAIEmbeddings(model=NAME, base_url=base_url(server), api_key=server.keys().inference,
                                  check_embedding_ctx_length=False, max_retries=0)
    close(embeddings.embed_documents(inputs), want)
    close([embeddings.embed_query(inputs[0])], want[:1])


def test_the_model_list_names_the_served_model(server):
    models = openai_client(server).models.list()
    assert [model.id for model in models.data] == [NAME]


def test_errors_come_in_openai_shape_and_become_the_clients_exceptions(server):
    import openai

    client = openai_client(server)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=NAME, input=[[101, 2023, 102]])
    assert "token arrays are not accepted" in caught.value.body["message"]
    assert caught.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=NAME, input="x", dimensions=DENSE_OUT // 2)
    assert caught.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=NAME, input=[])
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=NAME, input="x", extra_body={"instructions": TITLE})
    assert "unknown field 'instructions'" in caught.value.body["message"]


def test_a_route_that_does_not_exist_is_a_404_naming_the_routes(server):
    resp = server.call("POST", f"/predictions/{NAME}/1.0/v1/completions", {"model": NAME, "prompt": "x"})
    assert resp.status == 404 and "v1/embeddings" in resp.body["message"], resp


def test_openai_and_native_requests_share_dynamic_batches(server, texts):
    """Concurrent requests of both protocols: each gets its own shape and 1.0.1's vector."""
    inputs, want = texts
    client = openai_client(server)

    def one(index: int):
        text = inputs[index % len(inputs)]
        if index % 2:
            return client.embeddings.create(model=NAME, input=text).data[0].embedding
        resp = server.call("POST", f"/predictions/{NAME}", {"inputs": ["", text]})
        assert resp.status == 200, resp
        return resp.body

    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(one, range(32)))
    close(got, np.array([want[i % len(inputs)] for i in range(32)]))


def test_curl_without_a_content_type_gets_a_400_saying_what_to_send(server):
    """curl -d sends application/x-www-form-urlencoded unless told otherwise."""
    body = json.dumps({"inputs": ["", "x"]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.ports['inference']}/predictions/{NAME}", data=body,
                                     headers={"Authorization": f"Bearer {server.keys().inference}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    error = json.loads(caught.value.read())
    assert caught.value.code == 400 and "Content-Type: application/json" in error["message"], error


def test_an_empty_or_compressed_body_is_told_the_forms_of_the_route_it_called(server):
    """Not this project's native forms on the OpenAI or KServe routes, nor "not valid JSON" for gzip."""
    openai_route = f"/predictions/{NAME}/1.0/v1/embeddings"
    status, body = post_bytes(server, openai_route, b"  ", JSON)
    assert status == 400 and f'{{"model": "{NAME}", "input"' in body["error"]["message"], body
    assert '"inputs"' not in body["error"]["message"]
    for path in (f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"):
        status, body = post_bytes(server, path, b"  ", JSON)
        assert status == 400 and '{"instances"' in body["error"] and '"datatype": "BYTES"' in body["error"], body
    status, body = post_bytes(server, f"/predictions/{NAME}", b"", JSON)
    assert status == 400 and '{"inputs": [instruction, sentence]}' in body["message"], body
    compressed = gzip.compress(json.dumps({"model": NAME, "input": "x"}).encode())
    status, body = post_bytes(server, openai_route, compressed, {**JSON, "Content-Encoding": "gzip"})
    assert status == 400 and "Content-Encoding: gzip" in body["error"]["message"], body
    assert post_bytes(server, openai_route, json.dumps({"model": NAME, "input": "x"}).encode(),
                      {**JSON, "Content-Encoding": "identity"})[0] == 200


def test_a_multipart_upload_of_the_json_file_is_embedded(server, texts):
    """curl -F 'file=@body.json': the one uploaded part is the body, whatever its field name."""
    inputs, want = texts
    boundary = "----instructor-test"
    part = json.dumps({"inputs": ["", inputs[0]]})
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"body.json\"\r\n"
            f"Content-Type: application/json\r\n\r\n{part}\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.ports['inference']}/predictions/{NAME}", data=body,
                                     headers={"Authorization": f"Bearer {server.keys().inference}",
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        close([json.loads(resp.read())], want[:1])
