"""End-to-end benchmark through a real TorchServe 0.12, started and fed exactly as a user's would be.

TorchServe is started by the repository's launcher (scripts/torchserve_ctl.py) with the repository's
config.properties (only ports and the model store are changed) and config/log4j2.xml; archives are built by
the repository's archive builder (scripts/build_model_archive.py) with the batching a user passes to
scripts/build_archive.sh. For each worker count (each worker a model copy; TorchServe spreads them over the
visible GPUs round-robin) and each target, it registers the model, runs each load, and records:

  core      the project's handler
  noop      benchmarks/noop_handler.py: parses the body, answers a constant vector per pair (TorchServe's
            ceiling for this traffic, same bytes on the wire)
  baseline  InstructorEmbedding 1.0.1's encode (fp32), one request at a time (batchSize 1); keys call it "seed"

``--gpus N`` shows TorchServe only the first N GPUs (CUDA_VISIBLE_DEVICES of its process); ``--compare-gpus``
runs the same loads with 1 GPU and with all of them in one run and records their ratio.

Examples:
  python -m benchmarks.bench_torchserve --shape base --targets core --workers 1 --loads 16x1:20
  python -m benchmarks.bench_torchserve --shape large --targets noop,core --workers 1,2,4 \\
      --loads 1x1:8,256x1:10,16x64:10 --batch-size 128 --max-batch-delay 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import results
from benchmarks.load import Load, LoadResult, parse_loads, run_load
from benchmarks.make_bench_model import SHAPES, make_model
from benchmarks.workload import make_pairs
from scripts import torchserve_ctl
from scripts.build_model_archive import ArchiveSpec, build_archive

BENCH = Path(__file__).resolve().parent
ENTRIES = {"core": None, "noop": BENCH / "noop_handler.py", "baseline": BENCH / "baseline_handler.py"}
# Result keys: {card}_{shape}{before}_torchserve{after}_{load}_...; the baseline keeps its historical "seed".
KEY_PARTS = {"core": ("", ""), "noop": ("", "_noop"), "baseline": ("_seed", "")}


class GpuSampler(threading.Thread):
    """nvidia-smi utilisation, sampled once a second through the measured window."""

    def __init__(self, start_after: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.start_after, self.seconds, self.samples = start_after, seconds, []

    def run(self) -> None:
        time.sleep(self.start_after)
        stop = time.monotonic() + self.seconds
        while time.monotonic() < stop:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append([float(x) for x in out.split()])
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            time.sleep(1.0)

    def report(self) -> str:
        if not self.samples:
            return "-"
        per_gpu = zip(*self.samples, strict=False)
        return "/".join(f"{statistics.mean(values):.0f}%" for values in per_gpu)


def gpu_memory_mib() -> dict[int, float]:
    """GPU memory held per process (pid -> MiB), from nvidia-smi; {} without it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return {int(pid): float(mib) for pid, mib in (line.split(",") for line in out.splitlines() if "," in line)}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def build(target: str, model_dir: Path, store: Path, args: argparse.Namespace, settings: dict[str, str]) -> str:
    name = f"bench-{target}"
    baseline = target == "baseline"
    spec = ArchiveSpec(workers=1, batch_size=1 if baseline else args.batch_size,
                       max_batch_delay_ms=0 if baseline else args.max_batch_delay,
                       response_timeout_s=args.response_timeout,
                       handler_settings=tuple(settings.items()) if target == "core" else ())
    extra = {}
    if baseline:
        extra = {"benchmarks/__init__.py": BENCH / "__init__.py",
                 "benchmarks/baseline_encode.py": BENCH / "baseline_encode.py"}
    build_archive(model_dir, name, store, "no-archive", spec, entry=ENTRIES[target], extra_files=extra)
    return name


def measure(server: torchserve_ctl.Server, name: str, loads: list[Load], args: argparse.Namespace,
            pairs: list[tuple[str, str]], dimension: int, label: str) -> list[LoadResult]:
    url = f"{server.inference_url}/predictions/{name}"
    out = []
    for load in loads:
        sampler = GpuSampler(2.0 + args.warmup, load.seconds)
        sampler.start()
        result = run_load(url, server.keys().inference, load, pairs, args.processes, args.warmup, dimension,
                          timeout=args.response_timeout, encoding_format=args.encoding)
        sampler.join()
        result.gpu = sampler.report()
        out.append(result)
        print(f"  {label} {load.name}: {result.pairs_per_s:,.1f} pairs/s ({result.requests_per_s:,.0f} req/s), "
              f"p50 {result.percentile(0.5):.1f} ms, p99 {result.percentile(0.99):.1f} ms, GPU {result.gpu}, "
              f"{result.requests} requests, {result.errors} errors"
              + (f" (first: {result.first_error})" if result.errors else ""), flush=True)
    return out


