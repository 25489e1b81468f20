"""The packed token stream (packed_stream): its varlen attention kernel and the whole forward, on CPU.

The kernel is Triton's; here it runs through Triton's interpreter (numpy), so what is checked is what it
computes, not how fast: the speed is measured on a GPU in benchmarks/ (profile_encoder's "stream" variant).
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")  # tests/conftest.py has Triton interpret its kernels on CPU

import numpy as np
import torch
from transformers import T5EncoderModel

from handler.acceleration import FastT5Encoder, stream_bucket
from handler.encoder import InstructorEncoder
from handler.settings import Settings
from handler.varlen import varlen_attention


def reference_attention(qkv, lengths, table, heads, d_kv, max_len):
    """Each sequence alone: softmax(q k^T + bias(key - query)) v, in float64."""
    out, start = [], 0
    for n in lengths:
        q, k, v = (qkv[start:start + n, i * heads * d_kv:(i + 1) * heads * d_kv].double().view(n, heads, d_kv)
                   .transpose(0, 1) for i in range(3))
        offset = torch.arange(n)[None, :] - torch.arange(n)[:, None] + max_len - 1
        scores = q @ k.transpose(1, 2) + table[:, offset].double()
        out.append((torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(n, heads * d_kv))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("lengths", [[5, 17, 40, 1], [64, 65, 3], [1]])
def test_each_sequence_attends_only_to_itself_with_the_position_bias_of_its_offsets(lengths):
    heads, d_kv, max_len, max_rows = 2, 16, 70, 6
    generator = torch.Generator().manual_seed(len(lengths))
    tokens = sum(lengths)
    qkv = torch.randn(tokens + 9, 3 * heads * d_kv, generator=generator)  # 9 tokens after the last sequence
    table = torch.randn(heads, 2 * max_len - 1, generator=generator)
    cu = torch.full((max_rows + 1,), tokens, dtype=torch.int32)
    cu[0] = 0
    cu[1:len(lengths) + 1] = torch.tensor(lengths).cumsum(0)
    out = torch.full((tokens + 9, heads * d_kv), 7.0)
    varlen_attention(qkv, cu, table, out, heads, d_kv, max_rows, max_len)
    want = reference_attention(qkv, lengths, table, heads, d_kv, max_len)
    assert torch.allclose(out[:tokens].double(), want, atol=1e-5)
    assert (out[tokens:] == 7.0).all()  # tokens outside every sequence are left alone


@pytest.fixture(scope="module")
def relu_model(tiny_models):
    return T5EncoderModel.from_pretrained(tiny_models["tiny-instructor-relu"]).eval()


def test_the_packed_stream_equals_the_hugging_face_forward_row_by_row(relu_model):
    fast = FastT5Encoder(relu_model, Settings(cuda_graphs=False))
    assert fast.enable_stream(relu_model, max_len=48, max_rows=8, max_tokens=256)
    assert fast.stream_check(relu_model) < 1e-5
    lengths = [48, 30, 30, 2, 11]
    generator = torch.Generator().manual_seed(9)
    input_ids = torch.randint(3, 1500, (len(lengths), 48), generator=generator)
    attention = (torch.arange(48)[None, :] < torch.tensor(lengths)[:, None]).long()
    stream = np.concatenate([input_ids[row, :n].numpy() for row, n in enumerate(lengths)])
    with torch.inference_mode():
        want = relu_model(input_ids=input_ids, attention_mask=attention).last_hidden_state[attention.bool()]
        got = fast.run_stream(stream, np.asarray(lengths))
    assert got.shape[0] >= len(stream)
    assert torch.allclose(got[:len(stream)], want, atol=1e-5, rtol=1e-4)


def test_a_wrong_position_bias_is_caught_and_the_stream_stays_off(relu_model, monkeypatch):
    fast = FastT5Encoder(relu_model, Settings(cuda_graphs=False))
    monkeypatch.setattr(FastT5Encoder, "stream_check", lambda self, model: 0.5)
    assert not fast.enable_stream(relu_model, max_len=48, max_rows=8, max_tokens=256)
    assert not fast.streams


def test_the_encoder_gives_the_same_vectors_with_packed_streams(tiny_models, reference_fixture, monkeypatch):
    """Micro-batches as streams, pooling by token (pool_start per pair), Dense, normalize: 1.0.1's vectors."""
    from handler import encoder as encoder_module

    expected = reference_fixture["models"]["tiny-instructor-relu"]["encode"]["pairs"]
    pairs = [(c["instruction"], c["text"]) for c in reference_fixture["cases"]["pairs"]
             if expected[c["id"]]["pooled_tokens"] > 0]
    plain = InstructorEncoder(tiny_models["tiny-instructor-relu"], Settings(warmup=False))
    monkeypatch.setattr(encoder_module, "accelerate",
                        lambda model, device, precision, settings: FastT5Encoder(model, Settings(cuda_graphs=False)))
    streamed = InstructorEncoder(tiny_models["tiny-instructor-relu"],
                                 Settings(warmup=False, packed_stream=True, max_batch_tokens=512, max_batch_rows=8))
    assert streamed._accelerated.streams
    result = streamed.encode(pairs)
    assert result.stats.micro_batches > 1 and result.stats.padding_ratio == 0
    assert np.abs(result.vectors - plain.encode(pairs).vectors).max() <= 1e-5
    want = np.array([expected[c["id"]]["vector"] for c in reference_fixture["cases"]["pairs"]
                     if expected[c["id"]]["pooled_tokens"] > 0])
    assert np.abs(result.vectors - want).max() <= 1e-5


def test_stream_lengths_round_up_to_few_graphs():
    assert [stream_bucket(t) for t in (1, 32, 33, 200, 257, 16384)] == [32, 32, 64, 256, 512, 16384]
    assert len({stream_bucket(t) for t in range(1, 16385)}) == 4 + 63


@pytest.mark.parametrize("lengths", [[1, 1, 1, 1, 1], [5], [3, 1, 1]])
def test_a_short_stream_covers_all_its_sequences_with_a_grid_sized_to_it(relu_model, lengths):
    """The attention grid shrinks to the stream (at most T sequences of at most T tokens): none is missed."""
    fast = FastT5Encoder(relu_model, Settings(cuda_graphs=False))
    assert fast.enable_stream(relu_model, max_len=48, max_rows=64, max_tokens=256)
    generator = torch.Generator().manual_seed(sum(lengths))
    input_ids = torch.randint(3, 1500, (len(lengths), max(lengths)), generator=generator)
    attention = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    stream = np.concatenate([input_ids[row, :n].numpy() for row, n in enumerate(lengths)])
    with torch.inference_mode():
        want = relu_model(input_ids=input_ids, attention_mask=attention).last_hidden_state[attention.bool()]
        got = fast.run_stream(stream, np.asarray(lengths))[:len(stream)]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_the_load_time_probe_fits_the_limits_a_deployment_sets(relu_model):
    """A 16-token max_seq_length, or one row a micro-batch, still checks and streams."""
    fast = FastT5Encoder(relu_model, Settings(cuda_graphs=False))
    assert fast.enable_stream(relu_model, max_len=16, max_rows=8, max_tokens=64)
    assert fast.stream_check(relu_model) < 1e-5
    one_row = FastT5Encoder(relu_model, Settings(cuda_graphs=False))  # max_batch_rows 1: one sequence a stream
    assert one_row.enable_stream(relu_model, max_len=48, max_rows=1, max_tokens=64)
