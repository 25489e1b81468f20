"""Embed ranges of rows with bounded concurrency, storing each finished request at once.

A request the server refuses (4xx) does not sink its neighbours: when the error names the pair, that
row is recorded as failed and the rest of the request is sent again; when it does not (a bare 413),
the request is halved until the failing row stands alone. Failures a retry could not cure (server
unreachable, queue still full, token refused) stop the run: new requests are no longer sent, the ones
in flight finish and are stored, and ``--resume`` continues later. So do refusals that are not about a
row (404 for an unknown model name, ...): bisecting them would only send one request per row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from instructor_client.client import InstructorClient
from instructor_client.errors import (
    APIError,
    InputTooLongError,
    InstructorServeError,
    InvalidInputError,
    PayloadTooLargeError,
)

# Refusals that are about a pair the request carried: isolate the row, keep the others going.
ROW_ERRORS = (InvalidInputError, PayloadTooLargeError, InputTooLongError)


@dataclass
class RunResult:
    embedded: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # good-row index -> why
    fatal: InstructorServeError | None = None


def embed_ranges(client: InstructorClient, encoded: Sequence[bytes], ranges: Sequence[tuple[int, int]],
                 store: Callable[[int, int, list[list[float]]], None], concurrency: int,
                 on_progress: Callable[[int], None]) -> RunResult:
    """Send every range (one request each), call ``store(start, end, vectors)`` as each finishes."""
    result = RunResult()
    queue: deque[tuple[int, int]] = deque(ranges)
    in_flight: dict[Future[list[list[float]]], tuple[int, int]] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        while in_flight or (queue and result.fatal is None):
            while queue and result.fatal is None and len(in_flight) < concurrency:
                start, end = queue.popleft()
                in_flight[pool.submit(client.embed_request, encoded[start:end], start)] = (start, end)
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                start, end = in_flight.pop(future)
                try:
                    vectors = future.result()
                except APIError as error:
                    if not isinstance(error, ROW_ERRORS):  # not about the rows: 404 model, token, 5xx
                        result.fatal = result.fatal or error
                        continue
                    failed_before = len(result.failed)
                    for piece in _isolate(error, start, end, result):
                        queue.appendleft(piece)
                    on_progress(len(result.failed) - failed_before)
                except InstructorServeError as error:  # unreachable server, malformed response
                    result.fatal = result.fatal or error
                else:
                    store(start, end, vectors)
                    result.embedded += end - start
                    on_progress(end - start)
    return result


def _isolate(error: APIError, start: int, end: int, result: RunResult) -> list[tuple[int, int]]:
    """Record the row the error is about, if known, and return the ranges still to send."""
    if end - start == 1:
        result.failed[start] = str(error)
        return []
    bad = error.index
    if bad is not None and start <= bad < end:
        result.failed[bad] = str(error)
        return [piece for piece in ((start, bad), (bad + 1, end)) if piece[0] < piece[1]]
    middle = (start + end) // 2
    return [(start, middle), (middle, end)]
