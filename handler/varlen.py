"""T5 self-attention over a packed token stream: many sequences, no padding, one kernel launch (Triton).

The packed forward (``FastT5Encoder.forward_stream``) runs a micro-batch's sequences as ONE stream of tokens:
matrix products and norms on the real tokens only, in a CUDA graph per stream length. Attention is the one
step that needs the sequences apart; this kernel reads them straight from the stream's q|k|v rows, given the
sequences' boundaries (``cu_seqlens``, a device tensor, so a captured graph serves any mix of lengths):

- scores q.k (T5 has no 1/sqrt(d_kv)) plus T5's relative position bias, which depends only on the offset
  key - query: one row per head of ``2 * max_len - 1`` values (``bias_table``), read by offset, instead of a
  (rows, heads, L, L) tensor per micro-batch;
- an online softmax in float32 (flash attention), products in bfloat16 with float32 accumulation;
- the grid covers ``max_rows`` sequences of up to ``max_len`` tokens; blocks past a sequence's end, and the
  sequences past the last (``cu_seqlens`` repeats the stream's length), return at once.

Only imported where CUDA and Triton are present (torch's CUDA builds ship Triton). Tests run it on CPU through
Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64  # query rows a program handles
BLOCK_N = 64  # key rows per step of its loop


@triton.jit
def _attention_kernel(qkv, out, cu_seqlens, bias_table, stride_token, stride_out, stride_bias, max_len,
                      HEADS: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block = tl.program_id(0)
    sequence = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(cu_seqlens + sequence)
    length = tl.load(cu_seqlens + sequence + 1) - start
    if block * BLOCK_M < length:
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions in the sequence
        dims = tl.arange(0, D)
        row_ok = rows < length
        q = tl.load(qkv + (start + rows)[:, None] * stride_token + head * D + dims[None, :],
                    mask=row_ok[:, None], other=0.0)
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        first = length * 0  # the loop counter, of the bound's type
        while first < length:  # (a while loop: Triton's interpreter cannot range over a loaded bound)
            cols = first + tl.arange(0, BLOCK_N)  # key positions
            col_ok = cols < length
            k = tl.load(qkv + (start + cols)[:, None] * stride_token + (HEADS + head) * D + dims[None, :],
                        mask=col_ok[:, None], other=0.0)
            v = tl.load(qkv + (start + cols)[:, None] * stride_token + (2 * HEADS + head) * D + dims[None, :],
                        mask=col_ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k))
            offset = cols[None, :] - rows[:, None] + max_len - 1
            both = row_ok[:, None] & col_ok[None, :]
            bias = tl.load(bias_table + head * stride_bias + offset, mask=both, other=0.0)
            scores = tl.where(col_ok[None, :], scores + bias.to(tl.float32), float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp(scores - new_best[:, None])
            scale = tl.exp(best - new_best)
            total = total * scale + tl.sum(weights, 1)
            acc = acc * scale[:, None] + tl.dot(weights.to(v.dtype), v)
            best = new_best
            first += BLOCK_N
        result = acc / total[:, None]
        tl.store(out + (start + rows)[:, None] * stride_out + head * D + dims[None, :],
                 result.to(out.dtype.element_ty), mask=row_ok[:, None])


def varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, bias_table: torch.Tensor, out: torch.Tensor,
                     heads: int, d_kv: int, max_rows: int, max_len: int, longest: int | None = None) -> None:
    """Attention of every sequence of a packed stream, written into ``out`` (tokens, heads * d_kv).

    ``qkv`` (tokens, 3 * heads * d_kv): q of all heads, then k, then v, per token (the fused projection's
    layout); ``cu_seqlens`` (max_rows + 1,) int32: sequence i is tokens [cu[i], cu[i + 1]); ``bias_table``
    (heads, 2 * max_len - 1): the position bias of offset key - query at index offset + max_len - 1;
    ``longest``: no sequence is longer (default ``max_len``; the grid covers that many query rows). Rows of
    ``out`` outside every sequence are left as they are.
    """
    grid = (triton.cdiv(min(longest or max_len, max_len), BLOCK_M), max_rows, heads)
    _attention_kernel[grid](qkv, out, cu_seqlens, bias_table, qkv.stride(0), out.stride(0), bias_table.stride(0),
                            max_len, HEADS=heads, D=d_kv, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
