"""A dynamic batch's cost is bounded, and what the core refuses stays with its own request.

The handler with a real ts Context on a tiny INSTRUCTOR model: a request over the batch's character or token
budget alone gets 413, requests beyond it get 503 (retry) while the earlier ones are answered, a pair whose
instruction covers its text gets 422 naming the pair, and base64 responses decode to the float32 vectors.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from handler.torchserve_handler import InstructorHandler, render_vectors
from tests.ts_context import make_handler as _make_handler
from tests.ts_context import set_batch

INSTRUCTION = "Represent the Science title:"


def make_handler(tmp_path, model_dir, **handler_settings) -> tuple[InstructorHandler, object]:
    return _make_handler(tmp_path, model_dir, handler_settings)


def run(handler: InstructorHandler, context, bodies: list) -> list[tuple[int, object]]:
    set_batch(context, len(bodies))
    out = handler.handle([{"body": body} for body in bodies], context)
    return [(context.get_response_status(i)[0], orjson.loads(raw)) for i, raw in enumerate(out)]


@pytest.fixture(scope="module")
def char_budgeted(tmp_path_factory, tiny_models):
    # 1,200 characters per dynamic batch: small enough to reach with a few requests.
    return make_handler(tmp_path_factory.mktemp("chars"), tiny_models["tiny-instructor-relu"],
                        max_batch_request_chars=1200, max_batch_request_tokens=1_000_000)


@pytest.fixture(scope="module")
def token_budgeted(tmp_path_factory, tiny_models):
    return make_handler(tmp_path_factory.mktemp("tokens"), tiny_models["tiny-instructor-relu"],
                        max_batch_request_chars=1_000_000, max_batch_request_tokens=200)


def test_requests_beyond_the_batch_character_budget_get_503_and_the_rest_are_served(char_budgeted):
    handler, context = char_budgeted
    body = {"instruction": INSTRUCTION, "sentences": ["a sentence of some length " * 4] * 3}  # ~390 chars
    results = run(handler, context, [body] * 4)
    assert [status for status, _ in results] == [200, 200, 200, 503]
    assert results[3][1]["type"] == "Overloaded" and "max_batch_request_chars" in results[3][1]["message"]
    alone = run(handler, context, [body])  # retried alone, it is served, identically
    assert alone[0][0] == 200
    np.testing.assert_allclose(alone[0][1], results[0][1], atol=1e-6)


def test_a_request_over_a_budget_alone_gets_413_naming_the_setting(char_budgeted, token_budgeted):
    handler, context = char_budgeted
    results = run(handler, context, [{"inputs": ["", "x" * 1300]}, {"inputs": [INSTRUCTION, "fine"]}])
    assert results[0][0] == 413 and "max_batch_request_chars" in results[0][1]["message"]
    assert results[1][0] == 200
    handler, context = token_budgeted
    many_tokens = {"instruction": INSTRUCTION, "sentences": ["word " * 30] * 3}
    assert sum(len(item.input_ids) for item in handler.encoder.tokenize([(INSTRUCTION, "word " * 30)] * 3)) > 200
    [(status, body)] = run(handler, context, [many_tokens])
    assert status == 413 and "tokens" in body["message"] and "max_batch_request_tokens" in body["message"]


def test_the_token_budget_admits_in_order_and_answers_503_beyond_it(token_budgeted):
    handler, context = token_budgeted
    body = {"inputs": [INSTRUCTION, "word " * 20]}
    tokens = len(handler.encoder.tokenize([(INSTRUCTION, "word " * 20)])[0].input_ids)
    assert 200 // 3 < tokens <= 200 // 2  # two fit in the budget, three do not
    results = run(handler, context, [body] * 3)
    assert [status for status, _ in results] == [200, 200, 503]
    assert "max_batch_request_tokens" in results[2][1]["message"]


@pytest.fixture(scope="module")
def default_handler(tmp_path_factory, tiny_models):
    return make_handler(tmp_path_factory.mktemp("default"), tiny_models["tiny-instructor-relu"])


def test_measured_budgets_fit_a_maximal_request_of_plain_text(default_handler):
    handler, context = default_handler
    assert handler.batch_char_budget >= 2 * handler.settings.max_chars_per_text
    assert handler.batch_token_budget >= handler.encoder.max_seq_length
    maximal = {"instruction": INSTRUCTION, "sentences": ["word " * 4000] * 16}  # 16 x 20,000 characters
    [(status, vectors)] = run(handler, context, [maximal])
    assert status == 200 and len(vectors) == 16


def test_a_pair_whose_instruction_covers_its_text_fails_alone_with_422(default_handler, reference_fixture):
    handler, context = default_handler
    bad = reference_fixture["cases"]["rejected_pairs"][0]
    results = run(handler, context, [
        {"inputs": [[INSTRUCTION, "fine"], [bad["instruction"], bad["text"]]]},
        {"inputs": [INSTRUCTION, "also fine"]},
    ])
    assert results[0][0] == 422 and results[0][1]["type"] == "NothingToEmbed"
    assert results[0][1]["message"].startswith("pair 1: the instruction covers the whole joined text")
    assert results[1][0] == 200


def test_base64_responses_decode_to_the_float_vectors(default_handler):
    handler, context = default_handler
    pairs = [[INSTRUCTION, "3D ActionSLAM"], ["", "plain text"]]
    (_, floats), (_, encoded), (_, single) = run(handler, context, [
        {"inputs": pairs}, {"inputs": pairs, "encoding_format": "base64"},
        {"inputs": pairs[0], "encoding_format": "base64"}])
    decoded = np.stack([np.frombuffer(base64.b64decode(text), dtype="<f4") for text in encoded])
    np.testing.assert_allclose(decoded, np.array(floats, dtype=np.float32), atol=1e-6)  # rows of one batch
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(single), dtype="<f4"), decoded[0], atol=1e-6)


def test_both_encodings_carry_the_float32_values_bit_for_bit():
    vectors = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    as_json = np.array(orjson.loads(render_vectors(vectors, single=False, encoding_format="float")), dtype=np.float32)
    as_base64 = orjson.loads(render_vectors(vectors, single=False, encoding_format="base64"))
    assert np.array_equal(as_json, vectors)
    assert np.array_equal(np.stack([np.frombuffer(base64.b64decode(t), dtype="<f4") for t in as_base64]), vectors)
    single = orjson.loads(render_vectors(vectors[:1], single=True, encoding_format="base64"))
    assert isinstance(single, str) and np.array_equal(np.frombuffer(base64.b64decode(single), "<f4"), vectors[0])


def test_a_measured_budget_is_measured_again_before_it_refuses_a_request(default_handler):
    """A busy start-up measures a low speed; the worker measures again (at most every 10 minutes) before it
    refuses a request as too large, instead of refusing until it restarts."""
    import time

    handler, context = default_handler
    body = {"instruction": INSTRUCTION, "sentences": ["word " * 30] * 4}
    handler.batch_token_budget = 10  # as if measured while the machine was busy
    handler._budgets_measured_at = time.monotonic()
    [(status, answer)] = run(handler, context, [body])
    assert status == 413 and "max_batch_request_tokens" in answer["message"]  # measured just now: refused
    handler._budgets_measured_at = time.monotonic() - 601
    [(status, _)] = run(handler, context, [body])
    assert status == 200 and handler.batch_token_budget > 100  # measured again, then served
