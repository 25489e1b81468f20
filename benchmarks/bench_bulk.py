"""The bulk path end to end: ``instructor-embed`` with its defaults on N workload pairs against a served model.

It writes N pairs of the benchmark workload (benchmarks/workload.py) to a JSONL file and runs the console
script on it exactly as a user would (no tuning flags: batch size, requests in flight and transport are
the command's defaults), against either

  --url URL --model NAME [--key-file F]   a model already served, or
  (no --url)                              a TorchServe it starts with the repository's launcher and archive
                                          builder (as bench_torchserve does): the bench model of --shape,
                                          or --model-dir, with --workers, --batch-size, --max-batch-delay.

It records ``<card>_<label>_bulk_cli_pairs_per_s`` (pairs / wall time of the whole command: reading, every
request, writing the output), the command's own embedding rate, its peak RSS and the tokens it reports.

Examples:
  python -m benchmarks.bench_bulk --shape large --pairs 100000
  python -m benchmarks.bench_bulk --url http://127.0.0.1:8080 --model demo --key-file key_file.json \\
      --pairs 20000 --label demo
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks import results
from benchmarks.workload import make_pairs

SUMMARY = re.compile(r"embedded\s+(\d+) pairs in ([\d.]+) s \(([\d.]+) pairs/s\)")
TOKENS = re.compile(r"tokens\s+([\d,]+) \(")
IN_FLIGHT = re.compile(r"in flight: (\d+) at the end")
PEAK = re.compile(r"VmHWM:\s+(\d+) kB")
# The console script's entry point, then the process's own peak RSS: /proc/self/status's VmHWM belongs to
# this process image alone (ru_maxrss of a child would also count the pages of the parent it forked from).
RUN_AND_REPORT = ("import sys\nfrom instructor_client.cli import main\nrc = main(sys.argv[1:])\n"
                  "try:\n    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), "
                  "file=sys.stderr)\nexcept (OSError, StopIteration):\n    pass\nsys.exit(rc)\n")


def write_workload(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for index, (instruction, text) in enumerate(make_pairs(n)):
            handle.write(json.dumps({"id": index, "instruction": instruction, "text": text}) + "\n")


def run_cli(url: str, model: str, key_file: Path | None, source: Path, output: Path) -> dict[str, float]:
    """One run of the console script with its defaults; its figures (raises if it did not embed every row)."""
    command = [sys.executable, "-c", RUN_AND_REPORT, "--url", url, "--model", model,
               "--input", str(source), "--output", str(output), "--no-progress", "--overwrite"]
    if key_file is not None:
        command += ["--key-file", str(key_file)]
    print("$ instructor-embed " + " ".join(command[3:]), flush=True)
    started = time.monotonic()
    # The client package from this checkout, installed or not (GPU hosts may have only the repository).
    client_root = str(results.BENCH_DIR.parent / "client")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [client_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    print(proc.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"instructor-embed exited {proc.returncode}")
    summary = SUMMARY.search(proc.stderr)
    if summary is None:
        raise SystemExit("instructor-embed printed no summary")
    tokens = TOKENS.search(proc.stderr)
    in_flight = IN_FLIGHT.search(proc.stderr)
    peak = PEAK.search(proc.stderr)
    pairs = int(summary.group(1))
    return {
        "pairs": pairs,
        "wall_s": wall,
        "pairs_per_s": pairs / wall,
        "embed_pairs_per_s": float(summary.group(3)),
        "peak_rss_mb": int(peak.group(1)) / 1024 if peak else -1.0,
        "tokens": float(tokens.group(1).replace(",", "")) if tokens else -1.0,
        "in_flight_at_end": float(in_flight.group(1)) if in_flight else -1.0,
    }


def served_by_torchserve(stack: ExitStack, args: argparse.Namespace, workdir: Path) -> tuple[str, str, Path]:
    """Start TorchServe with the model registered; (base URL, model name, key file)."""
    from benchmarks.make_bench_model import make_model
    from scripts import torchserve_ctl
    from scripts.build_model_archive import ArchiveSpec, build_archive

    model_dir = args.model_dir or Path(tempfile.gettempdir()) / "instructor-bench" / args.shape
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir, device=args.device)
    store = workdir / "model_store"
    spec = ArchiveSpec(workers=1, batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
                       response_timeout_s=args.response_timeout)
    name = "bench-bulk"
    build_archive(model_dir, name, store, "no-archive", spec)
    overrides = {**torchserve_ctl.port_overrides(torchserve_ctl.free_ports(5)), "model_store": str(store)}
    server = stack.enter_context(torchserve_ctl.running(workdir, overrides=overrides, tmpdir=workdir / "tmp",
                                                        use_mps=args.mps))
    workers = torchserve_ctl.auto_workers(torchserve_ctl.visible_gpus(dict(os.environ))) \
        if args.workers == "auto" else int(args.workers)
    server.register(name, workers, timeout=1800)
    print(f"TorchServe up, {name} READY with {workers} worker(s)", flush=True)
    args.workers_used = workers
    return server.inference_url, name, server.key_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000, help="workload pairs to embed (default: 100000)")
    parser.add_argument("--url", help="a served model's base URL (default: start TorchServe here)")
    parser.add_argument("--model", help="its model name (with --url)")
    parser.add_argument("--key-file", type=Path, help="its key_file.json (with --url, if tokens are on)")
    parser.add_argument("--shape", default="large", help="bench model shape when starting TorchServe (default: large)")
    parser.add_argument("--model-dir", type=Path, help="serve this model directory instead of the bench model")
    parser.add_argument("--workers", default="auto", help="workers when starting TorchServe (default: auto)")
    parser.add_argument("--batch-size", type=int, default=128, help="archive batchSize (default: 128)")
    parser.add_argument("--max-batch-delay", type=int, default=1, help="archive maxBatchDelay, ms (default: 1)")
    parser.add_argument("--response-timeout", type=int, default=120, help="archive responseTimeout, s (default: 120)")
    parser.add_argument("--mps", action="store_true",
                        help="run the workers under CUDA MPS when starting TorchServe (as scripts/serve.sh --mps)")
    parser.add_argument("--label", help="the model part of the keys (default: --shape, or the --model name)")
    parser.add_argument("--card", help="the card part of the keys (default: this machine's GPU 0, or cpu)")
    parser.add_argument("--output-format", choices=("npy", "parquet", "jsonl"), default="npy",
                        help="the output file's format (default: npy)")
    parser.add_argument("--results-dir", type=Path, default=results.BENCH_DIR)
    parser.add_argument("--no-record", action="store_true", help="print the figures, record nothing")
    args = parser.parse_args(argv)
    if (args.url is None) != (args.model is None):
        parser.error("--url and --model go together")

    import torch

    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.workers_used = None
    card = args.card or results.card_name(args.device)
    label = args.label or (args.model if args.url else args.shape)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bulk-")))
        source = workdir / "pairs.jsonl"
        write_workload(source, args.pairs)
        if args.url:
            url, model, key_file = args.url, args.model, args.key_file
        else:
            url, model, key_file = served_by_torchserve(stack, args, workdir)
        figures = run_cli(url, model, key_file, source, workdir / f"out.{args.output_format}")

    prefix = f"{card}_{label}_bulk_cli"
    recorded = {f"{prefix}_pairs_per_s": figures["pairs_per_s"],
                f"{prefix}_embed_pairs_per_s": figures["embed_pairs_per_s"],
                f"{prefix}_peak_rss_mb": figures["peak_rss_mb"]}
    served = (f"served at {args.url}" if args.url else
              f"TorchServe started here: {args.model_dir or args.shape}, {args.workers_used} worker(s), batchSize "
              f"{args.batch_size}, maxBatchDelay {args.max_batch_delay} ms"
              + (", workers under CUDA MPS" if args.mps else ""))
    table = results.markdown_table(
        ["pairs", "wall s", "pairs/s (whole command)", "pairs/s (embedding)", "peak RSS MB", "tokens",
         "in flight at the end"],
        [[int(figures["pairs"]), round(figures["wall_s"], 1), round(figures["pairs_per_s"], 1),
          round(figures["embed_pairs_per_s"], 1), round(figures["peak_rss_mb"], 1),
          int(figures["tokens"]) if figures["tokens"] >= 0 else "not reported", int(figures["in_flight_at_end"])]])
    notes = f"instructor-embed with its defaults on {args.pairs} workload pairs, {args.output_format} output; {served}."
    print(table)
    print(notes)
    if not args.no_record:
        results.record("bench_bulk", args.device, f"{table}\n\n{notes}", recorded, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
