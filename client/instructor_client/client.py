"""``InstructorClient`` (threads) and ``AsyncInstructorClient`` (asyncio) for ``POST /predictions/<model>``.

Both split the caller's pairs into requests under the server's limits (up to 256 pairs each), keep
requests in flight (``concurrency="auto"``: grown while throughput grows, halved on 503; see
``concurrency.py``), retry what a retry can cure (see ``retry.py``), send again in halves a request the
server refuses as too large as a whole (413 naming no pair: its per-request token budget), and read the
vectors as base64 float32 decoded by numpy (see ``transport.py``). ``embed`` returns plain lists of
floats in input order (``numpy.asarray(vectors, dtype=numpy.float32)`` gives back the server's float32
exactly) with the token count the server reported in ``.tokens``; ``embed_array`` returns the float32
matrix itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import numpy as np

from instructor_client.auth import resolve_token
from instructor_client.batching import (
    MAX_PAIRS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    check_batch_size,
    check_pairs,
    encode_pair,
    plan_requests,
)
from instructor_client.concurrency import AUTO, Limit, make_limit
from instructor_client.errors import ConnectionFailedError, PayloadTooLargeError, error_for_status
from instructor_client.progress import progress_bar
from instructor_client.retry import RetryPolicy, is_retryable_status, parse_retry_after
from instructor_client.transport import (
    DEFAULT_ENCODING,
    ENCODINGS,
    Batch,
    TokenTally,
    decode_vectors,
    request_body,
    tokens_of,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "demo"
DEFAULT_TIMEOUT = 120.0  # the archives' responseTimeout: the server gives up on a request after that
DEFAULT_MAX_RETRIES = 5
DEFAULT_BATCH_SIZE = MAX_PAIRS_PER_REQUEST  # a GPU server embeds large requests at its bulk rate
DEFAULT_CONCURRENCY: int | str = AUTO
# An input smaller than (batch size x requests in flight) is spread over the slots, but no request is
# made smaller than this: tiny requests cost the server more per pair than they gain in parallelism.
MIN_AUTO_BATCH = 32

Vector = list[float]
PathLike = str | os.PathLike[str]


# Retries of the handler's 503 "Overloaded" (the dynamic batch is full: retry at once) do not count against
# max_retries: under a steady bulk load a request may meet a full batch several times, and that is no failure.
MAX_BATCH_FULL_RETRIES = 50


class _Soon(float):
    """A retry delay after the handler's batch-full 503, not counted as an attempt."""


class Embeddings(list):  # type: ignore[type-arg]
    """The vectors (lists of floats, input order); ``tokens``: what the server embedded, None if not reported."""

    tokens: int | None = None


class _Endpoints:
    """The servers to spread requests over (round-robin), each with its own Authorization header."""

    def __init__(self, url: str | Sequence[str], model: str, token: str | Sequence[str | None] | None,
                 key_file: PathLike | Sequence[PathLike] | None) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: give at least one server URL")
        tokens = _per_url("token", token, len(urls))
        key_files = _per_url("key_file", key_file, len(urls))
        self.targets: list[tuple[str, dict[str, str]]] = []
        for base in urls:
            _check_url(base)
        for base, tok, keys in zip(urls, tokens, key_files, strict=True):
            resolved = resolve_token(tok, keys)
            headers = {"Content-Type": "application/json"}
            if resolved:
                headers["Authorization"] = f"Bearer {resolved}"
            self.targets.append((f"{base.rstrip('/')}/predictions/{quote(model, safe='')}", headers))
        self._next = itertools.count()
        self._lock = threading.Lock()

    def first(self) -> int:
        """Where a new request starts: round-robin over the servers."""
        with self._lock:
            return next(self._next)

    def pick(self, first: int, attempt: int) -> tuple[str, dict[str, str]]:
        """The server for ``attempt`` of a request: a retry moves on to the next server."""
        return self.targets[(first + attempt) % len(self.targets)]


def _check_url(url: Any) -> None:
    """ValueError for a base URL httpx cannot send to: without the check, every request fails as a transport
    error that is retried with backoff, and the run stops after seconds with "cannot reach"."""
    if not isinstance(url, str):
        raise ValueError(f"url must be a string like {DEFAULT_URL!r}; got {type(url).__name__}")
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"url {url!r} must start with http:// or https:// and name a host, like {DEFAULT_URL!r}")


def _per_url(name: str, value: Any, n: int) -> list[Any]:
    if value is None or isinstance(value, (str, os.PathLike)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name}: give one value for all servers or one per url ({n}); got {len(values)}")
    return values


class _ClientBase:
    """Settings and the request/response logic shared by the sync and async clients."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, *,
                 token: str | Sequence[str | None] | None = None,
                 key_file: PathLike | Sequence[PathLike] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int | str = DEFAULT_CONCURRENCY,
                 truncate: bool = True, max_pairs_per_request: int = MAX_PAIRS_PER_REQUEST,
                 max_request_bytes: int = MAX_REQUEST_BYTES, encoding: str = DEFAULT_ENCODING) -> None:
        # Checked here: httpx takes 0 (every request times out at once, reported as "cannot reach") and answers
        # a negative one with "Timeout value out of range", naming nothing.
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0; got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0; got {max_retries!r}")
        self.model = model
        self.max_pairs_per_request = max_pairs_per_request
        self.batch_size = check_batch_size(batch_size, max_pairs_per_request)
        self.concurrency = concurrency
        # Shared by every call: what the adaptive limit learnt about the server carries over.
        # It never grows while requests take over a quarter of the timeout: a slow server is not pushed to it.
        self.endpoints = _Endpoints(url, model, token, key_file)
        self.limit: Limit = make_limit(concurrency, max_latency=timeout / 4, servers=len(self.endpoints.targets))
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
        self.encoding = encoding
        self.truncate = truncate
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries)
        self.retries = 0  # retries made so far (all requests): a sign of an overloaded server
        self._count_lock = threading.Lock()

    def _plan(self, pairs: Iterable[Sequence[str]], batch_size: int | None,
              limit: Limit) -> tuple[list[bytes], list[tuple[int, int]]]:
        checked = check_pairs(pairs)
        encoded = [encode_pair(pair, index) for index, pair in enumerate(checked)]
        if batch_size is None:
            # Enough requests to fill the slots in flight, as large as the server takes.
            spread = math.ceil(len(encoded) / max(1, limit.limit))
            size = min(self.batch_size, max(MIN_AUTO_BATCH, spread))
        else:
            size = check_batch_size(batch_size, self.max_pairs_per_request)
        return encoded, plan_requests(encoded, size, self.max_request_bytes)

    def _call_limit(self, concurrency: int | str | None) -> Limit:
        if concurrency is None:
            return self.limit
        return make_limit(concurrency, max_latency=self.timeout / 4, servers=len(self.endpoints.targets))

    def _outcome(self, response: httpx.Response, url: str, n: int, offset: int,
                 attempt: int, busy: int, encoding: str) -> Batch | float:
        """The vectors of a 200; the seconds to wait before retrying; or raise the typed error."""
        if response.status_code == 200:
            return Batch(decode_vectors(response.content, n, url), tokens_of(response.headers))
        text = response.text
        if response.status_code == 400 and encoding != "float" and "encoding_format" in text:
            # A server that predates encoding_format: JSON numbers from now on, this request sent again.
            self.encoding = "float"
            return 0.0
        if response.status_code == 503 and _error_type(response) == "Overloaded" and busy < MAX_BATCH_FULL_RETRIES:
            self.limit.saturated()  # the server has more queued than a batch takes: it is busy, not drowning
            return _Soon(self.retry.delay(0) / 10)
        if is_retryable_status(response.status_code, text) and attempt < self.retry.max_retries:
            self._count_retry()
            if response.status_code in (503, 507):
                self.limit.overloaded()  # the queue is full: fewer requests in flight
            return self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
        raise error_for_status(response.status_code, _json_or_text(response), url, offset)

    def _transport_failure(self, exc: httpx.TransportError, url: str, attempt: int) -> float:
        if isinstance(exc, httpx.TimeoutException):
            self.limit.overloaded()  # requests wait longer than the timeout: fewer in flight
        if attempt >= self.retry.max_retries:
            raise ConnectionFailedError(url, exc) from exc
        self._count_retry()
        return self.retry.delay(attempt)

    def _count_retry(self) -> None:
        with self._count_lock:
            self.retries += 1

    def _http_limits(self) -> httpx.Limits:
        most = self.limit.maximum
        return httpx.Limits(max_connections=most * 2, max_keepalive_connections=most)

    def _http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))


class InstructorClient(_ClientBase):
    """Blocking client; ``embed`` runs up to ``concurrency`` requests at once on a thread pool.

    ``url`` is one base URL or several (requests are spread round-robin); ``token`` / ``key_file``
    (TorchServe's key_file.json) give the inference key, one for all servers or one per url; without
    either, ``$INSTRUCTOR_SERVE_TOKEN`` is used if set.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, **options: Any) -> None:
        super().__init__(url, model, **options)
        self._http = httpx.Client(timeout=self._http_timeout(), limits=self._http_limits())

    def __enter__(self) -> InstructorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def embed_one(self, instruction: str, text: str) -> Vector:
        """The vector of one ``(instruction, text)`` pair."""
        return self.embed([(instruction, text)])[0]

    def encode(self, sentences: Any, **options: Any) -> Any:
        """``INSTRUCTOR.encode`` / ``SentenceTransformer.encode`` as their users call it (instructor_client.encode)."""
        from instructor_client.encode import encode

        return encode(self, sentences, **options)

    def embed(self, pairs: Iterable[Sequence[str]], *, batch_size: int | None = None,
              concurrency: int | str | None = None, progress: bool = False) -> Embeddings:
        """Vectors of ``pairs`` (``(instruction, text)``), in input order, with ``.tokens``.

        ``batch_size`` pairs per request (<= the server's max_pairs_per_request, 256; default: up to
        256, smaller when that leaves requests in flight idle), ``concurrency`` requests in flight (an
        int, or "auto"; default: the client's), ``progress=True`` for a progress bar (pairs/s, ETA) on
        stderr. Raises InvalidPairError before sending anything; an APIError's ``index`` is the failing
        pair's position in ``pairs``.
        """
        batch = self.embed_array(pairs, batch_size=batch_size, concurrency=concurrency, progress=progress)
        vectors = Embeddings(batch.vectors.tolist())
        vectors.tokens = batch.tokens
        return vectors

    def embed_array(self, pairs: Iterable[Sequence[str]], *, batch_size: int | None = None,
                    concurrency: int | str | None = None, progress: bool = False) -> Batch:
        """Like ``embed``, as ``Batch(vectors=float32 matrix (pairs x dim), tokens=int | None)``."""
        limit = self._call_limit(concurrency)
        encoded, ranges = self._plan(pairs, batch_size, limit)
        if len(ranges) == 1 and not progress:
            try:  # one request (a query): no thread pool on the latency path
                return self.embed_request(encoded)
            except PayloadTooLargeError as error:
                ranges = _halves(error, 0, len(encoded))
        parts: dict[int, np.ndarray] = {}
        tally = TokenTally()
        queue = list(reversed(ranges))
        with progress_bar(len(encoded), progress) as bar, ThreadPoolExecutor(limit.maximum) as pool:
            in_flight: dict[Future[Batch], tuple[int, int]] = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < limit.limit:
                        start, end = queue.pop()
                        in_flight[pool.submit(self.embed_request, encoded[start:end], start)] = (start, end)
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        start, end = in_flight.pop(future)
                        try:
                            result = future.result()  # raises the request's error: the rest is cancelled below
                        except PayloadTooLargeError as error:
                            queue.extend(reversed(_halves(error, start, end)))
                            continue
                        parts[start] = result.vectors
                        tally.add(result.tokens)
                        limit.completed(len(result.vectors), result.seconds)
                        bar.update(len(result.vectors))
            finally:
                for future in in_flight:
                    future.cancel()
        return _joined(parts, tally)

    def embed_request(self, encoded: Sequence[bytes], offset: int = 0) -> Batch:
        """ONE request of already encoded pairs (``batching.encode_pair``), with retries.

        ``offset`` is the position of the first pair in the caller's input, for errors' ``index``.
        """
        attempt, busy, first = 0, 0, self.endpoints.first()
        while True:
            encoding = self.encoding  # per attempt: it may have fallen back to "float"
            body = request_body(encoded, self.truncate, encoding)
            url, headers = self.endpoints.pick(first, attempt)
            sent = time.monotonic()
            try:
                response = self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                time.sleep(self._transport_failure(exc, url, attempt))
            else:
                outcome = self._outcome(response, url, len(encoded), offset, attempt, busy, encoding)
                if not isinstance(outcome, float):
                    return dataclasses.replace(outcome, seconds=time.monotonic() - sent)
                time.sleep(outcome)
                if isinstance(outcome, _Soon):
                    busy += 1
                    continue
            attempt += 1


class AsyncInstructorClient(_ClientBase):
    """The asyncio twin of InstructorClient (same arguments); ``await client.embed(pairs)``."""

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, model: str = DEFAULT_MODEL, **options: Any) -> None:
        super().__init__(url, model, **options)
        self._http = httpx.AsyncClient(timeout=self._http_timeout(), limits=self._http_limits())

    async def __aenter__(self) -> AsyncInstructorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def embed_one(self, instruction: str, text: str) -> Vector:
        """The vector of one ``(instruction, text)`` pair."""
        return (await self.embed([(instruction, text)]))[0]

    async def encode(self, sentences: Any, **options: Any) -> Any:
        """``InstructorClient.encode``, awaited."""
        from instructor_client.encode import aencode

        return await aencode(self, sentences, **options)

    async def embed(self, pairs: Iterable[Sequence[str]], *, batch_size: int | None = None,
                    concurrency: int | str | None = None, progress: bool = False) -> Embeddings:
        """Vectors of ``pairs`` in input order; same arguments, result and errors as ``InstructorClient.embed``."""
        batch = await self.embed_array(pairs, batch_size=batch_size, concurrency=concurrency, progress=progress)
        vectors = Embeddings(batch.vectors.tolist())
        vectors.tokens = batch.tokens
        return vectors

    async def embed_array(self, pairs: Iterable[Sequence[str]], *, batch_size: int | None = None,
                          concurrency: int | str | None = None, progress: bool = False) -> Batch:
        """Like ``InstructorClient.embed_array``."""
        limit = self._call_limit(concurrency)
        encoded, ranges = self._plan(pairs, batch_size, limit)
        parts: dict[int, np.ndarray] = {}
        tally = TokenTally()
        queue = list(reversed(ranges))
        in_flight: dict[asyncio.Future[Batch], tuple[int, int]] = {}
        with progress_bar(len(encoded), progress) as bar:
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < limit.limit:
                        start, end = queue.pop()
                        task = asyncio.ensure_future(self.embed_request(encoded[start:end], start))
                        in_flight[task] = (start, end)
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        start, end = in_flight.pop(task)
                        try:
                            result = task.result()
                        except PayloadTooLargeError as error:
                            queue.extend(reversed(_halves(error, start, end)))
                            continue
                        parts[start] = result.vectors
                        tally.add(result.tokens)
                        limit.completed(len(result.vectors), result.seconds)
                        bar.update(len(result.vectors))
            finally:
                for task in in_flight:
                    task.cancel()
        return _joined(parts, tally)

    async def embed_request(self, encoded: Sequence[bytes], offset: int = 0) -> Batch:
        """ONE request of already encoded pairs, with retries (see InstructorClient.embed_request)."""
        attempt, busy, first = 0, 0, self.endpoints.first()
        while True:
            encoding = self.encoding  # per attempt: it may have fallen back to "float"
            body = request_body(encoded, self.truncate, encoding)
            url, headers = self.endpoints.pick(first, attempt)
            sent = time.monotonic()
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._transport_failure(exc, url, attempt))
            else:
                outcome = self._outcome(response, url, len(encoded), offset, attempt, busy, encoding)
                if not isinstance(outcome, float):
                    return dataclasses.replace(outcome, seconds=time.monotonic() - sent)
                await asyncio.sleep(outcome)
                if isinstance(outcome, _Soon):
                    busy += 1
                    continue
            attempt += 1


def _halves(error: PayloadTooLargeError, start: int, end: int) -> list[tuple[int, int]]:
    """The two halves of a request the server refused as too large as a whole (413 naming no pair: its
    per-request token budget, a body over its size limit); re-raises a 413 about one pair."""
    if error.index is not None or end - start < 2:
        raise error
    middle = (start + end) // 2
    return [(start, middle), (middle, end)]


def _joined(parts: dict[int, np.ndarray], tally: TokenTally) -> Batch:
    """The requests' matrices in input order as one matrix."""
    ordered = [parts[start] for start in sorted(parts)]
    if not ordered:
        return Batch(np.zeros((0, 0), dtype=np.float32), tally.total)
    return Batch(np.concatenate(ordered) if len(ordered) > 1 else ordered[0], tally.total)


def _error_type(response: httpx.Response) -> str | None:
    body = _json_or_text(response)
    return str(body.get("type")) if isinstance(body, dict) else None


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
