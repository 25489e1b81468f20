"""``InstructorClient`` (threads) and ``AsyncInstructorClient`` (asyncio) for ``POST /predictions/<model>``.

Both split the caller's pairs into requests under the server's limits, keep ``concurrency`` requests in
flight, retry what a retry can cure (see ``retry.py``), and return the vectors in input order as plain
lists of floats (``numpy.asarray(vectors, dtype=numpy.float32)`` gives back the server's float32 exactly).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import quote

import httpx

from instructor_client.auth import resolve_token
from instructor_client.batching import (
    MAX_PAIRS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    check_batch_size,
    check_pairs,
    encode_pair,
    plan_requests,
    request_body,
)
from instructor_client.errors import ConnectionFailedError, ResponseFormatError, error_for_status
from instructor_client.progress import progress_bar
from instructor_client.retry import RetryPolicy, is_retryable_status, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "demo"
DEFAULT_TIMEOUT = 120.0  # the archives' responseTimeout: the server gives up on a request after that
DEFAULT_MAX_RETRIES = 5
DEFAULT_BATCH_SIZE = 64
DEFAULT_CONCURRENCY = 4

Vector = list[float]
PathLike = str | os.PathLike[str]


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
                 batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
                 truncate: bool = True, max_pairs_per_request: int = MAX_PAIRS_PER_REQUEST,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.model = model
        self.max_pairs_per_request = max_pairs_per_request
        self.batch_size = check_batch_size(batch_size, max_pairs_per_request)
        self.concurrency = _check_concurrency(concurrency)
        self.truncate = truncate
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries)
        self.endpoints = _Endpoints(url, model, token, key_file)
        self.retries = 0  # retries made so far (all requests): a sign of an overloaded server
        self._count_lock = threading.Lock()

    def _plan(self, pairs: Iterable[Sequence[str]],
              batch_size: int | None) -> tuple[list[bytes], list[tuple[int, int]]]:
        checked = check_pairs(pairs)
        size = self.batch_size if batch_size is None else check_batch_size(batch_size, self.max_pairs_per_request)
        encoded = [encode_pair(pair, index) for index, pair in enumerate(checked)]
        return encoded, plan_requests(encoded, size, self.max_request_bytes)

    def _body(self, encoded: Sequence[bytes]) -> bytes:
        return request_body(encoded, self.truncate)

    def _outcome(self, response: httpx.Response, url: str, n: int, offset: int,
                 attempt: int) -> list[Vector] | float:
        """The vectors of a 200; the seconds to wait before retrying; or raise the typed error."""
        if response.status_code == 200:
            return _vectors(response, url, n)
        text = response.text
        if is_retryable_status(response.status_code, text) and attempt < self.retry.max_retries:
            self._count_retry()
            return self.retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
        raise error_for_status(response.status_code, _json_or_text(response), url, offset)

    def _transport_failure(self, exc: httpx.TransportError, url: str, attempt: int) -> float:
        if attempt >= self.retry.max_retries:
            raise ConnectionFailedError(url, exc) from exc
        self._count_retry()
        return self.retry.delay(attempt)

    def _count_retry(self) -> None:
        with self._count_lock:
            self.retries += 1

    def _http_limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=max(self.concurrency, 1) * 2, max_keepalive_connections=self.concurrency)

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
              concurrency: int | None = None, progress: bool = False) -> list[Vector]:
        """Vectors of ``pairs`` (``(instruction, text)``), in input order.

        ``batch_size`` pairs per request (<= the server's max_pairs_per_request, 256), ``concurrency``
        requests in flight, ``progress=True`` for a progress bar (pairs/s, ETA) on stderr.
        Raises InvalidPairError before sending anything; an APIError's ``index`` is the failing pair's
        position in ``pairs``.
        """
        encoded, ranges = self._plan(pairs, batch_size)
        workers = _check_concurrency(self.concurrency if concurrency is None else concurrency)
        if len(ranges) == 1 and not progress:
            return self.embed_request(encoded)  # one request (a query): no thread pool on the latency path
        vectors: list[Vector | None] = [None] * len(encoded)
        with progress_bar(len(encoded), progress) as bar, ThreadPoolExecutor(workers) as pool:
            futures: dict[Future[list[Vector]], int] = {
                pool.submit(self.embed_request, encoded[start:end], start): start for start, end in ranges
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()  # type: ignore[misc]
                    start = futures[future]
                    result = future.result()
                    vectors[start:start + len(result)] = result
                    bar.update(len(result))
        return vectors  # type: ignore[return-value]

    def embed_request(self, encoded: Sequence[bytes], offset: int = 0) -> list[Vector]:
        """ONE request of already encoded pairs (``batching.encode_pair``), with retries.

        ``offset`` is the position of the first pair in the caller's input, for errors' ``index``.
        """
        body = self._body(encoded)
        attempt, first = 0, self.endpoints.first()
        while True:
            url, headers = self.endpoints.pick(first, attempt)
            try:
                response = self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                time.sleep(self._transport_failure(exc, url, attempt))
            else:
                outcome = self._outcome(response, url, len(encoded), offset, attempt)
                if not isinstance(outcome, float):
                    return outcome
                time.sleep(outcome)
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
                    concurrency: int | None = None, progress: bool = False) -> list[Vector]:
        """Vectors of ``pairs`` in input order; same arguments and errors as ``InstructorClient.embed``."""
        encoded, ranges = self._plan(pairs, batch_size)
        vectors: list[Vector | None] = [None] * len(encoded)
        gate = asyncio.Semaphore(_check_concurrency(self.concurrency if concurrency is None else concurrency))
        with progress_bar(len(encoded), progress) as bar:

            async def run(start: int, end: int) -> None:
                async with gate:
                    result = await self.embed_request(encoded[start:end], start)
                vectors[start:end] = result
                bar.update(len(result))

            tasks = [asyncio.ensure_future(run(start, end)) for start, end in ranges]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        return vectors  # type: ignore[return-value]

    async def embed_request(self, encoded: Sequence[bytes], offset: int = 0) -> list[Vector]:
        """ONE request of already encoded pairs, with retries (see InstructorClient.embed_request)."""
        body = self._body(encoded)
        attempt, first = 0, self.endpoints.first()
        while True:
            url, headers = self.endpoints.pick(first, attempt)
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._transport_failure(exc, url, attempt))
            else:
                outcome = self._outcome(response, url, len(encoded), offset, attempt)
                if not isinstance(outcome, float):
                    return outcome
                await asyncio.sleep(outcome)
            attempt += 1


def _check_concurrency(concurrency: int) -> int:
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be >= 1; got {concurrency!r}")
    return concurrency


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _vectors(response: httpx.Response, url: str, n: int) -> list[Vector]:
    try:
        body = response.json()
    except ValueError:
        raise ResponseFormatError(f"{url} answered 200 with a body that is not JSON: {response.text[:200]!r}") from None
    if not isinstance(body, list) or len(body) != n or not all(isinstance(v, list) for v in body):
        raise ResponseFormatError(
            f"{url} answered 200 with {type(body).__name__} of {len(body) if isinstance(body, list) else '?'} "
            f"items; expected {n} vectors"
        )
    return body
