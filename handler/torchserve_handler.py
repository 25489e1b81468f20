"""TorchServe entry point: a thin adapter between TorchServe's batch contract and the encoder core.

preprocess  parses and validates each request of the dynamic batch (bad ones fail alone), tokenizes all
            valid pairs in ONE call and admits requests under the batch's token budget,
inference   makes ONE call into the core for all pairs of the batch,
postprocess splits the vectors back into one compact JSON response per request, in order.
Always exactly len(data) responses; an error is answered at its own index with its own status.
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

import base64
import gc
import http
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.encoder import InstructorEncoder, TokenizedPair, first_unpoolable, unpoolable_message
from handler.errors import InputTooLong, InternalError, NothingToEmbed, Overloaded, PayloadTooLarge, ServiceError
from handler.memory import release_after
from handler.model_directory import ARCHIVE_MODEL_SUBDIR
from handler.protocols import ModelIdentity, Protocol, parse_row, render_error, render_reply, request_body
from handler.request_state import RequestState
from handler.settings import Settings
from handler.tokenization import PREFIX_ROUNDS_OVERHEAD
from handler.ts_metrics import HandlerMetrics

# Importing TorchServe's BaseHandler switches float32 matmuls to TF32 on Ampere+ GPUs
# (torch.set_float32_matmul_precision("high")): that breaks the 1e-5 bound of precision float32 and perturbs
# the float32 Dense head. Undo TorchServe's side effect here, in the adapter that imports it.
torch.set_float32_matmul_precision("highest")

log = logging.getLogger(__name__)

JSON = "application/json"
DEFAULT_RESPONSE_TIMEOUT_S = 120
# Shares of responseTimeout a dynamic batch may spend tokenizing (its characters priced at the worst-case
# text) and embedding (its tokens priced at the speed measured at start-up, on a small batch: slower per
# token than a full one). Together ~a third: margin for TorchServe's own work, noise and slower moments, and
# a flood's surplus requests get their 503 within that time rather than after minutes.
_TOKENIZE_SHARE_OF_TIMEOUT = 0.1
_EMBED_SHARE_OF_TIMEOUT = 0.25
_REMEASURE_EVERY_S = 600.0


def select_device(gpu_id: Any, cuda_available: bool) -> str:
    """TorchServe assigns each worker a GPU id (round-robin); without CUDA the worker runs on CPU."""
    if gpu_id is None or not cuda_available:
        return "cpu"
    return f"cuda:{int(gpu_id)}"


_MAX_AUTO_TOKENIZER_THREADS = 4


def tokenizer_threads(settings: Settings) -> int:
    """Threads for tokenizing a batch: the setting, else the cores this worker may run on, at most 4."""
    if settings.tokenizer_threads is not None:
        return settings.tokenizer_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(_MAX_AUTO_TOKENIZER_THREADS, cores))


def configure_tokenizer_threads(threads: int) -> None:
    """Size the tokenizers library's thread pool; read once, at its first parallel call in this process."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)


