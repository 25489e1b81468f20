"""TorchServe entry point of the baseline: InstructorEmbedding 1.0.1's encode (fp32), one request at a time.

Used by bench_torchserve.py as the end-to-end baseline (batchSize 1). Responses are compact JSON like the
project's handler, so the comparison is about the model path, not about response formatting.
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import torch
from ts.torch_handler.base_handler import BaseHandler

from benchmarks.baseline_encode import BaselineEncoder


class BaselineHandler(BaseHandler):
    """[instruction, text] (or a list of pairs) in, unit vector(s) out; no cross-request batching."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        device = f"cuda:{int(gpu_id)}" if gpu_id is not None and torch.cuda.is_available() else "cpu"
        self.encoder = BaselineEncoder(Path(properties["model_dir"]) / "model", device)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        responses = []
        for index, row in enumerate(data):
            body = row.get("body") if row.get("body") is not None else row.get("data")
            if isinstance(body, (bytes, bytearray, str)):
                body = orjson.loads(body)
            inputs = body["inputs"]
            single = isinstance(inputs[0], str)
            pairs = [tuple(inputs)] if single else [tuple(pair) for pair in inputs]
            vectors = self.encoder.encode(pairs)
            context.set_response_content_type(index, "application/json")
            responses.append(orjson.dumps(vectors[0] if single else vectors, option=orjson.OPT_SERIALIZE_NUMPY))
        return responses
