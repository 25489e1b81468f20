"""How many requests to keep in flight: grown while throughput grows, halved when the server says it is full.

A fixed number is either too few for a GPU server (it idles between requests) or too many for a small
one (its queue fills: 503). ``AdaptiveLimit`` starts low and, after each window of completed requests
(one per slot), compares the window's pairs/s with the best rate seen at a lower limit: a large gain
(``FAST_GAIN``: the server is latency-bound) doubles the limit, a smaller one (``GAIN``) adds a quarter,
and two windows in a row without a gain mean the server's plateau: the limit stays. A 503/507 (the
queue is full, the worker died, a request timed out) halves it at once, AIMD-style, and the growth starts
again from there. A slow server is not pushed towards the client's timeout: the limit does not grow while a
window's slowest request took more than ``max_latency`` (a quarter of the timeout), and shrinks by a
quarter when it took more than twice that (requests then wait in the server's queue, not on its model).
The handler's own 503 "Overloaded" (this dynamic batch already carries its token budget: retry at once)
means the server has more work queued than one batch takes, i.e. it is saturated, not drowning: the window
counts as one without gain (no growth), and the limit is not halved.
``FixedLimit`` is the same interface for a number the caller chose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

AUTO = "auto"
START = 4
# Per server: 32 requests of 256 pairs keep ~8,000 pairs queued on a GPU server (over a second of its work)
# and cost ~100-300 MB of client memory at the peak (each request's body, JSON and matrix, 384-768 floats).
MAXIMUM_PER_SERVER = 32
GAIN = 1.05  # a window must be this much faster than the best one below it for the limit to grow again
FAST_GAIN = 1.3  # ... and this much faster for it to double (far from the plateau: get there in few windows)


class FixedLimit:
    """Always ``limit`` requests in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.maximum = limit

    def completed(self, pairs: int, seconds: float = 0.0) -> None:
        pass

    def overloaded(self) -> None:
        pass

    def saturated(self) -> None:
        pass


class AdaptiveLimit:
    """The limit of requests in flight, between ``minimum`` and ``maximum`` (see the module docstring)."""

    def __init__(self, start: int = START, maximum: int = MAXIMUM_PER_SERVER, minimum: int = 1,
                 clock: Callable[[], float] = time.monotonic, max_latency: float | None = None) -> None:
        self.minimum, self.maximum = minimum, max(minimum, maximum)
        self.max_latency = max_latency
        self.limit = min(max(start, minimum), self.maximum)
        self._clock = clock
        self._lock = threading.Lock()
        self._best_below = 0.0  # best pairs/s seen at a limit lower than the current one
        self._plateau = False
        self._misses = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_started = self._clock()
        self._window_requests = 0
        self._window_pairs = 0
        self._window_slowest = 0.0
        self._window_saturated = False

    def saturated(self) -> None:
        """The server's batches are full (its 503 "Overloaded"): more in flight brings nothing now."""
        with self._lock:
            self._window_saturated = True

    def completed(self, pairs: int, seconds: float = 0.0) -> None:
        """A request of ``pairs`` pairs finished in ``seconds``; may move the limit at the end of a window."""
        with self._lock:
            self._window_requests += 1
            self._window_pairs += pairs
            self._window_slowest = max(self._window_slowest, seconds)
            # A window holds one request per slot: every slot has turned over, so its rate is the limit's.
            if self._window_requests < self.limit:
                return
            elapsed = self._clock() - self._window_started
            rate = self._window_pairs / elapsed if elapsed > 0 else float("inf")
            slow = self.max_latency is not None and self._window_slowest > self.max_latency
            if slow and self._window_slowest > 2 * self.max_latency:  # type: ignore[operator]
                self.limit = max(self.minimum, self.limit - max(1, self.limit // 4))
            elif slow or self._plateau or self.limit >= self.maximum:
                pass
            elif rate > self._best_below * GAIN and not self._window_saturated:
                step = self.limit if rate > self._best_below * FAST_GAIN else max(1, self.limit // 4)
                self._best_below = max(self._best_below, rate)
                self._misses = 0
                self.limit = min(self.maximum, self.limit + step)
            else:
                # Two windows in a row without a gain: more in flight no longer helps (one could be noise).
                self._misses += 1
                self._plateau = self._misses >= 2
            self._reset_window()

    def overloaded(self) -> None:
        """The server answered 503/507 or a request timed out: halve the limit and learn again from there."""
        with self._lock:
            self.limit = max(self.minimum, self.limit // 2)
            self._best_below = 0.0
            self._plateau = False
            self._misses = 0
            self._reset_window()


Limit = FixedLimit | AdaptiveLimit


def make_limit(concurrency: int | str, max_latency: float | None = None, servers: int = 1) -> Limit:
    """``"auto"`` -> AdaptiveLimit (up to MAXIMUM_PER_SERVER per server); an int >= 1 -> FixedLimit;
    ValueError otherwise."""
    if concurrency == AUTO:
        return AdaptiveLimit(maximum=MAXIMUM_PER_SERVER * max(1, servers), max_latency=max_latency)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be 'auto' or an integer >= 1; got {concurrency!r}")
    return FixedLimit(concurrency)
