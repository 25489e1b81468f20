"""What an archive is made of: its settings (ArchiveSpec), its defaults, and the one error a build raises."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: the handler package is the builder's source of truth
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_STORE = REPO_ROOT / "model_store"
DEFAULT_HANDLER_DIR = REPO_ROOT / "handler"
HANDLER_ENTRY = "torchserve_handler.py"
CONFIG_FILE_NAME = "model-config.yaml"


FORMATS = ("no-archive", "mar")
DEFAULT_FORMAT = "no-archive"
DEFAULT_WORKERS = 1
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_DELAY_MS = 5
# Multi-GB INSTRUCTOR checkpoints (instructor-xl: ~5 GB) load for minutes on slow disks and CPUs.
DEFAULT_RESPONSE_TIMEOUT_S = 120
DEFAULT_STARTUP_TIMEOUT_S = 600



class BuildError(Exception):
    """A build failure whose message tells the user what to do next."""


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything that goes into model-config.yaml."""

    workers: int = DEFAULT_WORKERS
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_delay_ms: int = DEFAULT_MAX_BATCH_DELAY_MS
    response_timeout_s: int = DEFAULT_RESPONSE_TIMEOUT_S
    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S
    handler_settings: tuple[tuple[str, Any], ...] = ()



DEFAULT_SPEC = ArchiveSpec()
