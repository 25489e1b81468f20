"""A real TorchServe ``Context`` as the Python worker builds it, for calling the handler without a server.

Used by the handler tests (tests/test_handler_unit.py) and the in-process benchmarks: the handler sees
the same Context, request processors, request ids and metrics cache a TorchServe 0.12 worker gives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_ts_context(model_root: Path, n_requests: int, yaml_config: dict[str, Any] | None = None,
                    gpu_id: int | None = None, model_name: str = "instructor") -> Any:
    """A ts.context.Context for the archive root ``model_root``, ready for a batch of ``n_requests``.

    ``yaml_config`` is what model-config.yaml would hold (e.g. ``{"handler": {"warmup": False}}``).
    """
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.model_name = model_name
    context = Context(model_name, str(model_root), {"model": {"modelName": model_name}}, 16, gpu_id,
                      "0.12.0", metrics=metrics, model_yaml_config=yaml_config or {})
    set_batch(context, n_requests)
    return context


def set_batch(context: Any, n_requests: int) -> None:
    """Prepare the context for a batch of n requests, as the worker does before handle()."""
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor({}) for _ in range(n_requests)]
    context.request_ids = {i: f"req-{i}" for i in range(n_requests)}
    context.metrics.set_request_ids(context.request_ids)


def make_handler(root: Path, model_dir: Path, handler_settings: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """An InstructorHandler initialised as a TorchServe worker does it, on the archive root ``root`` whose
    model/ is ``model_dir`` (linked); ``handler_settings`` is model-config.yaml's ``handler:`` (warmup off
    unless given). Returns (handler, context)."""
    from handler.torchserve_handler import InstructorHandler

    (root / "model").symlink_to(model_dir, target_is_directory=True)
    context = make_ts_context(root, 1, {"handler": {"warmup": False, **(handler_settings or {})}})
    handler = InstructorHandler()
    handler.initialize(context)
    return handler, context
