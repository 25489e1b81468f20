"""Packed micro-batches: the matrix products of a T5 layer run on the real tokens only, not on padding.

A padded micro-batch of rows x longest computes every padding slot in every matrix product; a server's dynamic
batch of 64 random-length pairs, padded in 2-3 length-sorted micro-batches and their CUDA-graph buckets, is
~25% padding (benchmarks/NOTES.md). Here the batch's sequences are concatenated into ONE token stream (T tokens,
T = the real token count): the norms, the q|k|v, output and feed-forward products run on (T, d_model).
Attention alone needs the per-sequence layout (T5's relative position bias, no attention across sequences):
the stream's q|k|v rows are gathered into a few padded *attention groups* (rows of similar length, each padded
to its own longest row), attended with the same SDPA call and merged bias as the padded forward, and the
results gathered back into the stream. Attention is ~2% of the arithmetic at these lengths, so its padding
costs little; the two gathers move ~8 KB a token a layer.

``PackedLayout`` is the host-side plan (numpy, built once per micro-batch); ``FastT5Encoder.forward_packed``
(handler/acceleration.py) runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

# A new attention group starts when a row is shorter than this share of the group's longest row (padding in
# attention stays under ~1/3 of its slots) and the group already has enough rows to keep the kernel busy.
GROUP_SHRINK = 0.7
GROUP_MIN_ROWS = 8


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Where each token of a micro-batch lives: in the packed stream, in the attention groups, in the output.

    Rows keep the batch's order; the stream holds row 0's tokens, then row 1's, ... (``starts``).
    """

    lengths: np.ndarray  # (rows,) tokens per row
    starts: np.ndarray  # (rows,) offset of each row's first token in the stream
    group_rows: list[np.ndarray]  # per attention group: the batch rows in it, longest first
    group_lengths: list[int]  # per attention group: its padded length (its longest row)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def stream_index(self, rows: np.ndarray, length: int) -> np.ndarray:
        """(len(rows) * length,) stream index of each slot of rows x length; padding slots -> ``tokens``."""
        positions = np.arange(length)[None, :]
        index = self.starts[rows][:, None] + positions
        return np.where(positions < self.lengths[rows][:, None], index, self.tokens).reshape(-1)

    def group_gather(self) -> np.ndarray:
        """(slots,) stream index of every slot of every attention group, groups one after another."""
        return np.concatenate([self.stream_index(rows, length)
                               for rows, length in zip(self.group_rows, self.group_lengths, strict=True)])

    def group_scatter(self) -> np.ndarray:
        """(tokens,) the group slot that holds each stream token (inverse of ``group_gather`` on real slots)."""
        gather = self.group_gather()
        scatter = np.empty(self.tokens, dtype=np.int64)
        real = gather < self.tokens
        scatter[gather[real]] = np.nonzero(real)[0]
        return scatter

    def group_masks(self) -> list[np.ndarray]:
        """Per attention group: its (rows, length) attention mask (1 = real token)."""
        return [(np.arange(length)[None, :] < self.lengths[rows][:, None]).astype(np.int64)
                for rows, length in zip(self.group_rows, self.group_lengths, strict=True)]


def plan_layout(lengths: Sequence[int], shrink: float = GROUP_SHRINK,
                min_rows: int = GROUP_MIN_ROWS) -> PackedLayout:
    """The packed layout of rows of these lengths, attention groups cut greedily in length order."""
    lengths_np = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_np)[:-1]]).astype(np.int64)
    order = np.argsort(-lengths_np, kind="stable")
    groups: list[np.ndarray] = []
    group_lengths: list[int] = []
    first = 0
    for position in range(1, len(order) + 1):
        at_end = position == len(order)
        if at_end or (position - first >= min_rows
                      and lengths_np[order[position]] < shrink * lengths_np[order[first]]):
            groups.append(order[first:position])
            group_lengths.append(int(lengths_np[order[first]]))
            first = position
    return PackedLayout(lengths_np, starts, groups, group_lengths)


def packed_plan(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Micro-batches of packed rows: longest first, each up to ``max_tokens`` REAL tokens and ``max_rows`` rows.

    No padding to price, so no search: consecutive rows in length order fill each micro-batch (similar lengths
    together keep the attention groups few). A row longer than ``max_tokens`` gets a micro-batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        if current and (tokens + lengths[index] > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += lengths[index]
    if current:
        batches.append(current)
    return batches


@dataclasses.dataclass
class PackedTensors:
    """A layout's index tensors on the device, as ``FastT5Encoder.forward_packed`` reads them."""

    tokens: int
    gather: torch.Tensor  # (slots,) stream index of each attention-group slot (``tokens`` = padding)
    scatter: torch.Tensor  # (tokens,) group slot of each stream token
    groups: list[tuple[int, int, int]]  # (first slot, rows, length) per attention group
    group_masks: list[torch.Tensor]  # (rows, length) attention mask per group
    output: torch.Tensor  # (rows * longest,) stream index of each slot of the padded output (``tokens`` = pad)


def to_device(layout: PackedLayout, device: torch.device, longest: int) -> PackedTensors:
    """One host->device copy for all of a layout's indices (they are small; each copy has a fixed cost)."""
    gather = layout.group_gather()
    scatter = layout.group_scatter()
    output = layout.stream_index(np.arange(len(layout.lengths)), longest)
    masks = layout.group_masks()
    flat = np.concatenate([gather, scatter, output, *[m.reshape(-1) for m in masks]])
    host = torch.from_numpy(flat)
    if device.type == "cuda":
        host = host.pin_memory()
    on_device = host.to(device, non_blocking=device.type == "cuda")
    pieces = on_device.split([len(gather), len(scatter), len(output), *[m.size for m in masks]])
    groups = []
    first = 0
    for rows, length in zip(layout.group_rows, layout.group_lengths, strict=True):
        groups.append((first, len(rows), length))
        first += len(rows) * length
    group_masks = [piece.view(m.shape) for piece, m in zip(pieces[3:], masks, strict=True)]
    return PackedTensors(layout.tokens, pieces[0], pieces[1], groups, group_masks, pieces[2])
