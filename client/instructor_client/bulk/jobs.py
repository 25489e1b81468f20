"""Cut the input's rows into jobs (one request each) as they are read, skipping rows an earlier run stored.

Good rows are numbered in input order (bad ones are not: they are reported, never sent); a job holds
consecutive good rows, at most ``RequestSize.pairs`` of them and about ``max_bytes`` of JSON, and never
spans a range that is already stored, so every stored chunk stays one contiguous range of row numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from instructor_client.batching import encode_pair
from instructor_client.bulk.readers import BadRow, Row
from instructor_client.bulk.runner import Job
from instructor_client.bulk.sizing import RequestSize


class JobSource:
    """An iterator of Jobs over ``rows``; counts what it saw (``good``, ``bad``, ``already`` stored)."""

    def __init__(self, rows: Iterable[Row | BadRow], done: list[tuple[int, int]], size: RequestSize,
                 max_bytes: int, on_bad: Callable[[BadRow], None], on_stored: Callable[[int], None]) -> None:
        self._rows = rows
        self._done = sorted(done)
        self._size = size
        self._max_bytes = max_bytes
        self._on_bad = on_bad
        self._on_stored = on_stored
        self.good = 0
        self.bad = 0
        self.already = 0
        self.finished = False  # the whole input has been read

    def __iter__(self) -> Iterator[Job]:
        rows: list[tuple[int, Any]] = []
        encoded: list[bytes] = []
        size = 0
        start = 0
        gap = 0  # index into self._done: the next stored range at or after the current row
        for row in self._rows:
            if isinstance(row, BadRow):
                self.bad += 1
                self._on_bad(row)
                self._on_stored(1)
                continue
            index = self.good
            self.good += 1
            while gap < len(self._done) and self._done[gap][1] <= index:
                gap += 1
            if gap < len(self._done) and self._done[gap][0] <= index:
                self.already += 1  # stored by an earlier run
                self._on_stored(1)
                if rows:
                    yield Job(start, rows, encoded)
                    rows, encoded, size = [], [], 0
                continue
            item = encode_pair((row.instruction, row.text), index)
            if rows and (len(rows) >= self._size.pairs or size + len(item) + 1 > self._max_bytes):
                yield Job(start, rows, encoded)
                rows, encoded, size = [], [], 0
            if not rows:
                start = index
            rows.append((row.line, row.id))
            encoded.append(item)
            size += len(item) + 1
        if rows:
            yield Job(start, rows, encoded)
        self.finished = True
