"""One TorchServe dynamic batch, from request bodies to replies; all of its state lives in one ``DynamicBatch``.

  parse      every request alone (``parse_call``): a bad one fails alone, with its own status
  admit      characters and predicted reply bytes (before any work), then tokens (once tokenized)
  tokenize   in chunks of about ``stage_chunk_pairs`` pairs, the next chunk on a helper thread
  embed      each chunk's micro-batches queued on the device, their vectors copied back asynchronously
  render     chunk i's replies while the device runs chunk i+1

Always exactly len(data) replies; an error is answered at its own index with its own status. A chunk that
fails as a whole is done again request by request, so only the request at fault fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from handler.admission import BudgetKeeper, admit
from handler.encoder import EncodeStats, InstructorEncoder, PendingEmbeddings, TokenizedPair, unpoolable
from handler.errors import InputTooLong, InternalError, ServiceError
from handler.lookahead import ahead
from handler.protocols import ModelIdentity, Protocol, parse_row, render_error, render_reply
from handler.replies import DIMENSION_HEADER, JSON, TOKENS_HEADER, Wire, predicted_bytes, render, wire_of
from handler.request_state import RequestState
from handler.settings import Settings
from handler.ts_metrics import HandlerMetrics

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Worker:
    """What outlives a batch: the loaded model, the settings, the budgets, the metrics, the model's name."""

    encoder: InstructorEncoder
    settings: Settings
    budgets: BudgetKeeper
    metrics: HandlerMetrics | None
    model: ModelIdentity


def parse_call(row: dict[str, Any], headers: Mapping[str, str], worker: Worker) -> RequestState:
    """One request: its row as TorchServe delivers it and its headers (lower-case names; TorchServe adds
    ``url_path`` for routes under /predictions/<model>/...) -> its state: the pairs, the protocol it speaks and
    how its vectors travel, or its error. Never raises a ServiceError."""
    state = parse_row(row, headers, worker.settings, worker.model)
    if state.request is not None and state.protocol is Protocol.NATIVE:
        state.wire = wire_of(state.request.encoding_format, headers)
    return state


@dataclasses.dataclass
class StageSeconds:
    """Where one batch's time went (the benchmark reads it); tokenize runs beside embed and render."""

    parse: float = 0.0
    tokenize: float = 0.0
    embed: float = 0.0  # launching, then waiting for vectors
    render: float = 0.0


