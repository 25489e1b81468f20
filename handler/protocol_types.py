"""The small types every protocol module shares: which protocol, what a reply is, which model answers."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Protocol(str, enum.Enum):
    """Which protocol a request spoke, hence the shape of its answer and of its errors."""

    NATIVE = "native"  # the handler's own forms (/predictions/<name>)
    OPENAI = "openai"  # POST /predictions/<name>/<version>/v1/embeddings
    OPENAI_MODELS = "openai-models"  # /predictions/<name>/<version>/v1/models
    V1 = "v1"  # KServe v1: instances -> predictions
    V2 = "v2"  # KServe v2 / Open Inference Protocol: inputs -> outputs
    UNKNOWN = "unknown"  # a route without url_path whose body speaks none of the above


@dataclasses.dataclass(frozen=True)
class Reply:
    """A response body with its content type and extra headers (the v2 binary extension needs one)."""

    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What answers carry and requests are checked against: TorchServe's model name, the archive version,
    the embedding dimension (0 until the encoder has loaded)."""

    name: str
    version: str | None = None
    dimension: int = 0

    @classmethod
    def from_context(cls, context: Any, dimension: int = 0) -> ModelIdentity:
        """Read name and version from TorchServe's context: ``model_name`` and the MANIFEST's ``modelVersion``."""
        manifest = getattr(context, "manifest", None) or {}
        version = (manifest.get("model") or {}).get("modelVersion")
        return cls(name=str(context.model_name), version=None if version is None else str(version),
                   dimension=dimension)
