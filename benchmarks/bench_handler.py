"""The TorchServe handler in-process (a real ts Context, no Java frontend): where a dynamic batch's time goes.

Feeds dynamic batches to ``InstructorHandler`` as the worker would (bodies already parsed from JSON, as
TorchServe's worker hands them over) and times each stage per pair: parse and admission (preprocess minus
tokenization), tokenization (one call for the batch), embedding (``inference``: the GPU work and its
host copy) and the JSON responses (``postprocess``). Needs the ts package (TorchServe) importable.

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

import torch

from benchmarks import results
from benchmarks.make_bench_model import make_model
from benchmarks.workload import make_pairs
from tests.ts_context import make_ts_context, set_batch

STAGES = ("parse", "tokenize", "embed", "json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="large", help="model shape (default: large)")
    parser.add_argument("--model-dir", type=Path,
                        help="model directory (default: <temp dir>/instructor-bench/SHAPE, written if missing)")
    parser.add_argument("--batches", default="128x1,16x64",
                        help="dynamic batches as REQUESTSxPAIRS, comma-separated (default: 128x1,16x64)")
    parser.add_argument("--encodings", default="float,base64", help="encoding_format values (default: both)")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per condition (default: 20)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

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
            bodies.append({"body": {"inputs": inputs, "encoding_format": encoding}})
        return bodies

    rows, figures = [], {}
    for spec in args.batches.split(","):
        requests, per_request = (int(x) for x in spec.split("x"))
        n_pairs = requests * per_request
        for encoding in args.encodings.split(","):
            times: dict[str, list[float]] = {stage: [] for stage in STAGES}
            for index in range(args.repeats + 2):
                data = batch(index, requests, per_request, encoding)
                set_batch(context, len(data))
                handler.context = context
                all_pairs = [tuple(p) for row in data for p in
                             ([row["body"]["inputs"]] if per_request == 1 else row["body"]["inputs"])]
                t0 = time.perf_counter()
                states = handler.preprocess(data)
                t1 = time.perf_counter()
                states = handler.inference(states)
                t2 = time.perf_counter()
                handler.postprocess(states)
                t3 = time.perf_counter()
                handler.encoder.tokenize(all_pairs)  # the tokenizer's share of preprocess, timed alone
                t4 = time.perf_counter()
                assert all(state.error is None for state in states), [s.error for s in states if s.error][:1]
                if index >= 2:  # the first batches warm allocator blocks and caches
                    tokenize = t4 - t3
                    for stage, seconds in zip(STAGES, (t1 - t0 - tokenize, tokenize, t2 - t1, t3 - t2),
                                              strict=True):
                        times[stage].append(1e6 * seconds / n_pairs)
            per_pair = {stage: statistics.median(values) for stage, values in times.items()}
            total = sum(per_pair.values())
            rows.append([spec, encoding, *(round(per_pair[s], 1) for s in STAGES), round(total, 1),
                         round(1e6 / total, 1)])
            figures[f"{results.card_name(device)}_{args.shape}_handler_{spec}_{encoding}_pairs_per_s"] = 1e6 / total
            print(f"  {spec} {encoding}: " + ", ".join(f"{s} {per_pair[s]:.1f} us" for s in STAGES)
                  + f" -> {1e6 / total:,.0f} pairs/s", flush=True)
    header = ["batch (requests x pairs)", "encoding", "parse us/pair", "tokenize us/pair", "embed us/pair",
              "JSON us/pair", "total us/pair", "pairs/s (one worker, handler only)"]
    table = results.markdown_table(header, rows)
    note = (f"{args.shape}, median of {args.repeats} batches; tokenizer threads per the handler's default; "
            f"{torch.get_num_threads()} torch threads")
    print()
    print(table)
    print(note)
    if not args.no_record:
        results.record(f"bench_handler {args.shape}", device, f"{table}\n\n{note}", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
