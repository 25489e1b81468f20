"""Shared fixtures: real model files (the demo model and tiny INSTRUCTOR models). Models load once per
session: loading is the slow part. The TorchServe Context builder lives in tests/ts_context.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.demo_model import demo_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The packed stream's Triton kernel (handler/varlen.py) runs through Triton's interpreter: tests run on CPU.
# Set before any test imports the kernel's module, which reads it once.
os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    try:
        return demo_model_path()
    except RuntimeError as e:
        pytest.fail(str(e))


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
