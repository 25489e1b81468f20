"""The client's adaptive number of requests in flight (with a fake clock) and its numpy transport decoding."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from instructor_client.concurrency import AdaptiveLimit, FixedLimit, make_limit
from instructor_client.errors import ResponseFormatError
from instructor_client.transport import TokenTally, decode_vectors, request_body, tokens_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_window(limit: AdaptiveLimit, clock: Clock, pairs_per_s: float, pairs: int = 100,
               seconds: float = 0.1) -> None:
    """One window of requests at a given server throughput, each taking ``seconds``."""
    for _ in range(limit.limit):
        clock.now += pairs / pairs_per_s
        limit.completed(pairs, seconds)


def test_the_limit_doubles_far_from_the_plateau_then_creeps_then_holds():
    clock = Clock()
    limit = AdaptiveLimit(start=4, maximum=64, clock=clock)
    run_window(limit, clock, 1000)  # the first window always grows
    assert limit.limit == 8
    run_window(limit, clock, 2000)  # twice the rate at twice the limit: latency-bound, double again
    assert limit.limit == 16
    run_window(limit, clock, 2200)  # +10%: a quarter more
    assert limit.limit == 20
    run_window(limit, clock, 2210)  # no gain, once: could be noise, stay
    run_window(limit, clock, 2190)  # twice: the plateau
    assert limit.limit == 20
    run_window(limit, clock, 9000)  # held at the plateau until the server pushes back
    assert limit.limit == 20


def test_a_full_queue_halves_the_limit_and_growth_starts_again():
    clock = Clock()
    limit = AdaptiveLimit(start=16, maximum=64, clock=clock)
    limit.overloaded()
    assert limit.limit == 8
    limit.overloaded()
    limit.overloaded()
    limit.overloaded()
    limit.overloaded()
    assert limit.limit == 1  # never below the minimum
    run_window(limit, clock, 100)
    assert limit.limit == 2


def test_requests_near_the_timeout_stop_the_growth_and_far_past_it_shrink_the_limit():
    clock = Clock()
    limit = AdaptiveLimit(start=8, maximum=64, clock=clock, max_latency=30.0)
    run_window(limit, clock, 1000, seconds=31.0)  # faster, but requests already take over a quarter of the timeout
    assert limit.limit == 8
    run_window(limit, clock, 2000, seconds=61.0)  # they wait in the server's queue: fewer in flight
    assert limit.limit == 6
    run_window(limit, clock, 2000, seconds=5.0)
    assert limit.limit == 12


def test_full_batches_on_the_server_stop_the_growth_without_halving():
    clock = Clock()
    limit = AdaptiveLimit(start=8, maximum=64, clock=clock)
    limit.saturated()
    run_window(limit, clock, 5000)  # faster, but the server said its batches are full: no growth
    assert limit.limit == 8
    run_window(limit, clock, 10000)  # a window without it grows again
    assert limit.limit == 16


def test_the_limit_never_passes_its_maximum_and_a_fixed_one_never_moves():
    clock = Clock()
    limit = AdaptiveLimit(start=4, maximum=10, clock=clock)
    for rate in (100, 1000, 10000, 100000):
        run_window(limit, clock, rate)
    assert limit.limit == 10
    fixed = make_limit(3)
    assert isinstance(fixed, FixedLimit)
    fixed.overloaded()
    fixed.completed(10)
    assert fixed.limit == 3 and isinstance(make_limit("auto"), AdaptiveLimit)
    for bad in (0, -1, "4", True, 2.5):
        with pytest.raises(ValueError, match="concurrency"):
            make_limit(bad)  # type: ignore[arg-type]


def test_base64_and_float_bodies_decode_to_the_same_float32():
    vectors = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    as_base64 = json.dumps([base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]).encode()
    as_floats = json.dumps([[float(x) for x in v] for v in vectors]).encode()
    np.testing.assert_array_equal(decode_vectors(as_base64, 5, "u"), vectors)
    np.testing.assert_array_equal(decode_vectors(as_floats, 5, "u"), vectors)
    assert decode_vectors(b"[]", 0, "u").shape == (0, 0)
    for body, n in ((as_base64, 4), (b'["AAAA", "AAAAAAAA"]', 2), (b'["not base64!"]', 1), (b"{}", 1),
                    (b"<html>", 1), (b"[[1, 2], [3]]", 2)):
        with pytest.raises(ResponseFormatError):
            decode_vectors(body, n, "u")


def test_request_body_asks_for_base64_and_keeps_truncate():
    body = json.loads(request_body([b'["i", "t"]'], truncate=False))
    assert body == {"inputs": [["i", "t"]], "truncate": False, "encoding_format": "base64"}
    assert json.loads(request_body([b'["i", "t"]'], encoding="float")) == {"inputs": [["i", "t"]]}


def test_token_counts_are_read_when_present_and_the_tally_says_when_they_are_not():
    assert tokens_of({"X-Instructor-Tokens": " 42 "}) == 42
    assert tokens_of({}) is None and tokens_of({"X-Instructor-Tokens": "many"}) is None
    tally = TokenTally()
    assert tally.total is None and tally.describe(0) == "not reported by the server"
    tally.add(30)
    tally.add(None)
    tally.add(10)
    assert tally.total == 40 and "1 request(s) without a count" in tally.describe(4)
