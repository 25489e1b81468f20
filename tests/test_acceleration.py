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
from handler.encoder import InstructorEncoder
from handler.settings import Precision, Settings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def relu_model(tiny_models):
    return T5EncoderModel.from_pretrained(tiny_models["tiny-instructor-relu"]).eval()


NO_GRAPHS = Settings(cuda_graphs=False)


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
    fast = InstructorEncoder(tiny_models["tiny-instructor-relu"], Settings(warmup=False))
    assert fast._accelerated is not None
    assert np.abs(fast.encode(pairs).vectors - plain.encode(pairs).vectors).max() <= 1e-5