class DynamicBatch:
    """Serves one dynamic batch: ``DynamicBatch(worker, data, context).run()`` -> one reply per request."""

    def __init__(self, worker: Worker, data: Sequence[dict[str, Any]], context: Any) -> None:
        self.worker, self.data, self.context = worker, data, context
        self.states: list[RequestState] = []
        self.replies: list[bytes | None] = [None] * len(data)
        self.stats = EncodeStats()
        self.seconds = StageSeconds()

    def run(self) -> list[bytes]:
        started = time.perf_counter()
        budgets = self.worker.budgets.budgets
        self.states = [self._parse(index, row) for index, row in enumerate(self.data)]
        # Characters and reply bytes first, before any tokenization: a flood must not cost its tokenization.
        _, refused_chars = admit(self.states, "characters", lambda s: s.chars, budgets.chars, budgets.chars_alone,
                                 "max_batch_request_chars")
        admit(self.states, "reply bytes", self._reply_bytes, budgets.reply_bytes, budgets.reply_bytes_alone,
              "max_batch_reply_bytes")
        self.seconds.parse = time.perf_counter() - started
        chunks = self._chunks()
        used_tokens, refused_tokens = 0, False
        previous: tuple[list[int], PendingEmbeddings | None] | None = None
        with contextlib.closing(ahead(self._tokenize, chunks)) as tokenized:
            for chunk, _ in zip(chunks, tokenized, strict=True):
                for index in chunk:
                    state = self.states[index]
                    if state.ready:
                        state.error = _item_error(state, self.worker.encoder.max_seq_length)
                used_tokens, refused = admit([self.states[i] for i in chunk], "tokens", lambda s: s.tokens,
                                             budgets.tokens, budgets.tokens_alone, "max_batch_request_tokens",
                                             used_tokens)
                refused_tokens |= refused
                launched = (chunk, self._launch(chunk))  # queued on the device before the previous is rendered
                if previous is not None:
                    self._finish(*previous)
                previous = launched
        if previous is not None:
            self._finish(*previous)
        self.worker.budgets.after_refusals(refused_chars or refused_tokens)
        if self.worker.metrics and self.stats.items:
            self.worker.metrics.record_batch(self.stats, sum(item.truncated for s in self.states if s.vectors
                                                             is not None for item in s.items))
        for index in range(len(self.states)):
            if self.replies[index] is None:
                self._render(index)
        return self.replies  # type: ignore[return-value]  # every slot is filled above

    # ---- stages ------------------------------------------------------------------------------------------

    def _parse(self, index: int, row: dict[str, Any]) -> RequestState:
        try:
            return parse_call(row, self._headers(index), self.worker)
        except Exception:
            log.exception("unexpected failure parsing request %s", self._request_id(index))
            return RequestState(error=self._internal_error(index))

    def _headers(self, index: int) -> dict[str, str]:
        try:
            headers = self.context.get_all_request_header(index) or {}
        except Exception:  # a context without request processors (tests, benchmarks)
            return {}
        return {str(name).lower(): value if isinstance(value, str) else str(value) for name, value in headers.items()}

    def _reply_bytes(self, state: RequestState) -> int:
        wire = state.wire if state.protocol is Protocol.NATIVE else Wire.FLOAT
        # A KServe v2 "id" comes back in the answer: up to a body's size each, it must count against the budget.
        echoed = len(orjson.dumps(state.request.request_id)) if state.request.request_id else 0
        return predicted_bytes(wire, len(state.request.pairs), self.worker.encoder.dimension) + echoed

    def _chunks(self) -> list[list[int]]:
        """Indices of the admitted requests in order, cut into chunks of about stage_chunk_pairs pairs."""
        chunks: list[list[int]] = [[]]
        size = 0
        for index, state in enumerate(self.states):
            if not state.ready:
                continue
            if size >= self.worker.settings.stage_chunk_pairs:
                chunks.append([])
                size = 0
            chunks[-1].append(index)
            size += len(state.request.pairs)
        return chunks if chunks[0] else []

    def _tokenize(self, chunk: list[int]) -> None:
        """Tokenize a chunk's pairs in one call (on the look-ahead thread); request by request if that fails."""
        started = time.perf_counter()
        encoder = self.worker.encoder
        states = [self.states[i] for i in chunk]
        try:
            items = encoder.tokenize([pair for state in states for pair in state.request.pairs])
        except Exception:
            log.exception("unexpected failure tokenizing %d requests; retrying one by one", len(states))
            for index, state in zip(chunk, states, strict=True):
                try:
                    state.items = encoder.tokenize(state.request.pairs)
                except Exception:
                    log.exception("unexpected failure tokenizing request %s", self._request_id(index))
                    state.error, state.request = self._internal_error(index), None
        else:
            offset = 0
            for state in states:
                state.items = items[offset:offset + len(state.request.pairs)]
                offset += len(state.request.pairs)
        self.seconds.tokenize += time.perf_counter() - started

    def _launch(self, chunk: list[int]) -> PendingEmbeddings | None:
        """Queue the chunk's admitted pairs on the device; None if nothing to do or the launch failed (then
        ``_finish`` goes request by request)."""
        items = [item for i in chunk if self.states[i].ready for item in self.states[i].items]
        if not items:
            return None
        started = time.perf_counter()
        try:
            return self.worker.encoder.launch(items)
        except Exception:
            log.warning("a chunk of %d pairs failed; retrying request by request", len(items), exc_info=True)
            return None
        finally:
            self.seconds.embed += time.perf_counter() - started

    def _finish(self, chunk: list[int], launched: PendingEmbeddings | None) -> None:
        """Wait for the chunk's vectors, hand them to their requests, render its replies."""
        ready = [i for i in chunk if self.states[i].ready]
        started = time.perf_counter()
        try:
            result = launched.result() if launched is not None else None
        except Exception:
            log.warning("a chunk of %d requests failed; retrying one by one", len(ready), exc_info=True)
            result = None
        if result is not None:
            self.stats.add(result.stats)
            offset = 0
            for index in ready:
                state = self.states[index]
                state.vectors = result.vectors[offset:offset + len(state.items)]
                offset += len(state.items)
        else:
            for index in ready:
                self._embed_alone(index)
        self.seconds.embed += time.perf_counter() - started
        started = time.perf_counter()
        for index in chunk:
            self._render(index)
        self.seconds.render += time.perf_counter() - started

    def _embed_alone(self, index: int) -> None:
        state = self.states[index]
        try:
            result = self.worker.encoder.embed(state.items)
            state.vectors = result.vectors
            self.stats.add(result.stats)
        except ServiceError as error:
            state.error = error
        except Exception:
            log.exception("unexpected failure embedding request %s", self._request_id(index))
            state.error = self._internal_error(index)

    # ---- replies -----------------------------------------------------------------------------------------

    def _render(self, index: int) -> None:
        state = self.states[index]
        protocol = state.protocol  # the route's, then the body's: each answer in the protocol it was asked in
        try:
            if state.reply is None and (state.error is not None or state.vectors is None):
                self.replies[index] = self._error_reply(index, state.error or self._internal_error(index), protocol)
                return
            if state.request is not None:
                self.context.set_response_header(index, TOKENS_HEADER, str(state.tokens))
            if protocol is not Protocol.NATIVE:  # OpenAI and KServe answers, in their own shapes
                reply = render_reply(state, self.worker.model)
                body, content_type = reply.body, reply.content_type
                for header, value in reply.headers.items():
                    self.context.set_response_header(index, header, value)
            else:
                body, content_type = render(state.vectors, state.request.single, state.wire)
                if state.wire is Wire.RAW:
                    self.context.set_response_header(index, DIMENSION_HEADER, str(state.vectors.shape[1]))
            self.context.set_response_content_type(index, content_type)
            self.replies[index] = body
        except Exception:
            log.exception("unexpected failure rendering request %s", self._request_id(index))
            self.replies[index] = self._error_reply(index, self._internal_error(index), protocol)

    def _error_reply(self, index: int, error: ServiceError, protocol: Protocol = Protocol.NATIVE) -> bytes:
        self.context.set_response_content_type(index, JSON)
        self.context.set_response_status(error.status, http.HTTPStatus(error.status).phrase, idx=index)
        if self.worker.metrics:
            self.worker.metrics.record_error(error.type)
        return render_error(error, protocol)

    def _internal_error(self, index: int) -> InternalError:
        return internal_error(self.context, index)

    def _request_id(self, index: int) -> str:
        return request_id(self.context, index)


def internal_error(context: Any, index: int) -> InternalError:
    return InternalError(f"internal error while handling request {request_id(context, index)}; "
                         "the server log has details")


def request_id(context: Any, index: int) -> str:
    try:
        return str(context.get_request_id(index))
    except Exception:
        return f"#{index} at {time.time():.0f}"


def _item_error(state: RequestState, max_seq_length: int) -> ServiceError | None:
    """A request-level error found after tokenization: a pair with nothing to pool, or truncation refused."""
    error = unpoolable(state.items)
    if error is not None:
        return error
    if not state.request.truncate:
        return _untruncated_error(state.items, max_seq_length)
    return None


def _untruncated_error(items: list[TokenizedPair], max_seq_length: int) -> InputTooLong | None:
    for index, item in enumerate(items):
        if item.truncated:
            return InputTooLong(
                f"pair {index} has more than max_seq_length ({max_seq_length}) tokens and the request set "
                "\"truncate\": false; shorten it or allow truncation"
            )
    return None
