"""A fast T5-encoder forward for CUDA + bfloat16, used by the encoder core in place of the Hugging Face forward.

Same weights and the same function as ``T5EncoderModel`` (relu feed-forward, relative position bias, pre-norm),
with fewer and larger kernels per layer:

- q, k and v in ONE matrix product (the three weights become views of one fused tensor, so no copy stays);
- the residual additions fused into the output projections (``addmm_`` accumulates into the residual stream);
- relu fused into the first feed-forward product (cuBLASLt epilogue through ``torch._addmm_activation``);
- the T5 RMS norm through the fused ``F.rms_norm`` kernel (fp32 statistics, as T5LayerNorm);
- T5 has no 1/sqrt(d_kv) in attention: scale 1.

Two ways to run a micro-batch:

- **Packed token stream** (``packed_stream``, the default): the micro-batch's sequences concatenated, no
  padding rows; matrix products and norms on (tokens, d_model); attention by a varlen kernel over the
  sequences' boundaries with the position bias read by offset (handler/varlen.py, Triton); a CUDA graph per
  stream length (67, up to max_batch_tokens, captured at warm-up).
- **Padded** (the fallback): rows padded to the longest; attention through ``F.scaled_dot_product_attention``
  with the position bias and the padding mask merged ONCE per forward into one additive bias, allocated with a
  16-aligned row stride so the kernel never copies it; CUDA graphs for every micro-batch up to
  ``graph_max_rows`` rows and ``graph_max_tokens`` padded tokens (~180 buckets, captured at warm-up).

Graphs make a micro-batch one launch instead of ~200: on the H100 hosts measured, the launches of an eager
micro-batch ran 5-10x slower than its GPU work (benchmarks/NOTES.md). ``torch.compile`` of the layer was
measured 12% slower than this eager layer and is not offered.

Every guard falls back instead of failing: a forward that errs or differs from Hugging Face's on a probe batch
at load leaves the Hugging Face path in place; a packed stream that does (or a missing Triton) leaves padded
micro-batches; a graph capture that fails or replays differently turns graphs off. Each fallback is logged.

Only CUDA + bfloat16 is accelerated: on CPU, and for float32/int8, ``accelerate`` returns None and the encoder
keeps the exact Hugging Face path, so CPU results and float32 exactness do not change. The switches are the
``fast_forward``, ``packed_stream``, ``cuda_graphs``, ``graph_max_rows`` and ``graph_max_tokens`` fields of
``Settings``. bf16 results differ from the Hugging Face bf16 forward by rounding only (fp32 accumulation; see
benchmarks: min cosine vs the fp32 reference >= 0.999).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from handler.settings import Precision, Settings

log = logging.getLogger(__name__)


# Bucket edges: every shape a micro-batch can take maps to one of ~150 captured graphs. Rows: powers of two
# to 16, then steps of 1.5x; lengths: multiples of 16 to 128 (the common case), then of 32.
COARSE_ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Finer rows (steps of 8 to 64, of 16 to 128): less padding in a dynamic batch's graphs, ~1.7x the graphs.
FINE_ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448,
                    512)
_ROW_BUCKETS = COARSE_ROW_BUCKETS
_ROW_BUCKET_OF = np.zeros(1, dtype=np.int64)


def _bucket_rows(rows: int) -> int | None:
    return next((b for b in _ROW_BUCKETS if b >= rows), None)


def set_row_buckets(buckets: tuple[int, ...]) -> None:
    """Use these row buckets for graphs captured from now on (benchmarks compare bucket sets)."""
    global _ROW_BUCKETS, _ROW_BUCKET_OF
    _ROW_BUCKETS = tuple(sorted(buckets))
    # _ROW_BUCKET_OF[r]: the row bucket of a micro-batch of r rows (r <= the largest bucket).
    _ROW_BUCKET_OF = np.array([0] + [_bucket_rows(r) for r in range(1, _ROW_BUCKETS[-1] + 1)])


set_row_buckets(COARSE_ROW_BUCKETS)


def _bucket_length(length: int) -> int:
    step = 16 if length <= 128 else 32
    return -(-length // step) * step


# Token-stream lengths of the packed stream's CUDA graphs (packed_stream): fine steps for the few tokens of
# single requests, then steps of 256 (at most 255 padding tokens in a micro-batch of thousands).
_STREAM_SMALL_BUCKETS = (32, 64, 128, 256)
STREAM_STEP = 256


def stream_bucket(tokens: int) -> int:
    """The graph a packed stream of ``tokens`` tokens runs in: its length rounded up to a bucket."""
    small = next((b for b in _STREAM_SMALL_BUCKETS if b >= tokens), None)
    return small if small is not None else -(-tokens // STREAM_STEP) * STREAM_STEP


# Relative error allowed between the fast and the Hugging Face forward on the probe batch: bf16 rounding through
# 24 layers stays near 1e-2; a wrong mask, scale or weight layout gives errors of order 1.
_SELF_CHECK_TOLERANCE = 0.1


def accelerate(model: torch.nn.Module, device: torch.device, precision: Precision,
               settings: Settings) -> FastT5Encoder | None:
    """A fast forward for ``model`` on ``device``, or None where the Hugging Face forward must stay."""
    if not settings.fast_forward or device.type != "cuda" or precision is not Precision.BFLOAT16:
        return None
    reason = unsupported_reason(model)
    if reason:
        log.info("fast T5 forward not used: %s", reason)
        return None
    try:
        fast = FastT5Encoder(model, settings)
        error = fast.self_check(model)
    except Exception as exc:  # a kernel this driver/torch lacks must not take the server down
        log.warning("fast T5 forward not used: it failed on a probe batch (%r)", exc, exc_info=True)
        return None
    if error > _SELF_CHECK_TOLERANCE:
        log.warning("fast T5 forward not used: it differs from the Hugging Face forward by %.3g (relative)", error)
        return None
    return fast


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the fast forward cannot reproduce this model, or None if it can."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in ("t5", "mt5"):
        return "not a T5 encoder"
    if not hasattr(model, "encoder") or getattr(model.encoder, "is_decoder", False):
        return "not an encoder-only T5 model"
    if getattr(config, "is_gated_act", False) or getattr(config, "dense_act_fn", "relu") != "relu":
        return f"feed-forward {getattr(config, 'feed_forward_proj', '?')} (only relu is implemented)"
    if config.d_kv % 8:
        return f"d_kv {config.d_kv} is not a multiple of 8"
    for block in model.encoder.block:
        for linear in (block.layer[0].SelfAttention.q, block.layer[1].DenseReluDense.wi):
            if not isinstance(linear, torch.nn.Linear) or type(linear) is not torch.nn.Linear:
                return "quantized or replaced Linear layers"
    return None


@dataclasses.dataclass(frozen=True)
class _Layer:
    qkv_t: torch.Tensor  # (d_model, 3 inner): transposed view of the fused q|k|v weight
    o_t: torch.Tensor
    wi_t: torch.Tensor
    wo_t: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor


@dataclasses.dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    attention: torch.Tensor
    output: torch.Tensor


@dataclasses.dataclass
class _StreamGraph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor  # (bucket,) the stream's token ids; padding tokens 0
    cu_seqlens: torch.Tensor  # (max_rows + 1,) int32 sequence boundaries
    output: torch.Tensor  # (bucket, d_model)


class FastT5Encoder:
    """Callable ``(input_ids, attention_mask) -> last_hidden_state`` for a loaded T5 encoder.

    The returned tensor may be a CUDA graph's static output: it is valid until the next call, so use it
    (enqueue the work that reads it) before calling again. Not thread-safe, like the encoder core.
    """

    def __init__(self, model: torch.nn.Module, settings: Settings) -> None:
        config = model.config
        self.use_graphs = settings.cuda_graphs
        self.graph_max_rows = settings.graph_max_rows
        self.graph_max_tokens = settings.graph_max_tokens
        self.num_heads = int(config.num_heads)
        self.d_kv = int(config.d_kv)
        self.d_model = int(config.d_model)
        self.eps = float(config.layer_norm_epsilon)
        encoder = model.encoder
        self.embedding = encoder.embed_tokens.weight
        self.dtype = self.embedding.dtype
        self.device = self.embedding.device
        self._bias_module = encoder.block[0].layer[0].SelfAttention
        self.final_ln = encoder.final_layer_norm.weight
        self.layers = [self._fuse(block) for block in encoder.block]
        self._relu_bias = torch.zeros(int(config.d_ff), dtype=self.dtype, device=self.device)
        self._mask_min = torch.tensor(torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._graph_pool: Any = None
        self.graph_seconds = 0.0
        # None: let SDPA choose its attention kernel; else the kernels it may use (benchmarks compare them).
        self.attention_backends: Sequence[SDPBackend] | None = None
        # The packed token stream (``enable_stream``): None until enabled and checked.
        self.stream_max_rows = 0
        self.stream_max_len = 0
        self.stream_max_tokens = 0
        self._bias_table: torch.Tensor | None = None
        self._stream_graphs: dict[int, _StreamGraph] = {}

    def _fuse(self, block: torch.nn.Module) -> _Layer:
        attention = block.layer[0].SelfAttention
        ff = block.layer[1].DenseReluDense
        with torch.no_grad():
            qkv = torch.cat([attention.q.weight, attention.k.weight, attention.v.weight]).contiguous()
            inner = attention.q.weight.shape[0]
            # The Hugging Face modules keep working (fallback, other callers) on views of the fused weight,
            # so the model's memory does not grow.
            attention.q.weight.data = qkv[:inner]
            attention.k.weight.data = qkv[inner:2 * inner]
            attention.v.weight.data = qkv[2 * inner:]
        return _Layer(qkv_t=qkv.t(), o_t=attention.o.weight.t(), wi_t=ff.wi.weight.t(), wo_t=ff.wo.weight.t(),
                      ln1=block.layer[0].layer_norm.weight, ln2=block.layer[1].layer_norm.weight)

    def self_check(self, model: torch.nn.Module) -> float:
        """Relative difference from the Hugging Face forward on a padded probe batch (real positions only)."""
        generator = torch.Generator().manual_seed(0)
        vocab = self.embedding.shape[0]
        input_ids = torch.randint(2, vocab, (3, 40), generator=generator).to(self.device)
        attention = torch.ones_like(input_ids)
        attention[1, 25:] = 0
        attention[2, 7:] = 0
        with torch.inference_mode():
            reference = model(input_ids=input_ids, attention_mask=attention).last_hidden_state.float()
            got = self.forward(input_ids, attention).float()
        real = attention.bool()
        if not torch.isfinite(got[real]).all():
            return float("inf")
        return float((got[real] - reference[real]).norm() / reference[real].norm())

    # ---- forward ------------------------------------------------------------------------------

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows, length = input_ids.shape
        key = self._graph_key(rows, length)
        if key is None:
            return self.forward(input_ids, attention_mask)
        entry = self._graph_for(self._graphs, key, self._capture)
        if entry is None:
            return self.forward(input_ids, attention_mask)
        entry.input_ids.zero_()
        entry.attention.zero_()
        entry.input_ids[:rows, :length].copy_(input_ids)
        entry.attention[:rows, :length].copy_(attention_mask)
        entry.graph.replay()
        return entry.output[:rows, :length]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder without graphs: embeddings, 24 (or 12) fused layers, final norm."""
        rows, length = input_ids.shape
        x = F.embedding(input_ids, self.embedding).view(rows * length, self.d_model)
        bias = self._attention_bias(attention_mask, length)
        backends = contextlib.nullcontext() if self.attention_backends is None else \
            sdpa_kernel(list(self.attention_backends))
        with backends:
            for layer in self.layers:
                _layer(x, bias, layer, rows, length, self.num_heads, self.d_kv, self.eps, self._relu_bias)
        return F.rms_norm(x, (self.d_model,), self.final_ln, self.eps).view(rows, length, self.d_model)

    def _attention_bias(self, attention_mask: torch.Tensor, length: int) -> torch.Tensor:
        """Position bias where the key is real, the dtype's minimum where it is padding: (rows, heads, L, L).

        Allocated with a row stride rounded up to 16 elements: the memory-efficient kernel requires that
        alignment and would otherwise copy the bias in every layer.
        """
        rows = attention_mask.shape[0]
        position = self._bias_module.compute_bias(length, length, device=attention_mask.device)  # (1, H, L, L)
        padded = -(-length // 16) * 16
        bias = torch.empty(rows, self.num_heads, length, padded, dtype=self.dtype, device=attention_mask.device)
        bias = bias[..., :length]
        keep = attention_mask[:, None, None, :].bool()
        torch.where(keep, position.to(self.dtype), self._mask_min, out=bias)
        return bias

    # ---- the packed token stream (varlen attention, handler/varlen.py) -------------------------

    @property
    def streams(self) -> bool:
        """Whether micro-batches run as packed token streams."""
        return self._bias_table is not None

    def enable_stream(self, model: torch.nn.Module, max_len: int, max_rows: int, max_tokens: int) -> bool:
        """Run micro-batches of up to ``max_rows`` sequences of up to ``max_len`` tokens, ``max_tokens`` in all,
        as one packed token stream; False (logged) where Triton is missing or the result differs from the
        Hugging Face forward on a probe."""
        try:
            from handler import varlen  # noqa: F401 - Triton: present in torch's CUDA builds
        except Exception as exc:
            log.warning("packed token streams not used: the varlen attention kernel is unavailable (%r)", exc)
            return False
        head_dim_ok = self.d_kv >= 16 and self.d_kv & (self.d_kv - 1) == 0
        if not head_dim_ok:
            log.warning("packed token streams not used: d_kv %d is not a power of two >= 16", self.d_kv)
            return False
        self.stream_max_len, self.stream_max_rows, self.stream_max_tokens = max_len, max_rows, max_tokens
        with torch.no_grad():
            position = self._bias_module.compute_bias(max_len, max_len, device=self.device)[0]  # (H, L, L)
            # T5's bias depends on the offset key - query only: offsets -(L-1)..0 from the last query's row,
            # 1..L-1 from the first query's.
            self._bias_table = torch.cat([position[:, max_len - 1, :], position[:, 0, 1:]], dim=1) \
                .to(self.dtype).contiguous()
        try:
            error = self.stream_check(model)
        except Exception as exc:
            log.warning("packed token streams not used: they failed on a probe batch (%r)", exc, exc_info=True)
            error = float("inf")
        if error > _SELF_CHECK_TOLERANCE:
            log.warning("packed token streams not used: they differ from the Hugging Face forward by %.3g", error)
            self._bias_table = None
            return False
        return True

    def stream_check(self, model: torch.nn.Module) -> float:
        """Relative difference between the packed stream and Hugging Face's padded forward (real tokens)."""
        generator = torch.Generator().manual_seed(3)
        # Within the limits a deployment may set lower: tokens a row, rows a micro-batch.
        lengths = [min(n, self.stream_max_len) for n in (40, 25, 7)][:self.stream_max_rows]
        input_ids = torch.randint(2, self.embedding.shape[0], (len(lengths), lengths[0]), generator=generator)
        attention = (torch.arange(lengths[0])[None, :] < torch.tensor(lengths)[:, None]).long()
        stream = np.concatenate([input_ids[row, :n].numpy() for row, n in enumerate(lengths)])
        with torch.inference_mode():
            reference = model(input_ids=input_ids.to(self.device),
                              attention_mask=attention.to(self.device)).last_hidden_state.float()
            got = self.forward_stream(*self._stream_inputs(stream, np.asarray(lengths), len(stream))).float()
        want = reference[attention.bool().to(self.device)]  # row by row, the stream's order
        got = got[:len(stream)]
        if not torch.isfinite(got).all():
            return float("inf")
        return float((got - want).norm() / want.norm())

    def _stream_inputs(self, stream: np.ndarray, lengths: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Device tensors of a stream padded to ``size`` tokens and its boundaries for ``stream_max_rows``."""
        ids = np.zeros(size, dtype=np.int64)
        ids[:len(stream)] = stream
        cu = np.full(self.stream_max_rows + 1, len(stream), dtype=np.int32)
        cu[0] = 0
        cu[1:len(lengths) + 1] = np.cumsum(lengths)
        cuda = self.device.type == "cuda"
        host_ids, host_cu = torch.from_numpy(ids), torch.from_numpy(cu)
        if cuda:
            host_ids, host_cu = host_ids.pin_memory(), host_cu.pin_memory()
        return host_ids.to(self.device, non_blocking=cuda), host_cu.to(self.device, non_blocking=cuda)

    def forward_stream(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """The encoder on a packed stream (T,) with sequence boundaries (max_rows + 1,) -> (T, d_model).

        Tokens after the last sequence are computed like any other (each row of a matrix product is its own)
        and never attended to; their outputs mean nothing.
        """
        from handler.varlen import varlen_attention

        tokens = input_ids.shape[0]
        inner = self.num_heads * self.d_kv
        # A stream of T tokens holds at most T sequences of at most T tokens: the attention grid needs no more
        # (a single pair's 32-token stream launches 1 x 32 x heads programs, not 8 x 128 x heads).
        rows, longest = min(self.stream_max_rows, tokens), min(self.stream_max_len, tokens)
        x = F.embedding(input_ids, self.embedding)
        attended = torch.zeros(tokens, inner, dtype=self.dtype, device=self.device)
        for w in self.layers:
            h = F.rms_norm(x, (self.d_model,), w.ln1, self.eps)
            qkv = torch.mm(h, w.qkv_t)
            varlen_attention(qkv, cu_seqlens, self._bias_table, attended, self.num_heads, self.d_kv, rows,
                             self.stream_max_len, longest)
            x.addmm_(attended, w.o_t)
            h = F.rms_norm(x, (self.d_model,), w.ln2, self.eps)
            x.addmm_(torch._addmm_activation(self._relu_bias, h, w.wi_t), w.wo_t)
        return F.rms_norm(x, (self.d_model,), self.final_ln, self.eps)

    def run_stream(self, stream: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """``forward_stream`` from host arrays -> (>= T, d_model): the first T rows are the stream's tokens.

        On CUDA with graphs, the result is the static output of the stream length's graph (valid until the
        next call, like ``__call__``'s)."""
        tokens = len(stream)
        if not self.use_graphs or self.device.type != "cuda" or tokens > self.stream_max_tokens:
            return self.forward_stream(*self._stream_inputs(stream, lengths, tokens))
        size = stream_bucket(tokens)
        entry = self._graph_for(self._stream_graphs, size, self._capture_stream)
        if entry is None:
            return self.forward_stream(*self._stream_inputs(stream, lengths, tokens))
        input_ids, cu_seqlens = self._stream_inputs(stream, lengths, size)
        entry.input_ids.copy_(input_ids)
        entry.cu_seqlens.copy_(cu_seqlens)
        entry.graph.replay()
        return entry.output

    def stream_sizes(self) -> list[int]:
        """Every stream length a graph is captured for (up to ``stream_max_tokens``)."""
        return sorted({stream_bucket(t) for t in range(1, self.stream_max_tokens + 1)})

    def _capture_stream(self, size: int) -> _StreamGraph:
        input_ids = torch.zeros(size, dtype=torch.long, device=self.device)
        cu_seqlens = torch.full((self.stream_max_rows + 1,), size, dtype=torch.int32, device=self.device)
        cu_seqlens[0] = 0
        graph, output = self._record(lambda: self.forward_stream(input_ids, cu_seqlens))
        entry = _StreamGraph(graph, input_ids, cu_seqlens, output)
        self._stream_graphs[size] = entry
        return entry

    # ---- CUDA graphs --------------------------------------------------------------------------

    def _graph_key(self, rows: int, length: int) -> tuple[int, int] | None:
        if not self.use_graphs or self.device.type != "cuda" or rows > self.graph_max_rows:
            return None
        bucket_rows = _bucket_rows(rows)
        bucket_length = _bucket_length(length)
        if bucket_rows is None or bucket_rows * bucket_length > self.graph_max_tokens:
            return None
        return bucket_rows, bucket_length

    def compute_slots(self, longest: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Token slots micro-batches of ``rows`` x ``longest`` really compute: their graph bucket's, else their
        own (numpy broadcasting over both)."""
        longest, rows = np.asarray(longest), np.asarray(rows)
        if not self.use_graphs or self.device.type != "cuda":
            return longest * rows
        step = np.where(longest <= 128, 16, 32)  # _bucket_length, on arrays
        bucket_length = -(-longest // step) * step
        bucket_rows = _ROW_BUCKET_OF[np.minimum(rows, len(_ROW_BUCKET_OF) - 1)]
        graphed = (rows <= self.graph_max_rows) & (rows < len(_ROW_BUCKET_OF)) & \
            (bucket_rows * bucket_length <= self.graph_max_tokens)
        return np.where(graphed, bucket_rows * bucket_length, longest * rows)

    def graph_shapes(self, max_length: int) -> list[tuple[int, int]]:
        """Every (rows, length) bucket a padded micro-batch of at most ``max_length`` tokens a row can use."""
        row_buckets = {_bucket_rows(rows) for rows in range(1, self.graph_max_rows + 1)}
        shapes = {self._graph_key(rows, length) for rows in row_buckets if rows is not None
                  for length in range(1, max_length + 1)}
        return sorted(key for key in shapes if key is not None)

    def warmup(self, max_length: int) -> float:
        """Capture every graph shape up front (so no request pays for a capture); returns seconds."""
        if not self.use_graphs or self.device.type != "cuda":
            return 0.0
        started = time.perf_counter()
        with torch.inference_mode():
            if self.streams:  # every micro-batch runs as a stream: no padded graph is needed
                for size in self.stream_sizes():
                    if self.use_graphs:
                        self._graph_for(self._stream_graphs, size, self._capture_stream)
            else:
                for key in self.graph_shapes(max_length):
                    if self.use_graphs:
                        self._graph_for(self._graphs, key, self._capture)
            error = self._graph_check()
            if error > _SELF_CHECK_TOLERANCE:
                log.warning("CUDA graphs differ from the plain forward by %.3g (relative); running without "
                            "graphs", error)
                self.use_graphs = False
        torch.cuda.synchronize(self.device)
        log.info("captured %d CUDA graphs in %.1f s", len(self._graphs) + len(self._stream_graphs),
                 time.perf_counter() - started)
        return time.perf_counter() - started

    def _graph_check(self) -> float:
        """Relative difference between a graph replay and the plain forward on a padded probe (real tokens)."""
        if not self.use_graphs:
            return 0.0
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(2, self.embedding.shape[0], (3, 37), generator=generator).to(self.device)
        attention = torch.ones_like(input_ids)
        attention[1, 20:] = 0
        expected = self.forward(input_ids, attention).float()
        got = self(input_ids, attention).float()
        real = attention.bool()
        if not torch.isfinite(got[real]).all():
            return float("inf")
        error = float((got[real] - expected[real]).norm() / expected[real].norm())
        if self.streams:  # a graph replay of a packed stream against the same stream run eagerly
            lengths = np.minimum([37, 20, 5], self.stream_max_len)[:self.stream_max_rows]
            stream = np.concatenate([input_ids[row, :n].cpu().numpy() for row, n in enumerate(lengths)])
            expected = self.forward_stream(*self._stream_inputs(stream, lengths, len(stream))).float()
            got = self.run_stream(stream, lengths)[:len(stream)].float()
            if not torch.isfinite(got).all():
                return float("inf")
            error = max(error, float((got - expected).norm() / expected.norm()))
        return error

    def _capture(self, key: tuple[int, int]) -> _Graph:
        rows, length = key
        input_ids = torch.zeros(rows, length, dtype=torch.long, device=self.device)
        attention = torch.zeros(rows, length, dtype=torch.long, device=self.device)
        attention[:, 0] = 1
        graph, output = self._record(lambda: self.forward(input_ids, attention))
        entry = _Graph(graph, input_ids, attention, output)
        self._graphs[key] = entry
        return entry

    def _graph_for(self, graphs: dict[Any, Any], key: Any, capture: Callable[[Any], Any]) -> Any:
        """The graph of ``key`` in ``graphs``, captured now if it is not there yet; None where the capture
        fails, which turns graphs off (logged): a capture failure costs speed, never the request."""
        entry = graphs.get(key)
        if entry is None:
            try:
                entry = capture(key)
            except Exception as exc:
                log.warning("CUDA graph capture of %s failed (%r); running without graphs", key, exc)
                self.use_graphs = False
        return entry

    def _record(self, run: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """``run`` captured into a CUDA graph (in the pool all graphs share) and the graph's static output."""
        started = time.perf_counter()
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        # Run once on a side stream first: lazy cuBLAS / kernel initialisation and Triton's compiles must not
        # happen inside the capture.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            output = run()
        self.graph_seconds += time.perf_counter() - started
        return graph, output


def _layer(x: torch.Tensor, bias: torch.Tensor, w: _Layer, rows: int, length: int, heads: int, d_kv: int,
           eps: float, relu_bias: torch.Tensor) -> None:
    """One T5 encoder block, updating the residual stream ``x`` (rows*length, d_model) in place."""
    d_model = x.shape[1]
    h = F.rms_norm(x, (d_model,), w.ln1, eps)
    qkv = torch.mm(h, w.qkv_t).view(rows, length, 3, heads, d_kv)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (rows, heads, L, d_kv), no copies
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    x.addmm_(attended.transpose(1, 2).reshape(rows * length, heads * d_kv), w.o_t)
    h = F.rms_norm(x, (d_model,), w.ln2, eps)
    x.addmm_(torch._addmm_activation(relu_bias, h, w.wi_t), w.wo_t)
