"""Benchmark-only TorchServe entry: the project's handler with ONE tokenizer call per dynamic batch.

The project's handler tokenizes request by request; a single-pair request then costs a whole ``encode_batch``
call of one text (~0.1-0.3 ms of one core), and 128 of them run serially while the GPU waits. Here every
valid pair of the dynamic batch goes through one ``tokenize`` call (the Rust tokenizer spreads it over all
cores) and is split back per request. Everything else is the project's handler. bench_torchserve.py measures
this as target ``core-bt`` to size the change before anyone makes it in handler/torchserve_handler.py.
This file must define exactly one class: TorchServe's loader refuses modules with more.
"""

from __future__ import annotations

from typing import Any

from handler.request_parsing import parse_request
from handler.slots import RequestSlot
from handler.torchserve_handler import InstructorHandler, _untruncated_error, request_body


class BatchTokenizingHandler(InstructorHandler):
    """InstructorHandler whose preprocess tokenizes the whole dynamic batch at once."""

    def preprocess(self, data: list[dict[str, Any]]) -> list[RequestSlot]:
        slots = []
        for row in data:
            try:
                slots.append(RequestSlot(request=parse_request(request_body(row), self.settings)))
            except Exception:  # the project's handler knows how to answer every parse error: let it
                return super().preprocess(data)
        ready = [slot for slot in slots if slot.request is not None]
        try:
            items = self.encoder.tokenize([pair for slot in ready for pair in slot.request.pairs])
        except Exception:
            return super().preprocess(data)
        offset = 0
        for slot in ready:
            slot.items = items[offset:offset + len(slot.request.pairs)]
            offset += len(slot.request.pairs)
            if not slot.request.truncate:
                slot.error = _untruncated_error(slot.items, self.encoder.max_seq_length)
        return slots
