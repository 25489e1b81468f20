"""The look-ahead that overlaps tokenization with embedding: order, one step ahead, errors, early stop."""

from __future__ import annotations

import contextlib
import threading

import pytest

from handler.lookahead import ahead


def test_results_come_in_order_and_the_next_input_is_worked_on_while_the_caller_holds_this_one():
    started = {i: threading.Event() for i in range(4)}

    def work(i: int) -> int:
        started[i].set()
        return i * 10

    seen = []
    for i, result in enumerate(ahead(work, [0, 1, 2, 3])):
        seen.append(result)
        if i + 1 < 4:  # while the caller still holds result i, input i+1 is on the helper thread
            assert started[i + 1].wait(timeout=30)
    assert seen == [0, 10, 20, 30]


def test_an_error_is_raised_where_its_result_is_taken_and_later_work_is_cancelled():
    calls = []

    def work(i: int) -> int:
        calls.append(i)
        if i == 1:
            raise ValueError("chunk 1")
        return i

    results = ahead(work, [0, 1, 2, 3, 4])
    assert next(results) == 0
    with pytest.raises(ValueError, match="chunk 1"):
        next(results)
    assert 4 not in calls and 3 not in calls


def test_closing_early_joins_the_helper_and_starts_nothing_more():
    calls = []
    with contextlib.closing(ahead(calls.append, list(range(10)))) as results:
        next(results)
    assert len(calls) <= 2
    assert not any(thread.name.startswith("lookahead") for thread in threading.enumerate())


def test_a_single_input_runs_on_the_callers_thread():
    assert list(ahead(lambda _: threading.current_thread().name, ["only"])) == [threading.current_thread().name]