class InstructorHandler(BaseHandler):
    """Serves [instruction, sentence] -> embedding for INSTRUCTOR (and sentence-transformers) models."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder: InstructorEncoder | None = None
        self.settings = Settings()
        self.metrics: HandlerMetrics | None = None
        self.batch_char_budget = 0
        self.batch_token_budget = 0
        self._response_timeout_s = float(DEFAULT_RESPONSE_TIMEOUT_S)
        self._budgets_measured_at: float | None = None  # None: both budgets are set, never measured
        self.model_identity = ModelIdentity(name="")

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        yaml_config = context.model_yaml_config or {}
        self.settings = Settings.from_sources(yaml_config.get("handler"))
        device = select_device(properties.get("gpu_id"), torch.cuda.is_available())
        threads = tokenizer_threads(self.settings)
        configure_tokenizer_threads(threads)
        model_dir = Path(properties["model_dir"]) / ARCHIVE_MODEL_SUBDIR
        log.info("settings: %s; tokenizer threads: %d", self.settings.as_dict(), threads)
        self.encoder = InstructorEncoder(model_dir, self.settings, device)
        if self.settings.warmup:
            log.info("warm-up took %.2f s", self.encoder.warmup())
        self._response_timeout_s = float(yaml_config.get("responseTimeout") or DEFAULT_RESPONSE_TIMEOUT_S)
        self._set_budgets()
        self.metrics = HandlerMetrics(context.metrics, context.model_name)
        self.model_identity = ModelIdentity.from_context(context, self.encoder.dimension)
        self.context = context
        # The model, torch and transformers leave hundreds of thousands of long-lived objects that every full
        # garbage collection would walk again (0.66 s each with the demo model, measured on a 2-core VM): set
        # them aside.
        gc.freeze()
        self.initialized = True

    def _set_budgets(self) -> None:
        timeout = self._response_timeout_s
        self.batch_char_budget = self.settings.max_batch_request_chars or self._measured_char_budget(timeout)
        self.batch_token_budget = self.settings.max_batch_request_tokens or self._measured_token_budget(timeout)
        if self.settings.max_batch_request_chars is None or self.settings.max_batch_request_tokens is None:
            self._budgets_measured_at = time.monotonic()
        log.info("budget per dynamic batch: %d characters, %d tokens", self.batch_char_budget,
                 self.batch_token_budget)

    def _remeasure_before_refusing(self, states: list[RequestState], cost: Callable[[RequestState], int],
                                   budget: int) -> None:
        """A measured budget is only as good as the moment it was measured (a busy start-up gives a low one):
        before a request is refused as too large, measure again, at most every _REMEASURE_EVERY_S."""
        if self._budgets_measured_at is None or time.monotonic() - self._budgets_measured_at < _REMEASURE_EVERY_S:
            return
        if any(state.ready and cost(state) > budget for state in states):
            self._set_budgets()

    def _measured_char_budget(self, response_timeout_s: float) -> int:
        """Characters this worker surely tokenizes in its share of responseTimeout (worst-case text, one thread,
        best of two timings)."""
        seconds_per_char = min(self.encoder.tokenizer_seconds_per_char() for _ in range(2)) * PREFIX_ROUNDS_OVERHEAD
        budget = int(response_timeout_s * _TOKENIZE_SHARE_OF_TIMEOUT / max(seconds_per_char, 1e-9))
        return max(2 * self.settings.max_chars_per_text, budget)  # one maximal pair always fits

    def _measured_token_budget(self, response_timeout_s: float) -> int:
        """Tokens this device embeds in its share of responseTimeout, timed on a small batch now (best of two).

        A small batch is slower per token than a full one, so the estimate errs towards refusing too early.
        """
        pairs = [("Represent the sentence:", "budget probe " * n) for n in (4, 16, 64, 128)]
        runs = [self.encoder.encode(pairs).stats for _ in range(2)]
        log.info("budget probe: %s", ", ".join(f"{s.tokens} tokens in {s.seconds * 1000:.1f} ms" for s in runs))
        tokens_per_s = max(stats.tokens / max(stats.seconds, 1e-6) for stats in runs)
        return max(self.encoder.max_seq_length, int(tokens_per_s * response_timeout_s * _EMBED_SHARE_OF_TIMEOUT))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        self.context = context
        states: list[RequestState] = []
        try:
            states = self.preprocess(data)
            return self.postprocess(self.inference(states))
        except Exception:  # last resort: answer every request instead of TorchServe's bare 503
            log.exception("unexpected failure handling a batch of %d", len(data))
            return self.postprocess([RequestState(error=self._internal_error(i)) for i in range(len(data))])
        finally:
            # Big bodies, or small ones whose text made big work (NFKC expansion): either leaves heap behind.
            body_bytes = sum(len(body) for body in map(request_body, data) if isinstance(body, (bytes, bytearray, str)))
            text_chars = sum(state.chars for state in states if state.request is not None)
            release_after(max(body_bytes, text_chars))

    def preprocess(self, data: list[dict[str, Any]]) -> list[RequestState]:
        """Parse every request; tokenize all valid pairs in one call; per-request errors stay with their request."""
        states = [self._parse(index, row) for index, row in enumerate(data)]
        # Characters first, before any tokenization: a flood of long texts must not cost its tokenization.
        self._remeasure_before_refusing(states, lambda state: state.chars, self.batch_char_budget)
        self._admit(states, "characters", lambda state: state.chars, self.batch_char_budget,
                    "max_batch_request_chars")
        ready = [state for state in states if state.ready]
        pairs = [pair for state in ready for pair in state.request.pairs]
        try:
            items = self.encoder.tokenize(pairs)
        except Exception:
            log.exception("unexpected failure tokenizing a batch of %d pairs; retrying request by request", len(pairs))
            for index, state in enumerate(states):
                if state.ready:
                    self._tokenize_alone(state, index)
        else:
            offset = 0
            for state in ready:
                state.items = items[offset:offset + len(state.request.pairs)]
                offset += len(state.request.pairs)
        for state in states:
            if state.ready:
                state.error = _item_error(state, self.encoder.max_seq_length)
        self._remeasure_before_refusing(states, lambda state: state.tokens, self.batch_token_budget)
        self._admit(states, "tokens", lambda state: state.tokens, self.batch_token_budget,
                    "max_batch_request_tokens")
        return states

    def _parse(self, index: int, row: dict[str, Any]) -> RequestState:
        try:
            # The protocol is the route's (TorchServe's url_path header) and then the body's; errors come back
            # in the state, without their tracebacks (16 refused 8 MB bodies of nested lists kept the worker
            # at 3.3 GB until a full GC when they kept them).
            return parse_row(row, self.context.get_all_request_header(index), self.settings, self.model_identity)
        except Exception:
            log.exception("unexpected failure parsing request %s", self._request_id(index))
            return RequestState(error=self._internal_error(index))

    def _tokenize_alone(self, state: RequestState, index: int) -> None:
        try:
            state.items = self.encoder.tokenize(state.request.pairs)
        except Exception:
            log.exception("unexpected failure tokenizing request %s", self._request_id(index))
            state.error, state.request = self._internal_error(index), None

    @staticmethod
    def _admit(states: list[RequestState], unit: str, cost: Callable[[RequestState], int], budget: int,
               setting: str) -> None:
        """Keep the batch under ``budget``: a request over it alone gets 413, one that does not fit beside
        the earlier ones gets 503 (retry at once), so no batch can run into responseTimeout."""
        used = 0
        for state in states:
            if not state.ready:
                continue
            needed = cost(state)
            if needed > budget:
                state.error = PayloadTooLarge(
                    f"the request has {needed} {unit}; this server takes at most {budget} {unit} per request "
                    f"(setting {setting}): split the request"
                )
            elif used + needed > budget:
                state.error = Overloaded(
                    f"the server is busy: this batch already carries {used} of its {budget} {unit} "
                    f"(setting {setting}); retry the request"
                )
            else:
                used += needed

    def inference(self, states: list[RequestState], *args: Any, **kwargs: Any) -> list[RequestState]:
        """One encoder call for the whole batch; if it fails, retry request by request to isolate."""
        ready = [(index, state) for index, state in enumerate(states) if state.ready]
        if not ready:
            return states
        items = [item for _, state in ready for item in state.items]
        try:
            vectors, stats = self.encoder.embed(items)
        except Exception:
            log.warning("batch of %d requests failed; retrying one by one", len(ready), exc_info=True)
            for index, state in ready:
                self._embed_alone(state, index)
            return states
        offset = 0
        for _, state in ready:
            state.vectors = vectors[offset:offset + len(state.items)]
            offset += len(state.items)
        if self.metrics:
            self.metrics.record_batch(stats, sum(item.truncated for item in items))
        return states

    def _embed_alone(self, state: RequestState, index: int) -> None:
        try:
            state.vectors, stats = self.encoder.embed(state.items)
            if self.metrics:
                self.metrics.record_batch(stats, sum(item.truncated for item in state.items))
        except ServiceError as error:
            state.error = error
        except Exception:
            log.exception("unexpected failure embedding request %s", self._request_id(index))
            state.error = self._internal_error(index)

    def postprocess(self, states: list[RequestState]) -> list[bytes]:
        """Compact JSON per request: a flat vector for the single-pair form, else a list of vectors."""
        responses = []
        for index, state in enumerate(states):
            self.context.set_response_content_type(index, JSON)
            if state.reply is None and (state.error is not None or state.vectors is None):
                error = state.error or self._internal_error(index)
                responses.append(self._error_response(index, error, state.protocol))
                continue
            if state.protocol is not Protocol.NATIVE:  # OpenAI and KServe answers, in their own shapes
                reply = render_reply(state, self.model_identity)
                self.context.set_response_content_type(index, reply.content_type)
                for header, value in reply.headers.items():
                    self.context.set_response_header(index, header, value)
                responses.append(reply.body)
                continue
            responses.append(render_vectors(state.vectors, state.request.single, state.request.encoding_format))
        return responses

    def _error_response(self, index: int, error: ServiceError, protocol: Protocol = Protocol.NATIVE) -> bytes:
        phrase = http.HTTPStatus(error.status).phrase
        self.context.set_response_status(error.status, phrase, idx=index)
        if self.metrics:
            self.metrics.record_error(error.type)
        return render_error(error, protocol)

    def _internal_error(self, index: int) -> InternalError:
        return InternalError(
            f"internal error while handling request {self._request_id(index)}; the server log has details"
        )

    def _request_id(self, index: int) -> str:
        try:
            return str(self.context.get_request_id(index))
        except Exception:
            return f"#{index} at {time.time():.0f}"


def render_vectors(vectors: np.ndarray, single: bool, encoding_format: str) -> bytes:
    """JSON for one request's vectors: float32 as shortest round-trip numbers, or base64 of little-endian float32."""
    if encoding_format == "base64":
        encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        return orjson.dumps(encoded[0] if single else encoded)
    return orjson.dumps(vectors[0] if single else vectors, option=orjson.OPT_SERIALIZE_NUMPY)


def _item_error(state: RequestState, max_seq_length: int) -> ServiceError | None:
    """A request-level error found after tokenization: a pair with nothing to pool, or truncation refused."""
    empty = first_unpoolable(state.items)
    if empty is not None:
        return NothingToEmbed(unpoolable_message(empty))
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
