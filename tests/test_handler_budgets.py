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

from handler.replies import render_vectors
from handler.torchserve_handler import InstructorHandler
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
    budgets = handler.worker.budgets.budgets
    assert budgets.chars_alone >= handler.settings.max_pairs_per_request * 2 * handler.settings.max_chars_per_text
    assert budgets.tokens_alone >= handler.settings.max_pairs_per_request * handler.encoder.max_seq_length
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


def test_a_slow_start_never_refuses_the_largest_valid_request(tmp_path, tiny_models, monkeypatch):
    """Budgets measured while the machine is busy (here: a tokenizer and a device 10,000x slower than they
    are) still take the largest request the request limits allow, alone: a restart under load cannot turn a
    request the server took into a 413. Batches are still packed to the measured budget."""
    from handler.encoder import InstructorEncoder

    real_encode, real_seconds_per_char = InstructorEncoder.encode, InstructorEncoder.tokenizer_seconds_per_char

    def slow_encode(self, pairs, chunk_pairs=2048):
        result = real_encode(self, pairs, chunk_pairs)
        result.stats.seconds *= 10_000
        return result

    monkeypatch.setattr(InstructorEncoder, "encode", slow_encode)
    monkeypatch.setattr(InstructorEncoder, "tokenizer_seconds_per_char",
                        lambda self: real_seconds_per_char(self) * 10_000)
    handler, context = make_handler(tmp_path, tiny_models["tiny-instructor-relu"], max_pairs_per_request=8,
                                    max_chars_per_text=3000)
    budgets = handler.worker.budgets.budgets
    assert (budgets.tokens_alone, budgets.chars_alone) == (8 * handler.encoder.max_seq_length, 8 * 2 * 3000)
    assert budgets.tokens < handler.encoder.max_seq_length  # what the slow probes measured
    largest = {"inputs": [["i" * 3000, "long text " * 300]] * 8, "truncate": True}
    [(status, vectors)] = run(handler, context, [largest])
    assert status == 200 and len(vectors) == 8
    # Nothing else fits beside it: 503 (retry), never 413; alone, each is served.
    small = {"inputs": [INSTRUCTION, "a short one"]}
    results = run(handler, context, [largest, largest, small])
    assert [status for status, _ in results] == [200, 503, 503]
    assert [status for status, _ in run(handler, context, [small])] == [200]


def test_budgets_are_measured_again_when_they_refuse_and_never_shrink(default_handler, monkeypatch):
    """A budget that made the batch refuse requests is measured again (at most every 10 minutes); a new
    measurement, which a busy moment can only make lower, never lowers it."""
    handler, _ = default_handler
    keeper = handler.worker.budgets
    before = keeper.budgets
    calls = []
    monkeypatch.setattr(keeper, "_measured_tokens", lambda: calls.append("tokens") or 1)
    monkeypatch.setattr(keeper, "_measured_chars", lambda: calls.append("chars") or 1)
    keeper.after_refusals(refused=True)
    assert calls == []  # measured at start-up, less than 10 minutes ago
    keeper.measured_at -= 601
    keeper.after_refusals(refused=False)
    assert calls == []  # nothing refused: nothing to measure
    keeper.after_refusals(refused=True)
    assert calls == ["chars", "tokens"] and keeper.budgets == before  # measured again, lower: kept


def test_instructions_evicted_from_the_length_cache_mid_batch_never_fail_a_request(default_handler, monkeypatch):
    """A batch bringing new instructions clears a full instruction-length cache; instructions cached before
    and used in the same batch must still be found (it used to be a KeyError: a 500, or the whole batch
    tokenized again request by request)."""
    from handler import dynamic_batch
    from handler import encoder as encoder_module

    handler, context = default_handler
    monkeypatch.setattr(encoder_module, "_INSTRUCTION_CACHE_SIZE", 4)
    monkeypatch.setattr(handler.encoder, "_instruction_lengths", {})
    known = [[f"Represent the topic {i}:", "a cached instruction"] for i in range(3)]
    new = [[f"Represent the new area {i}:", "an instruction never seen"] for i in range(4)]
    assert [status for status, _ in run(handler, context, [{"inputs": known}])] == [200]
    tokenize_alone = []
    monkeypatch.setattr(dynamic_batch.log, "exception", lambda *args, **kwargs: tokenize_alone.append(args))
    mixed = [known[0], *new]
    results = run(handler, context, [{"inputs": mixed}, {"inputs": known[1]}])
    assert [status for status, _ in results] == [200, 200] and tokenize_alone == []
    monkeypatch.setattr(handler.encoder, "_instruction_lengths", {})
    expected = handler.encoder.encode([tuple(p) for p in mixed]).vectors
    np.testing.assert_allclose(np.array(results[0][1]), expected, atol=1e-6)


@pytest.fixture(scope="module")
def reply_budgeted(tmp_path_factory, tiny_models):
    # The floor of a request alone is the largest valid reply (256 x 48 JSON floats, ~197 KB): just above it.
    return make_handler(tmp_path_factory.mktemp("reply"), tiny_models["tiny-instructor-relu"],
                        max_batch_request_chars=1_000_000, max_batch_request_tokens=1_000_000,
                        max_batch_reply_bytes=200_000)


def test_a_kserve_v2_id_echoed_in_the_answer_counts_against_the_reply_budget(reply_budgeted):
    """Each id comes back in its answer: 20,000-character ids, uncounted, let replies over the budget through."""
    from ts.context import RequestProcessor

    handler, context = reply_budgeted
    bodies = [{"id": f"{i:02d}" * 10_000, "inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [1, 2],
                                                  "data": [INSTRUCTION, f"text {i}"]}]} for i in range(12)]
    set_batch(context, len(bodies))
    context.request_processor = [RequestProcessor({"explain": "True"}) for _ in bodies]  # the /v2 route
    out = handler.handle([{"body": orjson.dumps(body)} for body in bodies], context)
    statuses = [context.get_response_status(i)[0] for i in range(len(bodies))]
    answered = [len(raw) for status, raw in zip(statuses, out, strict=True) if status == 200]
    assert sum(answered) <= 200_000 and statuses[0] == 200 and 503 in statuses, statuses
    refused = orjson.loads(out[statuses.index(503)])
    assert "max_batch_reply_bytes" in refused["error"]
    assert orjson.loads(out[0])["id"] == bodies[0]["id"]
