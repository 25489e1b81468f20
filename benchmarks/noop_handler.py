"""TorchServe entry point that embeds nothing: TorchServe's own ceiling for this API's traffic.

Parses each request body as the real handler receives it, and answers each pair with the same fixed unit
vector of the model's dimension, printed exactly as the real handler prints vectors (orjson float32, or
base64 when asked), so the bytes TorchServe moves are realistic. Used by bench_torchserve.py (target noop).
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from ts.torch_handler.base_handler import BaseHandler

from handler.replies import DIMENSION_HEADER, render, wire_of


class NoopHandler(BaseHandler):
    """Answers every pair with one constant vector; no model, no tokenizer."""

    def initialize(self, context: Any) -> None:
        dense = Path(context.system_properties["model_dir"]) / "model" / "2_Dense" / "config.json"
        dimension = json.loads(dense.read_text())["out_features"] if dense.is_file() else 768
        vector = np.random.default_rng(0).standard_normal(dimension).astype(np.float32)
        self.vector = vector / np.linalg.norm(vector)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        responses = []
        for index, row in enumerate(data):
            body = row.get("body") if row.get("body") is not None else row.get("data")
            if isinstance(body, (bytes, bytearray, str)):
                body = orjson.loads(body)
            inputs = body["inputs"]
            single = isinstance(inputs[0], str)
            vectors = np.tile(self.vector, (1 if single else len(inputs), 1))
            headers = {str(k).lower(): v for k, v in context.get_all_request_header(index).items()
                       if isinstance(v, str)}
            reply, content_type = render(vectors, single, wire_of(body.get("encoding_format", "float"), headers))
            context.set_response_content_type(index, content_type)
            context.set_response_header(index, DIMENSION_HEADER, str(vectors.shape[1]))
            responses.append(reply)
        return responses
