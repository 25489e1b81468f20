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

# (longest row, row counts 1..k) -> token slots computed for a micro-batch of each row count.
SlotCost = Callable[[int, np.ndarray], np.ndarray]


def padded_slots(longest: int, rows: np.ndarray) -> np.ndarray:
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
    sorted_lengths = np.asarray([lengths[i] for i in order], dtype=np.float64)
    # best[j]: least cost of the first j sorted items; cut[j]: where their last group starts.
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, dtype=np.int64)
    for start in range(n):
        longest = sorted_lengths[start]
        rows = min(max_rows, n - start, max(1, int(max_tokens // longest)))
        candidates = best[start] + overhead_tokens + slots(int(longest), np.arange(1, rows + 1))
        window = best[start + 1:start + rows + 1]
        better = candidates < window
        window[better] = candidates[better]
        cut[start + 1:start + rows + 1][better] = start
    batches: list[list[int]] = []
    end = n
    while end > 0:
        start = int(cut[end])
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches
