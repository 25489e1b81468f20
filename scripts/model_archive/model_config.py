"""model-config.yaml: the handler settings validated by the handler's own Settings, and the file's text."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

from scripts.model_archive.spec import ArchiveSpec, BuildError


def load_settings_class(handler_dir: Path) -> type | None:
    """The handler's own frozen Settings dataclass (``<handler_dir>/settings.py``), or None.

    Validating with the class that is being packed keeps one source of truth for setting names,
    types, choices and defaults.
    """
    if not (handler_dir / "settings.py").is_file():
        return None
    sys.path.insert(0, str(handler_dir.parent))
    try:
        module = importlib.import_module(f"{handler_dir.name}.settings")
    finally:
        sys.path.remove(str(handler_dir.parent))
    settings_class = getattr(module, "Settings", None)
    return settings_class if dataclasses.is_dataclass(settings_class) else None


def validate_settings(settings_class: type | None, given: dict[str, Any]) -> dict[str, Any]:
    """Check the explicitly given handler settings; return them typed and normalised for the yaml.

    Without a Settings class (a handler without settings.py) the values pass through as given.
    """
    if settings_class is None or not given:
        return dict(given)
    try:
        settings = settings_class.from_sources(given, environ={})
    except ValueError as e:  # SettingsError names the setting
        raise BuildError(f"handler setting: {e}") from None
    values = settings.as_dict()
    return {key: values[key] for key in given}


def render_model_config(spec: ArchiveSpec) -> str:
    """The text of model-config.yaml (TorchServe reads the top level; the handler reads `handler:`)."""
    import yaml

    top = {
        # minWorkers/maxWorkers override the registration's initial_workers: pin both to one number.
        "minWorkers": spec.workers,
        "maxWorkers": spec.workers,
        "batchSize": spec.batch_size,
        "maxBatchDelay": spec.max_batch_delay_ms,
        # responseTimeout here beats the registration's query parameter.
        "responseTimeout": spec.response_timeout_s,
        "startupTimeout": spec.startup_timeout_s,
    }
    handler = dict(spec.handler_settings)
    text = (
        "# Written by scripts/build_archive.sh. TorchServe reads the top-level keys, the handler reads\n"
        "# `handler:` (unset keys take the handler's defaults). Rebuild the archive to change them.\n"
        + yaml.safe_dump(top, sort_keys=False)
        + yaml.safe_dump({"handler": handler}, sort_keys=False, default_flow_style=False)
    )
    return text

