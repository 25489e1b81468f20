"""Embed a stream of jobs (one request each) with an adaptive number in flight, storing each as it finishes.

Jobs are pulled from the input as slots free up, so memory holds only the requests in flight whatever the
input's size. A request the server refuses for its rows (4xx: 400 InvalidInput, 413, 422 InputTooLong or
NothingToEmbed) does not sink its neighbours: when the error names the pair, that row is recorded as
failed and the rest of the request is sent again; when it does not (a bare 413), the request is halved
until the failing row stands alone. Failures a retry could not cure (server unreachable, queue still
full, token refused) stop the run: new requests are no longer sent, the ones in flight finish and are
stored, and ``--resume`` continues later. So do refusals that are not about a row (404 for an unknown
model name, ...): bisecting them would only send one request per row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructor_client.bulk.sizing import RequestSize
from instructor_client.client import InstructorClient
from instructor_client.concurrency import Limit
from instructor_client.errors import (
    APIError,
    InputTooLongError,
    InstructorServeError,
    InvalidInputError,
    NothingToEmbedError,
    PayloadTooLargeError,
)
from instructor_client.transport import Batch, TokenTally

# Refusals that are about a pair the request carried: isolate the row, keep the others going.
ROW_ERRORS = (InvalidInputError, PayloadTooLargeError, InputTooLongError, NothingToEmbedError)
MAX_KEPT = 20  # failures kept in memory for the summary; the failures file has them all
_NO_VECTORS = np.zeros((0, 0), dtype=np.float32)


@dataclass
class Job:
    """Good rows ``start..start+len(rows)-1`` of the run: their ``(line, id)`` and encoded pairs."""

    start: int
    rows: list[tuple[int, Any]]
    encoded: list[bytes]

    @property
    def end(self) -> int:
        return self.start + len(self.rows)

    def piece(self, begin: int, end: int) -> Job:
        """Rows ``begin..end-1`` (run indices) of this job."""
        a, b = begin - self.start, end - self.start
        return Job(begin, self.rows[a:b], self.encoded[a:b])


@dataclass(frozen=True)
class Failure:
    """A row the server refused: where it is in the input and what the server said."""

    line: int
    id: Any
    status: int | None
    type: str
    message: str


@dataclass
class RunResult:
    embedded: int = 0
    failed: int = 0
    first_failures: list[Failure] = field(default_factory=list)
    fatal: InstructorServeError | OSError | None = None
    tokens: TokenTally = field(default_factory=TokenTally)


def embed_jobs(client: InstructorClient, jobs: Iterator[Job], limit: Limit, size: RequestSize,
               store: Callable[[Job, Batch], None], record_failure: Callable[[Failure], None],
               on_progress: Callable[[int], None]) -> RunResult:
    """Send every job, call ``store(job, batch)`` as each finishes and ``record_failure`` per refused row.

    ``store`` runs on the request's thread (an fsync then overlaps other requests instead of holding up
    the scheduling of new ones); ``record_failure`` and ``on_progress`` on the calling thread."""
    result = RunResult()

    def send(job: Job) -> Batch:
        batch = client.embed_request(job.encoded, job.start)
        store(job, batch)
        # The vectors are on disk now: the finished future must not keep them (up to 2 x limit futures
        # can be finished at once, and each holds its result until the next wait).
        return Batch(_NO_VECTORS, batch.tokens, batch.seconds)

    retry: deque[Job] = deque()  # pieces of refused requests: sent before new jobs
    in_flight: dict[Future[Batch], Job] = {}

    def fail(row: tuple[int, Any], error: APIError) -> None:
        failure = Failure(row[0], row[1], error.status, error.type, error.message)
        result.failed += 1
        if len(result.first_failures) < MAX_KEPT:
            result.first_failures.append(failure)
        record_failure(failure)
        on_progress(1)

    with ThreadPoolExecutor(limit.maximum) as pool:
        while True:
            while result.fatal is None and len(in_flight) < limit.limit:
                job = retry.popleft() if retry else next(jobs, None)
                if job is None:
                    break
                in_flight[pool.submit(send, job)] = job
            if not in_flight:
                return result
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                try:
                    batch = future.result()
                except APIError as error:
                    if not isinstance(error, ROW_ERRORS):  # not about the rows: 404 model, token, 5xx
                        result.fatal = result.fatal or error
                        continue
                    if isinstance(error, PayloadTooLargeError) and error.index is None and len(job.rows) > 1:
                        size.too_large(len(job.rows))  # the next requests are made smaller from the start
                    retry.extendleft(reversed(_isolate(error, job, fail)))
                except (InstructorServeError, OSError) as error:  # unreachable server, bad response, disk full
                    result.fatal = result.fatal or error
                else:
                    result.embedded += len(job.rows)
                    result.tokens.add(batch.tokens)
                    limit.completed(len(job.rows), batch.seconds)
                    size.succeeded(len(job.rows))
                    on_progress(len(job.rows))


def _isolate(error: APIError, job: Job, fail: Callable[[tuple[int, Any], APIError], None]) -> list[Job]:
    """Record the row the error is about, if known, and return the pieces of the job still to send."""
    if len(job.rows) == 1:
        fail(job.rows[0], error)
        return []
    bad = error.index
    if bad is not None and job.start <= bad < job.end:
        fail(job.rows[bad - job.start], error)
        return [job.piece(a, b) for a, b in ((job.start, bad), (bad + 1, job.end)) if a < b]
    middle = (job.start + job.end) // 2
    return [job.piece(job.start, middle), job.piece(middle, job.end)]
