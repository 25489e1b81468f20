"""The TorchServe handler in-process (a real ts Context, no Java frontend): where a dynamic batch's time goes.

Feeds dynamic batches to the handler as the worker would (JSON bodies as bytes, as TorchServe's worker hands
them over; request headers for the raw float32 transport) and reports, per pair, the time of each stage as the
batch records it (``DynamicBatch.seconds``): parse and admission, tokenization (on the look-ahead thread,
beside the other stages), embedding (launching, then waiting for the vectors) and rendering the replies; and
the batch's wall time, which is what the throughput column uses: with the stages overlapped, they add up to
more than it. Needs the ts package (TorchServe) importable.

  python -m benchmarks.bench_handler --shape large --batches 128x1,16x64 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import torch

from benchmarks import results
from benchmarks.make_bench_model import make_model
from benchmarks.workload import make_pairs
from tests.ts_context import make_ts_context, set_batch

STAGES = ("parse", "tokenize", "embed", "render")
# What each --encodings value sends: the body's encoding_format, and the Accept header (raw float32 replies).
ENCODINGS = {"float": ("float", None), "base64": ("base64", None), "raw": ("float", "application/octet-stream")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="large", help="model shape (default: large)")
    parser.add_argument("--model-dir", type=Path,
                        help="model directory (default: <temp dir>/instructor-bench/SHAPE, written if missing)")
    parser.add_argument("--batches", default="128x1,16x64",
                        help="dynamic batches as REQUESTSxPAIRS, comma-separated (default: 128x1,16x64)")
    parser.add_argument("--encodings", default="float,base64,raw",
                        help="reply formats: float, base64 (encoding_format), raw (Accept: application/octet-stream); "
                             "default: all three")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per condition (default: 20)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    from ts.context import RequestProcessor

    from handler.dynamic_batch import DynamicBatch
    from handler.torchserve_handler import InstructorHandler

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / "instructor-bench" / args.shape
    gpu_id = 0 if torch.cuda.is_available() else None
    device = "cuda" if gpu_id is not None else "cpu"
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir, device=device)
    root = Path(tempfile.mkdtemp(prefix="handler-bench-"))
    (root / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    context = make_ts_context(root, 1, {"handler": {}}, gpu_id=gpu_id)
    handler = InstructorHandler()
    handler.initialize(context)
    pairs = make_pairs(4096)

    def batch(index: int, requests: int, per_request: int, encoding: str) -> list[dict[str, Any]]:
        start = (index * requests * per_request) % (len(pairs) - requests * per_request)
        bodies = []
        for r in range(requests):
            chunk = pairs[start + r * per_request:start + (r + 1) * per_request]
            inputs: Any = list(chunk[0]) if per_request == 1 else [list(p) for p in chunk]
            bodies.append({"body": orjson.dumps({"inputs": inputs, "encoding_format": ENCODINGS[encoding][0]})})
        return bodies

    rows, figures = [], {}
    for spec in args.batches.split(","):
        requests, per_request = (int(x) for x in spec.split("x"))
        n_pairs = requests * per_request
        for encoding in args.encodings.split(","):
            accept = ENCODINGS[encoding][1]
            times: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "wall")}
            for index in range(args.repeats + 2):
                data = batch(index, requests, per_request, encoding)
                set_batch(context, len(data))
                context.request_processor = [RequestProcessor({"Accept": accept} if accept else {})
                                             for _ in data]
                call = DynamicBatch(handler.worker, data, context)
                t0 = time.perf_counter()
                call.run()
                wall = time.perf_counter() - t0
                failed = [s.error for s in call.states if s.error is not None]
                assert not failed, failed[:1]
                if index >= 2:  # the first batches warm allocator blocks and caches
                    seconds = call.seconds
                    for stage, value in zip(STAGES, (seconds.parse, seconds.tokenize, seconds.embed,
                                                     seconds.render), strict=True):
                        times[stage].append(1e6 * value / n_pairs)
                    times["wall"].append(1e6 * wall / n_pairs)
            per_pair = {stage: statistics.median(values) for stage, values in times.items()}
            total = per_pair["wall"]
            rows.append([spec, encoding, *(round(per_pair[s], 1) for s in STAGES), round(total, 1),
                         round(1e6 / total, 1)])
            figures[f"{results.card_name(device)}_{args.shape}_handler_{spec}_{encoding}_pairs_per_s"] = 1e6 / total
            print(f"  {spec} {encoding}: " + ", ".join(f"{s} {per_pair[s]:.1f} us" for s in STAGES)
                  + f", wall {total:.1f} us -> {1e6 / total:,.0f} pairs/s", flush=True)
    header = ["batch (requests x pairs)", "reply format", "parse us/pair", "tokenize us/pair (overlapped)",
              "embed us/pair", "render us/pair", "wall us/pair", "pairs/s (one worker, handler only)"]
    table = results.markdown_table(header, rows)
    note = (f"{args.shape}, median of {args.repeats} batches; tokenizer threads per the handler's default; "
            f"{torch.get_num_threads()} torch threads; stage_chunk_pairs {handler.settings.stage_chunk_pairs}")
    print()
    print(table)
    print(note)
    if not args.no_record:
        results.record(f"bench_handler {args.shape}", device, f"{table}\n\n{note}", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
