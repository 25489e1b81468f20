"""The TorchServe handler in-process (a real ts Context, no Java frontend): where a dynamic batch's time goes.

Feeds batches of N single-pair requests to ``InstructorHandler.handle`` as the worker would, and times its
stages (preprocess = parse + tokenize, inference = the encoder's embed, postprocess = JSON), optionally while
``--busy`` other processes spin on the CPU, to tell the handler's own cost from the server's and from CPU
contention. Needs the ts package (TorchServe) importable.

  python -m benchmarks.bench_handler --shape large --requests 128 --batches 20 --busy 0,8
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import torch

from benchmarks import results
from benchmarks.make_bench_model import SHAPES, make_model
from benchmarks.workload import make_pairs


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def make_context(model_root: Path, n_requests: int, gpu_id: int | None) -> Any:
    """A ts.context.Context as the 0.12 worker builds it (as tests/conftest.py does)."""
    import ts
    from ts.context import Context, RequestProcessor
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.model_name = "instructor"
    context = Context("instructor", str(model_root), {"model": {"modelName": "instructor"}}, n_requests, gpu_id,
                      "0.12.0", metrics=metrics, model_yaml_config={"handler": {}})
    context.request_processor = [RequestProcessor({}) for _ in range(n_requests)]
    context.request_ids = {i: f"req-{i}" for i in range(n_requests)}
    context.metrics.set_request_ids(context.request_ids)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="large")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--requests", type=int, default=128, help="single-pair requests per batch (default: 128)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per condition (default: 20)")
    parser.add_argument("--busy", default="0", help="comma list of spinning background processes (default: 0)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    from handler.torchserve_handler import InstructorHandler

    model_dir = args.model_dir or Path("/tmp/instructor-bench") / args.shape
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir)
    root = Path(tempfile.mkdtemp(prefix="handler-bench-"))
    (root / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    gpu_id = 0 if torch.cuda.is_available() else None
    device = "cuda" if gpu_id is not None else "cpu"
    context = make_context(root, args.requests, gpu_id)
    handler = InstructorHandler()
    handler.initialize(context)
    pairs = make_pairs(4096)
    n = args.requests

    def batch(index: int) -> list[dict[str, Any]]:
        start = (index * n) % (len(pairs) - n)
        return [{"body": orjson.dumps({"inputs": list(p)})} for p in pairs[start:start + n]]

    rows = []
    for busy in (int(x) for x in args.busy.split(",")):
        stop_at = time.monotonic() + 3600
        spinners = [multiprocessing.get_context("spawn").Process(target=_spin, args=(stop_at,), daemon=True)
                    for _ in range(busy)]
        for proc in spinners:
            proc.start()
        time.sleep(1.0 if busy else 0.0)
        stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": [], "handle": []}
        for index in range(args.batches + 2):
            data = batch(index)
            handler.context = context
            t0 = time.perf_counter()
            slots = handler.preprocess(data)
            t1 = time.perf_counter()
            slots = handler.inference(slots)
            t2 = time.perf_counter()
            handler.postprocess(slots)
            t3 = time.perf_counter()
            if index >= 2:  # the first batches warm allocator blocks and caches
                for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                    stages[key].append(1000 * value)
        for proc in spinners:
            proc.terminate()
            proc.join()
        med = {key: statistics.median(values) for key, values in stages.items()}
        rows.append([busy, n, *(round(med[k], 1) for k in stages), round(n / med["handle"] * 1000, 1)])
        print(f"  busy {busy}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()), flush=True)
    header = ["busy processes", "requests/batch", "preprocess ms", "inference ms", "postprocess ms", "handle ms",
              "pairs/s (handler only)"]
    table = results.markdown_table(header, rows)
    note = (f"{args.shape}, median of {args.batches} batches of {n} single-pair requests; torch threads "
            f"{torch.get_num_threads()}; {multiprocessing.cpu_count()} CPUs")
    print()
    print(table)
    print(note)
    if not args.no_record:
        figures = {f"{results.card_name(device)}_{args.shape}_handler_{n}req_handle_ms": rows[0][5]}
        results.record(f"bench_handler {args.shape}", device, f"{table}\n\n{note}", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
