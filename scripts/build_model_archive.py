"""Command line of the archive builder (the package scripts/model_archive/), its Python API re-exported.

scripts/build_archive.sh runs it with the project's Python; ``--help`` lists the flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable as the package root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.model_archive import *  # noqa: F403 - the Python API, for `from scripts import build_model_archive`
from scripts.model_archive import __all__  # noqa: F401
from scripts.model_archive.cli import main

if __name__ == "__main__":
    sys.exit(main())
