"""Cut a set of variable-length items into micro-batches with little padding.

Each micro-batch is padded to its longest row, so its cost is ``rows x longest`` token slots plus a
fixed per-batch overhead (kernel launches, host work). Items are sorted longest first and split
into contiguous groups that minimise the total cost (an exact dynamic programme over the sorted
order), subject to ``rows x longest <= max_tokens`` and ``rows <= max_rows``. Sorting is what makes
batching pay: random lengths padded to the longest row waste ~45% of the compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# (longest rows, row counts) -> token slots computed for a micro-batch of each; numpy broadcasting, so the
# planner prices every (first row, row count) candidate of a call in one step.
SlotCost = Callable[[np.ndarray, np.ndarray], np.ndarray]


def padded_slots(longest: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Token slots of a micro-batch padded to its longest row."""
    return longest * rows


def plan_micro_batches(lengths: Sequence[int], max_tokens: int, max_rows: int,
                       overhead_tokens: int = 0, slots: SlotCost = padded_slots) -> list[list[int]]:
    """Group item indices into micro-batches; every index appears exactly once.

    ``overhead_tokens`` prices one extra micro-batch in token slots: 0 gives the least padding,
    larger values trade padding for fewer, bigger batches. ``slots`` prices a micro-batch's compute
    when it runs in a larger shape than its own (a CUDA graph's bucket). An item longer than
    ``max_tokens`` still gets a micro-batch of its own.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("max_tokens and max_rows must be >= 1")
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    sorted_lengths = np.asarray([lengths[i] for i in order], dtype=np.int64)
    # allowed[s]: most rows a micro-batch starting at sorted item s may take; cost[s, r - 1]: its price with r.
    allowed = np.minimum(np.minimum(max_rows, n - np.arange(n)), np.maximum(1, max_tokens // sorted_lengths))
    row_counts = np.arange(1, int(allowed.max()) + 1)
    cost = overhead_tokens + slots(sorted_lengths[:, None], row_counts[None, :]).astype(np.float64)
    # best[j]: least cost of the first j sorted items; cut[j]: where their last group starts. The host runs
    # this while the accelerator may wait (a worker's small batches), so each step is a few array operations.
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for start in range(n):
        rows = int(allowed[start])
        candidates = cost[start, :rows] + best[start]
        window = best[start + 1:start + rows + 1]
        better = candidates < window
        np.copyto(window, candidates, where=better)
        np.copyto(cut[start + 1:start + rows + 1], start, where=better)
    batches: list[list[int]] = []
    end = n
    while end > 0:
        start = int(cut[end])
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches


def packed_plan(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Micro-batches for packed token streams: longest first, each up to ``max_tokens`` REAL tokens and
    ``max_rows`` rows. A stream has no padding to price, so no search: consecutive rows in length order fill
    each micro-batch. A row longer than ``max_tokens`` gets a micro-batch of its own."""
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
