"""TorchServe entry point: a thin adapter between TorchServe's batch contract and the encoder core.

preprocess  parses and validates each request of the dynamic batch (bad ones fail alone),
inference   makes ONE call into the core for all pairs of the batch,
postprocess splits the vectors back into one compact JSON response per request, in order.
Always exactly len(data) responses; an error is answered at its own index with its own status.
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

import http
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.encoder import InstructorEncoder, TokenizedPair
from handler.errors import InputTooLong, InternalError, ServiceError
from handler.memory import release_after
from handler.request_parsing import parse_request
from handler.settings import Settings
from handler.slots import RequestSlot
from handler.ts_metrics import HandlerMetrics

log = logging.getLogger(__name__)

JSON = "application/json"


def select_device(gpu_id: Any, cuda_available: bool) -> str:
    """TorchServe assigns each worker a GPU id (round-robin); without CUDA the worker runs on CPU."""
    if gpu_id is None or not cuda_available:
        return "cpu"
    return f"cuda:{int(gpu_id)}"


def request_body(row: dict[str, Any]) -> Any:
    """TorchServe puts the payload under "body" (or "data" for some clients)."""
    body = row.get("body")
    return row.get("data") if body is None else body


class InstructorHandler(BaseHandler):
    """Serves [instruction, sentence] -> embedding for INSTRUCTOR (and sentence-transformers) models."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder: InstructorEncoder | None = None
        self.settings = Settings()
        self.metrics: HandlerMetrics | None = None

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        yaml_config = context.model_yaml_config or {}
        self.settings = Settings.from_sources(yaml_config.get("handler"))
        device = select_device(properties.get("gpu_id"), torch.cuda.is_available())
        model_dir = Path(properties["model_dir"]) / self.settings.model_subdir
        log.info("settings: %s", self.settings.as_dict())
        self.encoder = InstructorEncoder(model_dir, self.settings, device)
        if self.settings.warmup:
            log.info("warm-up took %.2f s", self.encoder.warmup())
        self.metrics = HandlerMetrics(context.metrics, context.model_name)
        self.context = context
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        self.context = context
        try:
            return self.postprocess(self.inference(self.preprocess(data)))
        except Exception:  # last resort: answer every request instead of TorchServe's bare 503
            log.exception("unexpected failure handling a batch of %d", len(data))
            slots = [RequestSlot(error=self._internal_error(i)) for i in range(len(data))]
            return self.postprocess(slots)
        finally:
            release_after(sum(len(body) for body in map(request_body, data)
                              if isinstance(body, (bytes, bytearray, str))))

    def preprocess(self, data: list[dict[str, Any]]) -> list[RequestSlot]:
        """Parse every request; tokenize all valid pairs; per-request errors stay in their slot."""
        slots = []
        for index, row in enumerate(data):
            try:
                slots.append(RequestSlot(request=parse_request(request_body(row), self.settings)))
            except ServiceError as error:
                # Without its traceback: the frames hold the parsed body, and exception -> traceback ->
                # frame -> slots -> exception is a cycle that only a full GC frees (measured: 16 refused
                # 8 MB bodies of nested lists kept the worker at 3.3 GB until then).
                slots.append(RequestSlot(error=error.with_traceback(None)))
            except Exception:
                log.exception("unexpected failure parsing request %s", self._request_id(index))
                slots.append(RequestSlot(error=self._internal_error(index)))
        for index, slot in enumerate(slots):
            if slot.request is None:
                continue
            try:
                slot.items = self.encoder.tokenize(slot.request.pairs)
            except Exception:
                log.exception("unexpected failure tokenizing request %s", self._request_id(index))
                slot.error, slot.request = self._internal_error(index), None
                continue
            if not slot.request.truncate:
                slot.error = _untruncated_error(slot.items, self.encoder.max_seq_length)
        return slots

    def inference(self, slots: list[RequestSlot], *args: Any, **kwargs: Any) -> list[RequestSlot]:
        """One encoder call for the whole batch; if it fails, retry request by request to isolate."""
        ready = [(index, slot) for index, slot in enumerate(slots)
                 if slot.error is None and slot.request is not None]
        if not ready:
            return slots
        items = [item for _, slot in ready for item in slot.items]
        try:
            vectors, stats = self.encoder.embed(items)
        except Exception:
            log.warning("batch of %d requests failed; retrying one by one", len(ready), exc_info=True)
            for index, slot in ready:
                self._embed_alone(slot, index)
            return slots
        offset = 0
        for _, slot in ready:
            slot.vectors = vectors[offset:offset + len(slot.items)]
            offset += len(slot.items)
        if self.metrics:
            self.metrics.record_batch(stats, sum(item.truncated for item in items))
        return slots

    def _embed_alone(self, slot: RequestSlot, index: int) -> None:
        try:
            slot.vectors, stats = self.encoder.embed(slot.items)
            if self.metrics:
                self.metrics.record_batch(stats, sum(item.truncated for item in slot.items))
        except ServiceError as error:
            slot.error = error
        except Exception:
            log.exception("unexpected failure embedding request %s", self._request_id(index))
            slot.error = self._internal_error(index)

    def postprocess(self, slots: list[RequestSlot]) -> list[bytes]:
        """Compact JSON per request: a flat vector for the single-pair form, else a list of vectors."""
        responses = []
        for index, slot in enumerate(slots):
            self.context.set_response_content_type(index, JSON)
            if slot.error is not None or slot.vectors is None:
                error = slot.error or self._internal_error(index)
                responses.append(self._error_response(index, error))
                continue
            payload = slot.vectors[0] if slot.request.single else slot.vectors
            responses.append(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
        return responses

    def _error_response(self, index: int, error: ServiceError) -> bytes:
        phrase = http.HTTPStatus(error.status).phrase
        self.context.set_response_status(error.status, phrase, idx=index)
        if self.metrics:
            self.metrics.record_error(error.type)
        return orjson.dumps(error.to_body())

    def _internal_error(self, index: int) -> InternalError:
        return InternalError(
            f"internal error while handling request {self._request_id(index)}; the server log has details"
        )

    def _request_id(self, index: int) -> str:
        try:
            return str(self.context.get_request_id(index))
        except Exception:
            return f"#{index} at {time.time():.0f}"


def _untruncated_error(items: list[TokenizedPair], max_seq_length: int) -> InputTooLong | None:
    for index, item in enumerate(items):
        if item.truncated:
            return InputTooLong(
                f"pair {index} has {item.n_tokens} tokens, more than max_seq_length {max_seq_length}, "
                "and the request set \"truncate\": false; shorten it or allow truncation"
            )
    return None
