"""The micro-batch planner: a partition of the items, within the limits, with little padding."""

from __future__ import annotations

import random

import pytest

from handler.batching import packed_plan, plan_micro_batches


def padded_cost(lengths, batches, overhead=0):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("seed", range(5))
def test_every_item_lands_in_exactly_one_batch_within_limits(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 512) for _ in range(rng.randint(1, 400))]
    batches = plan_micro_batches(lengths, max_tokens=4096, max_rows=32, overhead_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 4096


def test_sorting_removes_most_padding_of_random_lengths():
    rng = random.Random(7)
    lengths = [rng.randint(16, 190) for _ in range(256)]
    batches = plan_micro_batches(lengths, max_tokens=16384, max_rows=128, overhead_tokens=0)
    arrival_order = [list(range(i, i + 64)) for i in range(0, 256, 64)]
    assert padded_cost(lengths, batches) < 1.05 * sum(lengths)
    assert padded_cost(lengths, arrival_order) > 1.3 * sum(lengths)


def test_a_per_batch_overhead_trades_padding_for_fewer_batches():
    lengths = [100, 90, 80, 70, 60, 50, 40, 30]
    cheap = plan_micro_batches(lengths, 10_000, 128, overhead_tokens=0)
    costly = plan_micro_batches(lengths, 10_000, 128, overhead_tokens=10_000)
    assert len(cheap) == len(lengths) and len(costly) == 1


def test_an_item_over_the_budget_gets_its_own_batch():
    assert plan_micro_batches([600, 5, 5], max_tokens=512, max_rows=8) == [[0], [1, 2]]


def test_empty_input_gives_no_batches():
    assert plan_micro_batches([], 512, 8) == []


def test_a_bucketed_shape_is_priced_so_batches_fill_their_buckets():
    """With CUDA graphs a micro-batch runs padded to its bucket (rows rounded up to a power of two here):
    planning with that price computes fewer slots than planning as if batches ran in their own shape."""
    import numpy as np

    def power_of_two_rows(longest, rows):
        return longest * 2 ** np.ceil(np.log2(rows))

    def real_cost(lengths, batches):
        return sum(512 + power_of_two_rows(max(lengths[i] for i in b), np.array([len(b)]))[0] for b in batches)

    rng = random.Random(3)
    naive = bucketed = 0.0
    for _ in range(20):
        lengths = [rng.randint(17, 195) for _ in range(rng.randint(20, 128))]
        naive += real_cost(lengths, plan_micro_batches(lengths, 16384, 128, 512))
        bucketed += real_cost(lengths, plan_micro_batches(lengths, 16384, 128, 512, power_of_two_rows))
    assert bucketed < 0.95 * naive


def reference_plan_cost(lengths, max_tokens, max_rows, overhead, slots):
    """The least total cost by a plain dynamic programme over the sorted lengths (independent of the planner)."""
    ordered = sorted(lengths, reverse=True)
    best = [0.0] + [float("inf")] * len(ordered)
    for end in range(1, len(ordered) + 1):
        for start in range(max(0, end - max_rows), end):
            rows = end - start
            if rows > 1 and rows * ordered[start] > max_tokens:
                continue
            best[end] = min(best[end], best[start] + overhead + float(slots(ordered[start], rows)))
    return best[-1]


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_costs_the_least_a_partition_of_sorted_items_can(seed):
    import numpy as np

    def bucketed(longest, rows):  # graph-like buckets: rows to a power of two, length to a multiple of 16
        return (-(-np.asarray(longest) // 16) * 16) * 2 ** np.ceil(np.log2(rows))

    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 150))]
    for slots in (lambda longest, rows: np.asarray(longest) * rows, bucketed):
        for overhead in (0, 128, 2048):
            batches = plan_micro_batches(lengths, 4096, 32, overhead, slots)
            cost = sum(overhead + float(slots(max(lengths[i] for i in b), len(b))) for b in batches)
            assert cost == pytest.approx(reference_plan_cost(lengths, 4096, 32, overhead, slots))


def test_packed_plan_fills_micro_batches_with_real_tokens_longest_first():
    lengths = [5, 50, 20, 50, 7, 600, 30]
    plan = packed_plan(lengths, max_tokens=100, max_rows=3)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    assert plan[0] == [5]  # longer than max_tokens: alone
    assert all(sum(lengths[i] for i in batch) <= 100 and len(batch) <= 3 for batch in plan[1:])
    assert [lengths[i] for batch in plan for i in batch] == sorted(lengths, reverse=True)
