"""How many pairs a bulk request carries: --batch-size at most, lowered while the server refuses that many.

A request refused as too large as a whole (413 naming no pair: the server's per-request token budget, a
body over its size limit) halves the size of the requests made from then on, instead of every later
request being refused and split again; after ``REGROW`` requests of the lowered size in a row succeed it
doubles again (the server's budget may have been raised, e.g. after a worker restart).
"""

from __future__ import annotations

REGROW = 32


class RequestSize:
    """Pairs per request: ``limit`` (--batch-size) at most, lowered while the server refuses that many."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pairs = limit
        self._successes = 0

    def too_large(self, pairs: int) -> None:
        """A request of ``pairs`` pairs was refused as too large as a whole."""
        self.pairs = max(1, min(self.pairs, pairs // 2))
        self._successes = 0

    def succeeded(self, pairs: int) -> None:
        if self.pairs >= self.limit or pairs < self.pairs:
            return
        self._successes += 1
        if self._successes >= REGROW:
            self.pairs = min(self.limit, self.pairs * 2)
            self._successes = 0