def run_server(gpus: str | None, args: argparse.Namespace, model_dir: Path, targets: list[str],
               worker_specs: list[str], loads: dict[str, list[Load]], settings: dict[str, str],
               pairs: list[tuple[str, str]], dimension: int) -> dict[tuple[str, str, int], list[LoadResult]]:
    """One TorchServe (seeing ``gpus``, e.g. "0"; None: all), every target at every worker count.

    Keys of the result: (target, worker spec as given, e.g. "auto" or "2", workers it meant)."""
    workdir = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    store = workdir / "model_store"
    overrides = {**torchserve_ctl.port_overrides(torchserve_ctl.free_ports(5)), "model_store": str(store)}
    env = {"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else {}
    names = {target: build(target, model_dir, store, args, settings) for target in targets}
    visible = torchserve_ctl.visible_gpus({**os.environ, **env})
    measured: dict[tuple[str, str, int], list[LoadResult]] = {}
    with torchserve_ctl.running(workdir, overrides=overrides, tmpdir=workdir / "tmp", env=env,
                                use_mps=args.mps) as server:
        print(f"TorchServe up in {server.started_s:.1f} s (GPUs visible: {gpus or 'all'})", flush=True)
        for target in targets:
            specs = ["1"] if target == "baseline" else worker_specs
            for spec in specs:
                workers = torchserve_ctl.auto_workers(visible) if spec == "auto" else int(spec)
                started = time.monotonic()
                server.register(names[target], workers, timeout=1800)
                label = f"{target} x{workers}"
                print(f"{label}: READY {time.monotonic() - started:.1f} s after registration", flush=True)
                measured[(target, spec, workers)] = measure(server, names[target], loads[target], args, pairs,
                                                            dimension, label)
                memory = gpu_memory_mib()  # after the loads: activations and graphs included
                if memory:
                    print(f"{label}: GPU memory {sum(memory.values()):,.0f} MiB in {len(memory)} processes "
                          f"({', '.join(f'{m:,.0f}' for m in sorted(memory.values()))})", flush=True)
                    for r in measured[(target, spec, workers)]:
                        r.gpu_memory = (sum(memory.values()), len(memory))
            server.registrar().unregister(names[target], timeout=300)
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="model shape (default: base)")
    parser.add_argument("--model-dir", type=Path,
                        help="model directory (default: <temp dir>/instructor-bench/SHAPE, written if missing)")
    parser.add_argument("--targets", default="core", help="core, noop, baseline (default: core)")
    parser.add_argument("--workers", default="auto",
                        help="worker counts to run, e.g. 1,2,auto (auto: what scripts/register.sh --workers auto "
                             "picks for the GPUs visible; default: auto)")
    parser.add_argument("--recommended-workers",
                        help="the --workers entry whose figures get the plain keys (default: auto if given, "
                             "else the last)")
    parser.add_argument("--loads", default="1x1:8,256x1:10,16x64:10",
                        help="CONCURRENCYxPAIRS:SECONDS,... (default: 1x1:8,256x1:10,16x64:10)")
    parser.add_argument("--baseline-loads", default="1x1:6,64x1:8", help="loads of the baseline (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="archive batchSize (default: 128)")
    parser.add_argument("--max-batch-delay", type=int, default=1, help="archive maxBatchDelay, ms (default: 1)")
    parser.add_argument("--response-timeout", type=int, default=120, help="archive responseTimeout, s (default: 120)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a handler setting of the core archive (repeatable)")
    parser.add_argument("--encoding", choices=("float", "base64", "raw"), default="float",
                        help="reply format: float or base64 (encoding_format), raw (Accept: application/octet-stream); "
                             "default: float, the API default")
    parser.add_argument("--gpus", help="GPUs TorchServe may use, e.g. 0 or 0,1 (default: all visible)")
    parser.add_argument("--compare-gpus", action="store_true",
                        help="run everything with GPU 0 only, then with all GPUs; record the ratio")
    parser.add_argument("--mps", action="store_true",
                        help="run the workers under CUDA MPS, as scripts/serve.sh --mps does")
    parser.add_argument("--processes", type=int, default=8, help="load generator processes (default: 8)")
    parser.add_argument("--key-suffix", default="", help="appended to every results.json key")
    parser.add_argument("--results-dir", type=Path, default=results.BENCH_DIR)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu_count = torch.cuda.device_count()
    model_dir = args.model_dir or Path(tempfile.gettempdir()) / "instructor-bench" / args.shape
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir, device=device)
    dimension = json.loads((model_dir / "2_Dense" / "config.json").read_text())["out_features"]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if any(t not in ENTRIES for t in targets):
        parser.error(f"--targets: choose from {', '.join(ENTRIES)}")
    worker_specs = [w.strip() for w in args.workers.split(",") if w.strip()]
    recommended = args.recommended_workers or ("auto" if "auto" in worker_specs else worker_specs[-1])
    settings = dict(item.split("=", 1) for item in args.setting)
    core_loads = parse_loads(args.loads)
    loads = {"core": core_loads, "noop": core_loads, "baseline": parse_loads(args.baseline_loads)}
    pairs = make_pairs(4096)
    runs = [("0", "_1gpu"), (None, "")] if args.compare_gpus else [(args.gpus, "")]

    rows, figures = [], {}
    card = results.card_name(device) + (f"x{gpu_count}" if args.compare_gpus and gpu_count > 1 else "")
    by_run: dict[str, dict[tuple[str, str, int], list[LoadResult]]] = {}
    for gpus, run_suffix in runs:
        measured = run_server(gpus, args, model_dir, targets, worker_specs, loads, settings, pairs, dimension)
        by_run[run_suffix] = measured
        for (target, spec, workers), load_results in measured.items():
            worker_part = "" if target == "baseline" or spec == recommended else f"_{workers}workers"
            before, after = KEY_PARTS[target]
            prefix = f"{card}_{args.shape}{before}_torchserve{after}"
            for r in load_results:
                rows.append([target, workers, gpus or "all", r.load.name, round(r.pairs_per_s, 1),
                             round(r.requests_per_s, 1), round(r.percentile(0.5), 1), round(r.percentile(0.99), 1),
                             r.gpu, r.requests, r.errors])
                key = f"{prefix}_{r.load.name}"
                tail = f"{worker_part}{run_suffix}{args.key_suffix}"
                figures[f"{key}_pairs_per_s{tail}"] = r.pairs_per_s
                figures[f"{key}_p50_ms{tail}"] = r.percentile(0.5)
                if target == "noop":
                    figures[f"{key}_requests_per_s{tail}"] = r.requests_per_s
                if r.load.name == "single_c1":
                    figures[f"{prefix}_c1_p50_ms{tail}"] = r.percentile(0.5)
                if r.gpu_memory:
                    figures[f"{prefix}_gpu_memory_mib{worker_part}{run_suffix}{args.key_suffix}"] = r.gpu_memory[0]
                    figures[f"{prefix}_gpu_processes{worker_part}{run_suffix}{args.key_suffix}"] = r.gpu_memory[1]
    notes = [f"{args.shape} (random weights, real shape); archive batchSize {args.batch_size}, maxBatchDelay "
             f"{args.max_batch_delay} ms, responseTimeout {args.response_timeout} s; handler settings "
             f"{settings or 'defaults'}; requests' encoding_format {args.encoding}; TorchServe with the "
             f"repository's config.properties{'; workers under CUDA MPS' if args.mps else ''}; load: "
             f"{args.processes} client processes, {args.warmup:.0f} s "
             f"warm-up per load; plain keys = workers {recommended}."]
    if args.compare_gpus and "_1gpu" in by_run:
        one_gpu = {(target, spec): (workers, rs) for (target, spec, workers), rs in by_run["_1gpu"].items()}
        for (target, spec, workers), load_results in by_run[""].items():
            if target != "core" or (target, spec) not in one_gpu:
                continue
            one_workers, one_results = one_gpu[(target, spec)]
            one = {r.load.name: r for r in one_results}
            for r in load_results:
                if r.load.name in one and one[r.load.name].pairs_per_s > 0:
                    ratio = r.pairs_per_s / one[r.load.name].pairs_per_s
                    worker_part = "" if spec == recommended else f"_{spec}workers"
                    figures[f"{card}_{args.shape}_torchserve_{r.load.name}_over_1gpu_ratio{worker_part}"] = ratio
                    notes.append(f"workers {spec} ({workers} on all GPUs, {one_workers} on GPU 0), {r.load.name}: "
                                 f"all GPUs / GPU 0 only = {ratio:.2f}x")
    header = ["target", "workers", "GPUs", "load", "pairs/s", "requests/s", "p50 ms", "p99 ms", "GPU util",
              "requests", "errors"]
    table = results.markdown_table(header, rows)
    print()
    print(table)
    print("\n".join(notes))
    if not args.no_record:
        results.record(f"bench_torchserve {args.shape}", device, f"{table}\n\n" + "\n".join(notes), figures,
                       args.results_dir)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the load generator's processes tokenize nothing
    sys.exit(main())
