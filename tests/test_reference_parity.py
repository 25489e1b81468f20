"""The core against vectors that InstructorEmbedding 1.0.1 itself produced (tests/reference/fixture.json).

The tiny models are rebuilt here byte-identically (sha256-checked), so a pass means: same files in,
same vectors out, <= 1e-5 in float32, whether the pairs arrive as one mixed batch or one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from handler.encoder import InstructorEncoder
from handler.settings import InstructionMode, Precision, Settings

TOLERANCE = 1e-5
# (model, fixture run, max_seq_length to configure): 1.0.1 hard-codes 512 whatever the model says;
# the fixture's second run of the short model set max_seq_length=32 after loading, as our default does.
RUNS = [
    ("tiny-instructor-relu", "encode", None),
    ("tiny-instructor-gated", "encode", None),
    ("tiny-instructor-short", "encode", 512),
    ("tiny-instructor-short", "encode_with_max_seq_length_32", None),
]


@pytest.fixture(scope="module")
def encoders(tiny_models):
    cache = {}

    def get(name: str, max_seq_length: int | None, precision: Precision = Precision.FLOAT32):
        key = (name, max_seq_length, precision)
        if key not in cache:
            settings = Settings(max_seq_length=max_seq_length, precision=precision, warmup=False)
            cache[key] = InstructorEncoder(tiny_models[name], settings)
        return cache[key]

    return get


def fixture_rows(reference_fixture, model: str, run: str):
    cases = reference_fixture["cases"]
    expected = reference_fixture["models"][model][run]
    pairs = [(c["instruction"], c["text"]) for c in cases["pairs"]]
    rows = [expected["pairs"][c["id"]] for c in cases["pairs"]]
    return pairs, rows, expected


@pytest.mark.parametrize(("model", "run", "max_seq_length"), RUNS)
def test_one_mixed_batch_matches_instructor_embedding_1_0_1(encoders, reference_fixture, model, run, max_seq_length):
    encoder = encoders(model, max_seq_length)
    assert encoder.mode is InstructionMode.INSTRUCTOR  # detected from the hkunlp layout
    pairs, rows, expected = fixture_rows(reference_fixture, model, run)
    assert encoder.max_seq_length == expected["max_seq_length"]
    result = encoder.encode(pairs)
    want = np.array([row["vector"] for row in rows], dtype=np.float32)
    diff = np.abs(result.vectors - want).max(axis=1)
    worst = int(np.argmax(diff))
    assert diff[worst] <= TOLERANCE, f"{reference_fixture['cases']['pairs'][worst]['id']}: {diff[worst]:.2e}"


@pytest.mark.parametrize(("model", "run", "max_seq_length"), RUNS)
def test_each_pair_alone_matches_too(encoders, reference_fixture, model, run, max_seq_length):
    encoder = encoders(model, max_seq_length)
    pairs, rows, _ = fixture_rows(reference_fixture, model, run)
    alone = np.stack([encoder.encode([pair]).vectors[0] for pair in pairs])
    assert np.abs(alone - np.array([row["vector"] for row in rows])).max() <= TOLERANCE


@pytest.mark.parametrize(("model", "run", "max_seq_length"), RUNS)
def test_token_counts_truncation_and_pooled_prefix_match_1_0_1(encoders, reference_fixture, model, run,
                                                               max_seq_length):
    encoder = encoders(model, max_seq_length)
    pairs, rows, expected = fixture_rows(reference_fixture, model, run)
    items = encoder.tokenize(pairs)
    assert [item.n_tokens for item in items] == [row["joined_tokens"] for row in rows]
    assert [len(item.input_ids) for item in items] == [row["joined_tokens_used"] for row in rows]
    assert [item.pool_start for item in items] == [row["k"] for row in rows]
    assert [item.truncated for item in items] == [row["joined_tokens"] > expected["max_seq_length"] for row in rows]
    assert any(item.truncated for item in items)  # the corpus does exercise truncation


@pytest.mark.parametrize(("model", "run", "max_seq_length"), RUNS)
def test_plain_strings_match_and_equal_an_empty_instruction(encoders, reference_fixture, model, run, max_seq_length):
    encoder = encoders(model, max_seq_length)
    texts = reference_fixture["cases"]["texts"]
    expected = reference_fixture["models"][model][run]["texts"]
    result = encoder.encode([("", case["text"]) for case in texts])
    want = np.array([expected[case["id"]]["vector"] for case in texts])
    assert np.abs(result.vectors - want).max() <= TOLERANCE
    assert result.token_counts == [expected[case["id"]]["tokens"] for case in texts]


def test_pairs_that_crash_1_0_1_get_a_zero_vector_and_do_not_disturb_their_batch(encoders, reference_fixture):
    """1.0.1 raises AssertionError for the whole batch when k exceeds the joined length; we pool over
    nothing instead (the zero vector 1.0.1 itself returns when k equals the joined length)."""
    encoder = encoders("tiny-instructor-relu", None)
    rejected = [(c["instruction"], c["text"]) for c in reference_fixture["cases"]["rejected_pairs"]]
    pairs, rows, _ = fixture_rows(reference_fixture, "tiny-instructor-relu", "encode")
    result = encoder.encode(rejected + pairs)
    assert np.all(result.vectors[: len(rejected)] == 0.0)
    assert np.abs(result.vectors[len(rejected):] - np.array([row["vector"] for row in rows])).max() <= TOLERANCE


@pytest.mark.parametrize("model", ["tiny-instructor-relu", "tiny-instructor-gated"])
def test_bfloat16_stays_within_cosine_0_999_of_float32(encoders, reference_fixture, model):
    pairs, _, _ = fixture_rows(reference_fixture, model, "encode")
    fp32 = encoders(model, None).encode(pairs).vectors
    bf16_encoder = encoders(model, None, Precision.BFLOAT16)
    assert bf16_encoder.precision is Precision.BFLOAT16
    bf16 = bf16_encoder.encode(pairs).vectors
    norms = np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1)
    valid = norms > 0  # the all-zero row of k == joined length has no direction
    cosine = (fp32 * bf16).sum(axis=1)[valid] / norms[valid]
    assert cosine.min() >= 0.999, cosine.min()
