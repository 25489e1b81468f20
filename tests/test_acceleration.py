"""The fast T5 forward (handler/acceleration.py) computes the same function as Hugging Face's T5 encoder.

``accelerate`` only switches it on for CUDA + bfloat16; here the class runs on CPU in float32, where both
forwards must agree to float rounding, including on padded rows. The GPU speed is measured in benchmarks/.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import T5EncoderModel

from handler.acceleration import FastT5Encoder, accelerate, unsupported_reason
from handler.chunks import chunk_offsets
from handler.encoder import InstructorEncoder
from handler.settings import Precision, Settings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def relu_model(tiny_models):
    return T5EncoderModel.from_pretrained(tiny_models["tiny-instructor-relu"]).eval()


NO_GRAPHS = Settings(cuda_graphs=False)
PADDED = Settings(warmup=False, packed_stream=False)  # padded micro-batches (tests/test_varlen.py: the stream)


def test_it_stays_off_where_exactness_or_support_is_not_given(relu_model, tiny_models):
    assert accelerate(relu_model, CPU, Precision.FLOAT32, Settings()) is None  # CPU/float32: the exact HF path
    assert accelerate(relu_model, CPU, Precision.BFLOAT16, Settings()) is None  # CUDA only
    gated = T5EncoderModel.from_pretrained(tiny_models["tiny-instructor-gated"]).eval()
    assert "relu" in unsupported_reason(gated)  # gated-gelu is not implemented: HF path
    assert unsupported_reason(relu_model) is None


def test_on_cpu_it_equals_the_hugging_face_forward_on_padded_batches(relu_model):
    fast = FastT5Encoder(relu_model, NO_GRAPHS)
    assert fast.self_check(relu_model) < 1e-5
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 1500, (4, 37), generator=generator)
    attention = torch.ones_like(input_ids)
    attention[1, 20:] = 0
    attention[3, 3:] = 0
    with torch.inference_mode():
        want = relu_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        got = fast(input_ids, attention)
    real = attention.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=1e-4)


def test_the_encoder_gives_the_same_vectors_with_the_fast_forward(tiny_models, reference_fixture, monkeypatch):
    from handler import encoder as encoder_module

    expected = reference_fixture["models"]["tiny-instructor-relu"]["encode"]["pairs"]
    pairs = [(c["instruction"], c["text"]) for c in reference_fixture["cases"]["pairs"]
             if expected[c["id"]]["pooled_tokens"] > 0]
    plain = InstructorEncoder(tiny_models["tiny-instructor-relu"], Settings(warmup=False))
    monkeypatch.setattr(encoder_module, "accelerate",
                        lambda model, device, precision, settings: FastT5Encoder(model, NO_GRAPHS))
    fast = InstructorEncoder(tiny_models["tiny-instructor-relu"], PADDED)
    assert fast._accelerated is not None and not fast._accelerated.streams
    assert np.abs(fast.encode(pairs).vectors - plain.encode(pairs).vectors).max() <= 1e-5


def test_encode_chunks_start_small_and_double():
    assert chunk_offsets(4096, 2048) == [(0, 256), (256, 768), (768, 1792), (1792, 3840), (3840, 4096)]
    assert chunk_offsets(100, 2048) == [(0, 100)]
    assert chunk_offsets(0, 2048) == []
    assert chunk_offsets(10, 4, first=4) == [(0, 4), (4, 8), (8, 10)]


def test_the_planner_prices_each_micro_batch_at_the_graph_it_runs_in():
    """compute_slots on arrays (the planner's one call per plan) agrees with the graph each shape replays."""
    fast = object.__new__(FastT5Encoder)  # only the graph limits matter here, no model
    fast.use_graphs, fast.device = True, torch.device("cuda")
    fast.graph_max_rows, fast.graph_max_tokens = 128, 16384
    longest = np.arange(1, 521)[:, None]
    rows = np.arange(1, 201)[None, :]
    priced = fast.compute_slots(longest, rows)
    for length in (1, 16, 17, 128, 129, 200, 256, 513):
        for count in (1, 3, 16, 50, 96, 128, 129, 200):
            key = fast._graph_key(count, length)
            expected = length * count if key is None else key[0] * key[1]
            assert priced[length - 1, count - 1] == expected, (length, count)
    fast.use_graphs = False
    assert (fast.compute_slots(longest, rows) == longest * rows).all()
