"""TorchServe entry point: a thin adapter between TorchServe's worker contract and the encoder core.

initialize  loads the model, measures the batch budgets (handler/admission.py) and keeps what outlives a
            batch in one ``Worker``,
handle      serves one dynamic batch with a ``DynamicBatch`` (handler/dynamic_batch.py), which holds all of
            that batch's state: nothing is written on ``self`` per batch,
describe    answers ``GET /models/<name>?customized=true`` (TorchServe sends it to a worker as a request
            with the header ``describe: True``) with the model's serving facts.
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.admission import BudgetKeeper
from handler.dynamic_batch import DynamicBatch, Worker, internal_error
from handler.encoder import InstructorEncoder
from handler.engine_client import SharedEncoder, make_encoder
from handler.memory import release_after
from handler.model_directory import ARCHIVE_MODEL_SUBDIR
from handler.protocols import ModelIdentity, Protocol, render_error, request_body
from handler.replies import JSON, Wire, predicted_bytes
from handler.settings import Settings
from handler.ts_metrics import HandlerMetrics

# Importing TorchServe's BaseHandler switches float32 matmuls to TF32 on Ampere+ GPUs
# (torch.set_float32_matmul_precision("high")): that breaks the 1e-5 bound of precision float32 and perturbs
# the float32 Dense head. Undo TorchServe's side effect here, in the adapter that imports it.
torch.set_float32_matmul_precision("highest")

log = logging.getLogger(__name__)

DEFAULT_RESPONSE_TIMEOUT_S = 120
_MAX_AUTO_TOKENIZER_THREADS = 4


def select_device(gpu_id: Any, cuda_available: bool) -> str:
    """TorchServe assigns each worker a GPU id (round-robin); without CUDA the worker runs on CPU."""
    if gpu_id is None or not cuda_available:
        return "cpu"
    return f"cuda:{int(gpu_id)}"


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
        self.worker: Worker | None = None

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        yaml_config = context.model_yaml_config or {}
        settings = Settings.from_sources(yaml_config.get("handler"))
        device = select_device(properties.get("gpu_id"), torch.cuda.is_available())
        threads = tokenizer_threads(settings)
        configure_tokenizer_threads(threads)
        model_dir = Path(properties["model_dir"]) / ARCHIVE_MODEL_SUBDIR
        log.info("settings: %s; tokenizer threads: %d", settings.as_dict(), threads)
        timeout = float(yaml_config.get("responseTimeout") or DEFAULT_RESPONSE_TIMEOUT_S)
        encoder = make_encoder(model_dir, settings, device, settings.shares_engine())
        if settings.warmup:
            log.info("warm-up took %.2f s", encoder.warmup())
        largest_reply = predicted_bytes(Wire.FLOAT, settings.max_pairs_per_request, encoder.dimension)
        budgets = BudgetKeeper(encoder, settings, timeout, largest_reply)
        self.worker = Worker(encoder, settings, budgets, HandlerMetrics(context.metrics, context.model_name),
                             ModelIdentity.from_context(context, encoder.dimension))
        # The model, torch and transformers leave hundreds of thousands of long-lived objects that every full
        # garbage collection would walk again (0.66 s each with the demo model, measured on a 2-core VM): set
        # them aside.
        gc.freeze()
        self.initialized = True

    @property
    def encoder(self) -> InstructorEncoder:
        return self.worker.encoder

    @property
    def settings(self) -> Settings:
        return self.worker.settings

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        if _is_describe(data, context):
            context.set_response_content_type(0, JSON)
            return [orjson.dumps(self.describe_handle())]
        batch = DynamicBatch(self.worker, data, context)
        try:
            return batch.run()
        except Exception:  # last resort: answer every request instead of TorchServe's bare 503
            log.exception("unexpected failure handling a batch of %d", len(data))
            replies = []
            for index in range(len(data)):
                error = internal_error(context, index)
                context.set_response_content_type(index, JSON)
                context.set_response_status(error.status, "Internal Server Error", idx=index)
                replies.append(render_error(error, Protocol.NATIVE))
            return replies
        finally:
            # Big bodies, or small ones whose text made big work (NFKC expansion): either leaves heap behind.
            body_bytes = sum(len(body) for body in map(request_body, data) if isinstance(body, (bytes, bytearray, str)))
            text_chars = sum(state.chars for state in batch.states if state.request is not None)
            release_after(max(body_bytes, text_chars))

    def describe_handle(self) -> dict[str, Any]:
        """The ``customizedMetadata`` of TorchServe's model description: what a client needs to know."""
        encoder, settings, budgets = self.worker.encoder, self.worker.settings, self.worker.budgets.budgets
        return {
            "model_type": encoder.files.model_type,
            "dimension": encoder.dimension,
            "max_seq_length": encoder.max_seq_length,
            "instruction_mode": encoder.mode.value,
            "precision": encoder.precision.value,
            "device": str(encoder.device),
            "engine": "shared" if isinstance(encoder, SharedEncoder) else "worker",
            "max_pairs_per_request": settings.max_pairs_per_request,
            "max_chars_per_text": settings.max_chars_per_text,
            "batch_budgets": {"chars": budgets.chars, "tokens": budgets.tokens, "reply_bytes": budgets.reply_bytes},
            "request_alone_budgets": {"chars": budgets.chars_alone, "tokens": budgets.tokens_alone,
                                      "reply_bytes": budgets.reply_bytes_alone},
        }


def _is_describe(data: list[dict[str, Any]], context: Any) -> bool:
    """TorchServe's describe request: alone, without a body, with the header ``describe: True``. A prediction
    that carries that header has a body and is served as a prediction."""
    if len(data) != 1 or request_body(data[0]) is not None:
        return False
    try:
        return context.get_request_header(0, "describe") == "True"
    except Exception:  # a context without request processors
        return False

