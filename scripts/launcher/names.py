"""What a model name or version may be, checked before it becomes a file name, a URL or a config line."""

from __future__ import annotations

import re

from scripts.launcher.errors import CtlError

# torch-model-archiver's rule for --model-name (TorchServe's own): letters, digits, '_', '-', '.', and a
# letter or digit first. That excludes '/', '\\', whitespace and line breaks; '..' is refused on top, so
# a name never walks out of the folder it is joined to.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
MAX_NAME_LENGTH = 200


def check_model_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a safe TorchServe model name (or version), else a CtlError that says why."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name or len(name) > MAX_NAME_LENGTH:
        raise CtlError(
            f"{what} {name!r} is not allowed: use letters, digits, '_', '-' and '.', first a letter or digit, "
            f"no '..', at most {MAX_NAME_LENGTH} characters (TorchServe's model-name rule)."
        )
    return name
