"""The state of one request of a TorchServe dynamic batch as it moves through the handler's stages."""

from __future__ import annotations

import dataclasses

import numpy as np

from handler.encoder import TokenizedPair
from handler.errors import ServiceError
from handler.protocol_types import Protocol, Reply
from handler.replies import Wire
from handler.request_parsing import ParsedRequest


@dataclasses.dataclass
class RequestState:
    """Exactly one of ``error`` or ``vectors`` is set once the batch has been through inference."""

    request: ParsedRequest | None = None
    wire: Wire = Wire.FLOAT  # how its vectors travel (native requests; KServe answers are JSON)
    items: list[TokenizedPair] = dataclasses.field(default_factory=list)
    vectors: np.ndarray | None = None
    error: ServiceError | None = None
    protocol: Protocol = Protocol.NATIVE  # what the answer (or the error) is rendered in
    reply: Reply | None = None  # an answer made at parse time, with nothing to embed (OpenAI's model list)

    @property
    def ready(self) -> bool:
        """Parsed (and, once tokenized, tokenized) without error: goes on to the next stage."""
        return self.error is None and self.request is not None

    @property
    def chars(self) -> int:
        """Characters the tokenizer may have to read for this request (instruction + sentence per pair)."""
        return sum(len(instruction) + len(text) for instruction, text in self.request.pairs)

    @property
    def tokens(self) -> int:
        return sum(len(item.input_ids) for item in self.items)
