"""What the LangChain and LlamaIndex adapters accept of their upstream classes' arguments, in one place."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from instructor_client.client import _ClientBase

# InstructorClient's keyword options (timeout, max_retries, batch_size, concurrency, ...), read off its signature.
CLIENT_OPTIONS = frozenset(name for name, parameter in inspect.signature(_ClientBase.__init__).parameters.items()
                           if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("token", "key_file"))
# sentence-transformers' encode() arguments that mean something for a served model; upstream passes
# encode_kwargs to it unchanged.
ENCODE_KWARGS = frozenset({"batch_size", "normalize_embeddings", "show_progress_bar", "convert_to_numpy",
                           "convert_to_tensor", "device"})
# Upstream's model_kwargs go to the local model's constructor; only the device has a meaning, and none here.
MODEL_KWARGS = frozenset({"device"})


def client_options(options: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``options`` if every key is an InstructorClient option, else TypeError naming the first that is not."""
    unknown = sorted(set(options) - CLIENT_OPTIONS)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}; the client options are "
                        f"{', '.join(sorted(CLIENT_OPTIONS))}")
    return dict(options)


def checked_kwargs(value: Mapping[str, Any] | None, allowed: frozenset[str], name: str) -> dict[str, Any]:
    """encode_kwargs / model_kwargs: the keys a served model can honour, else ValueError naming the key."""
    value = dict(value or {})
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{name}[{unknown[0]!r}] has no meaning for a served model; {name} may hold "
                         f"{', '.join(sorted(allowed))}")
    return value


def normalized(vectors: list[list[float]]) -> list[list[float]]:
    """encode_kwargs normalize_embeddings=True: unit length (INSTRUCTOR's vectors are already)."""
    if not len(vectors):
        return []  # no documents: numpy's empty array has no axis 1 to normalize along
    array = np.asarray(vectors, dtype=np.float32)
    return (array / np.clip(np.linalg.norm(array, axis=1, keepdims=True), 1e-12, None)).tolist()
