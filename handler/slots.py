"""The state of one request of a TorchServe dynamic batch as it moves through the handler's stages."""

from __future__ import annotations

import dataclasses

import numpy as np

from handler.encoder import TokenizedPair
from handler.errors import ServiceError
from handler.request_parsing import ParsedRequest


@dataclasses.dataclass
class RequestSlot:
    """Exactly one of ``error`` or ``vectors`` is set once the batch has been through inference."""

    request: ParsedRequest | None = None
    items: list[TokenizedPair] = dataclasses.field(default_factory=list)
    vectors: np.ndarray | None = None
    error: ServiceError | None = None
