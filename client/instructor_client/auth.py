"""Where the inference token comes from: ``token=``, TorchServe's key_file.json, or the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

TOKEN_ENV = "INSTRUCTOR_SERVE_TOKEN"


def read_inference_key(key_file: str | os.PathLike[str]) -> str:
    """The inference key of a TorchServe key_file.json (``{"inference": {"key": ...}, ...}``)."""
    path = Path(key_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"key file {path} not found: TorchServe writes key_file.json into the directory it was started from"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"key file {path} is not JSON ({exc})") from None
    try:
        key = data["inference"]["key"]
    except (KeyError, TypeError):
        raise ValueError(f'key file {path} has no inference key (expected {{"inference": {{"key": ...}}}})') from None
    if not isinstance(key, str) or not key:
        raise ValueError(f"key file {path}: inference.key must be a non-empty string")
    return key


def resolve_token(token: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token to send: ``token`` if given, else the key file's inference key, else $INSTRUCTOR_SERVE_TOKEN.

    None means no Authorization header (a server started with token authorization disabled).
    """
    if token is not None and key_file is not None:
        raise ValueError("pass either token= or key_file=, not both")
    if token is not None:
        return token
    if key_file is not None:
        return read_inference_key(key_file)
    return os.environ.get(TOKEN_ENV) or None
