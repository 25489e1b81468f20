"""The TorchServe handler with a real ts Context (no server): request forms, per-request errors,
batch splitting, device selection. The server path is covered by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from handler import torchserve_handler
from handler.encoder import InstructorEncoder
from handler.torchserve_handler import InstructorHandler, select_device
from tests.hostile_corpus import GOOD_PAIR, cases
from tests.ts_context import make_handler, make_ts_context, set_batch

# The header TorchServe adds to a request for /predictions/<name>: the corpus is what that route gets (a KServe v1
# body there is an unknown field; on a route-less request the body's shape would pick the protocol).
PREDICTIONS_ROUTE = {"url_path": ""}
SCIENCE = ["Represent the Science title:", "3D ActionSLAM: wearable person tracking in multi-floor environments"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_model_dir: Path):
    """A handler initialised like a TorchServe worker: model files under <model_dir>/model."""
    return make_handler(tmp_path_factory.mktemp("mar"), demo_model_dir,
                        {"max_pairs_per_request": 8, "max_chars_per_text": 2000})


def run(served, bodies: list, headers: dict[str, str] | None = None) -> list[tuple[int, object]]:
    """Send one dynamic batch (each request with ``headers``); returns (status, parsed JSON) per request."""
    handler, context = served
    set_batch(context, len(bodies))
    if headers is not None:
        with_headers(context, [headers] * len(bodies))
    out = handler.handle([{"body": body} for body in bodies], context)
    assert len(out) == len(bodies)
    results = []
    for index, raw in enumerate(out):
        assert context.get_response_content_type(index) == "application/json"
        status, _ = context.get_response_status(index)
        results.append((status, orjson.loads(raw)))
    return results


def reference(served, pairs) -> np.ndarray:
    return served[0].encoder.encode([tuple(p) for p in pairs]).vectors


def test_single_pair_form_returns_one_flat_unit_vector(served):
    [(status, body)] = run(served, [{"inputs": SCIENCE}])
    assert status == 200
    assert isinstance(body, list) and all(isinstance(x, float) for x in body)
    np.testing.assert_allclose(body, reference(served, [SCIENCE])[0], atol=1e-6)
    assert abs(np.linalg.norm(body) - 1.0) < 1e-5


def test_batch_form_returns_vectors_in_order(served):
    pairs = [["Represent the question:", "where is the cat?"], ["", "plain text"], SCIENCE]
    [(status, body)] = run(served, [{"inputs": pairs}])
    assert status == 200
    np.testing.assert_allclose(np.array(body), reference(served, pairs), atol=1e-6)


def test_compact_form_shares_one_instruction(served):
    [(status, body)] = run(served, [{"instruction": "Represent the title:", "sentences": ["a b", "c d e"]}])
    assert status == 200
    expected = reference(served, [["Represent the title:", "a b"], ["Represent the title:", "c d e"]])
    np.testing.assert_allclose(np.array(body), expected, atol=1e-6)


@pytest.mark.parametrize("raw", [orjson.dumps({"inputs": SCIENCE}), bytearray(orjson.dumps({"inputs": SCIENCE})),
                                 orjson.dumps({"inputs": SCIENCE}).decode()])
def test_body_as_bytes_or_text_is_parsed_like_json(served, raw):
    [(status, body)] = run(served, [raw])
    assert status == 200
    np.testing.assert_allclose(body, reference(served, [SCIENCE])[0], atol=1e-6)


def test_a_bad_request_fails_alone_and_neighbours_get_their_own_vectors(served):
    good_a = {"inputs": [["", "first good"], ["Represent:", "second"]]}
    good_b = {"inputs": ["Represent the title:", "third good"]}
    bodies = [good_a, {"inputs": [["only one"]]}, good_b, b"{not json", {"inputs": []}, {"input": SCIENCE}]
    results = run(served, bodies)
    assert [status for status, _ in results] == [200, 400, 200, 400, 400, 400]
    np.testing.assert_allclose(np.array(results[0][1]), reference(served, good_a["inputs"]), atol=1e-6)
    np.testing.assert_allclose(results[2][1], reference(served, [good_b["inputs"]])[0], atol=1e-6)
    assert results[1][1] == {"code": 400, "type": "InvalidInput",
                             "message": "inputs[0] must be [instruction, sentence]; got a list of 1"}
    assert "not valid JSON" in results[3][1]["message"]
    assert "'inputs' is empty" in results[4][1]["message"]
    assert "'input'" in results[5][1]["message"]


def test_limits_answer_413_and_untruncatable_input_422(served):
    too_many = {"inputs": [["", f"s{i}"] for i in range(9)]}
    too_long_text = {"inputs": ["", "x" * 2001]}
    over_tokens = {"inputs": ["", "word " * 400], "truncate": False}
    truncated_ok = {"inputs": ["", "word " * 400]}
    results = run(served, [too_many, too_long_text, over_tokens, truncated_ok])
    assert [status for status, _ in results] == [413, 413, 422, 200]
    assert "max_pairs_per_request" in results[0][1]["message"]
    assert "inputs[1] (sentence)" in results[1][1]["message"]
    assert results[2][1]["type"] == "InputTooLong" and "256" in results[2][1]["message"]


def test_unexpected_failure_is_a_500_for_that_request_only(served, monkeypatch):
    handler, _ = served
    real_launch = handler.encoder.launch

    poison_ids = handler.encoder.tokenize([("", "poison pill one two")])[0].input_ids

    def launch_failing_on_poison(items):
        if any(item.input_ids == poison_ids for item in items):
            raise RuntimeError("simulated kernel failure")
        return real_launch(items)

    monkeypatch.setattr(handler.encoder, "launch", launch_failing_on_poison)
    poison = {"inputs": ["", "poison pill one two"]}
    results = run(served, [{"inputs": SCIENCE}, poison])
    assert results[0][0] == 200
    np.testing.assert_allclose(results[0][1], reference(served, [SCIENCE])[0], atol=1e-6)
    assert results[1][0] == 500 and "req-1" in results[1][1]["message"]


def test_out_of_memory_splits_the_batch_and_only_a_single_unfittable_item_gets_507(served, monkeypatch):
    handler, _ = served
    encoder: InstructorEncoder = handler.encoder
    pairs = [["", "short"], ["q:", "a somewhat longer sentence here"], ["", "mid length text"], SCIENCE]
    expected = encoder.encode([tuple(p) for p in pairs]).vectors
    real_forward = encoder._forward

    def forward_with_small_memory(batch):
        if len(batch) > 1 or max(len(i.input_ids) for i in batch) > 20:
            raise torch.OutOfMemoryError("simulated CUDA out of memory")
        return real_forward(batch)

    monkeypatch.setattr(encoder, "_forward", forward_with_small_memory)
    short_pairs = pairs[:3]
    result = encoder.encode([tuple(p) for p in short_pairs])
    np.testing.assert_allclose(result.vectors, expected[:3], atol=1e-6)
    assert result.stats.oom_splits >= 2
    results = run(served, [{"inputs": short_pairs}, {"inputs": ["", "word " * 30]}])
    assert results[0][0] == 200
    np.testing.assert_allclose(np.array(results[0][1]), expected[:3], atol=1e-6)
    assert results[1][0] == 507 and results[1][1]["type"] == "InsufficientMemory"


def test_device_follows_the_gpu_id_torchserve_assigns():
    assert select_device(None, True) == "cpu"
    assert select_device(1, False) == "cpu"
    assert select_device(1, True) == "cuda:1"
    assert select_device("0", True) == "cuda:0"


@pytest.mark.parametrize(("engine", "shared"), [(None, False), ("worker", False), ("shared", True)])
def test_initialize_embeds_on_the_assigned_gpu_through_the_engine_the_setting_picks(tmp_path, monkeypatch, engine,
                                                                                   shared):
    seen = {}

    class RecordingEncoder:
        max_seq_length = 512
        dimension = 768

    def make_encoder(model_dir, settings, device, shares):
        seen.update(model_dir=model_dir, device=device, precision=settings.precision.value, shared=shares)
        return RecordingEncoder()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torchserve_handler, "make_encoder", make_encoder)
    budgets = {"max_batch_request_chars": 100_000, "max_batch_request_tokens": 10_000}  # nothing to measure
    handler_settings = {"warmup": False, "precision": "bf16", **budgets, **({"engine": engine} if engine else {})}
    context = make_ts_context(tmp_path, 1, {"handler": handler_settings}, gpu_id=3)
    InstructorHandler().initialize(context)
    assert seen == {"model_dir": tmp_path / "model", "device": "cuda:3", "precision": "bfloat16", "shared": shared}


def as_torchserve_delivers(body: bytes, content_type: str):
    """What the Python worker hands the handler for a body with the shipped decode_input_request=false
    (ts/protocol/otf_message_handler.py): the raw bytes, whatever the Content-Type."""
    return bytearray(body)


@pytest.fixture(scope="module")
def default_served(tmp_path_factory, demo_model_dir: Path):
    root = tmp_path_factory.mktemp("mar-defaults")
    (root / "model").symlink_to(demo_model_dir, target_is_directory=True)
    # Fixed batch budgets: measured ones depend on this machine's speed (budgets: tests/test_handler_budgets.py).
    budgets = {"max_batch_request_chars": 10_000_000, "max_batch_request_tokens": 1_000_000}
    context = make_ts_context(root, 1, {"handler": {"warmup": False, **budgets}})
    handler = InstructorHandler()
    handler.initialize(context)
    return handler, context


def test_hostile_corpus_gets_its_status_alone_and_mixed_with_good_requests(default_served):
    handler, _ = default_served
    corpus = [case for case in cases(max_seq_tokens=handler.encoder.max_seq_length)
              if "form" not in case.content_type]  # the frontend splits form bodies; covered end to end
    good = {"inputs": GOOD_PAIR}
    expected_good = reference(default_served, [GOOD_PAIR])[0]
    for case in corpus:
        body = as_torchserve_delivers(case.body, case.content_type)
        [(status, answer)] = run(default_served, [body], PREDICTIONS_ROUTE)
        assert status == case.expect, (case.name, answer)
        if status >= 400:
            assert answer["code"] == status and answer["message"], case.name
    bodies = [good] + [as_torchserve_delivers(c.body, c.content_type) for c in corpus] + [good]
    results = run(default_served, bodies, PREDICTIONS_ROUTE)
    assert [status for status, _ in results[1:-1]] == [case.expect for case in corpus]
    for status, answer in (results[0], results[-1]):
        assert status == 200
        np.testing.assert_allclose(answer, expected_good, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_any_dynamic_batch_size_gets_exactly_one_answer_per_request_in_order(default_served, batch_size):
    rng = np.random.default_rng(batch_size)
    words = ["ocean", "logic", "violet", "ember", "quartz", "harbor", "lunar", "cedar"]
    bodies = []
    for i in range(batch_size):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 40))))
        bodies.append({"inputs": ["Represent the sentence:", f"{i} {text}"]} if i % 2 else
                      {"inputs": [["", f"{i} {text}"], ["query: ", text]]})
    results = run(default_served, bodies)
    assert [status for status, _ in results] == [200] * batch_size, [a for s, a in results if s != 200][:2]
    # One reference encode of every pair (batching does not change vectors: tests/test_demo_model.py);
    # each request's text starts with its index, so an answer sent to the wrong request cannot match.
    per_request = [[body["inputs"]] if isinstance(body["inputs"][0], str) else body["inputs"] for body in bodies]
    expected = iter(reference(default_served, [pair for pairs in per_request for pair in pairs]))
    for pairs, (_, answer) in zip(per_request, results, strict=True):
        got = np.array(answer) if len(pairs) > 1 else np.array([answer])
        np.testing.assert_allclose(got, np.array([next(expected) for _ in pairs]), atol=1e-5)


def with_headers(context, headers_per_request: list[dict[str, str]]) -> None:
    """Request headers as the worker hands them over (names as the client sent them)."""
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor(headers) for headers in headers_per_request]


def test_raw_float32_replies_carry_the_json_vectors_bit_for_bit_and_every_reply_its_tokens(served):
    handler, context = served
    pairs = [["Represent the question:", "where is the cat?"], ["", "plain text"], SCIENCE]
    bodies = [{"inputs": pairs}, {"inputs": pairs}, {"inputs": SCIENCE}, {"inputs": []}]
    set_batch(context, len(bodies))
    with_headers(context, [{}, {"Accept": "application/octet-stream"}, {"accept": "application/octet-stream"},
                           {"Accept": "application/octet-stream"}])
    out = handler.handle([{"body": body} for body in bodies], context)
    floats = np.array(orjson.loads(out[0]), dtype=np.float32)
    dimension = int(context.get_response_headers(1)["X-Instructor-Dimension"])
    assert context.get_response_content_type(1) == "application/octet-stream"
    assert np.array_equal(np.frombuffer(out[1], "<f4").reshape(-1, dimension), floats)
    assert np.array_equal(np.frombuffer(out[2], "<f4"), floats[2])  # the single-pair form: one row
    tokens = sum(len(item.input_ids) for item in handler.encoder.tokenize([tuple(p) for p in pairs]))
    assert context.get_response_headers(0)["X-Instructor-Tokens"] == str(tokens)
    assert context.get_response_headers(1)["X-Instructor-Tokens"] == str(tokens)
    # An error stays JSON whatever the client accepts.
    assert context.get_response_status(3)[0] == 400
    assert context.get_response_content_type(3) == "application/json" and orjson.loads(out[3])["code"] == 400
    assert "X-Instructor-Tokens" not in context.get_response_headers(3)


def test_every_body_is_decoded_once_with_the_collector_paused(served, monkeypatch):
    import gc
    from types import SimpleNamespace

    from handler import request_parsing

    decodes = []

    def recording_loads(data):
        decodes.append(gc.isenabled())
        return orjson.loads(data)

    monkeypatch.setattr(request_parsing, "orjson", SimpleNamespace(loads=recording_loads,
                                                                   JSONDecodeError=orjson.JSONDecodeError))
    bodies = [orjson.dumps({"inputs": SCIENCE}), b"{not json", orjson.dumps({"instances": [SCIENCE]})]
    results = run(served, bodies)
    assert [status for status, _ in results] == [200, 400, 200]
    assert decodes == [False, False, False]


def test_customized_describe_answers_the_model_facts_not_a_400(served):
    """GET /models/<name>?customized=true reaches the worker as a request with the header describe: True."""
    handler, context = served
    set_batch(context, 1)
    with_headers(context, [{"describe": "True"}])
    [raw] = handler.handle([{}], context)  # no body: the worker's row of a request without parameters
    assert context.get_response_status(0)[0] == 200
    described = orjson.loads(raw)
    assert described["dimension"] == handler.encoder.dimension
    assert described["max_pairs_per_request"] == 8 and described["batch_budgets"]["tokens"] >= 8
    # A prediction that carries the header is still a prediction.
    set_batch(context, 1)
    with_headers(context, [{"describe": "True"}])
    [raw] = handler.handle([{"body": orjson.dumps({"inputs": SCIENCE})}], context)
    np.testing.assert_allclose(orjson.loads(raw), reference(served, [SCIENCE])[0], atol=1e-6)
