"""End-to-end benchmark through a real TorchServe 0.12 on loopback (token auth on), with a bounded load generator.

For each target (``core``: the project's handler; ``core-int8``: the same with precision int8; ``seed``: the seed
method's handler, one fp32 encode per request, batchSize 1) it builds an archive, registers it, runs each load
(single-pair or N-pair requests at a fixed concurrency for a fixed time, after a warm-up), unregisters it, and
finally stops TorchServe (the Java process is waited for, and killed if it lingers).

Archive layout (what scripts/build_mar.sh is meant to produce; built here with torch-model-archiver directly so
the benchmark does not depend on that script's options): the root holds the entry file (torchserve_handler.py
from handler/), the handler/ package as a folder and model/ (the model directory); model-config.yaml sets
minWorkers = maxWorkers = 1, batchSize, maxBatchDelay, responseTimeout and the ``handler:`` settings.
``--archive-format no-archive`` keeps multi-GB weights out of a zip.

The load generator runs in several processes (aiohttp, keep-alive) so that one Python client is not the
bottleneck; each request's latency is measured from send to the end of the response body.

Examples:
  python -m benchmarks.bench_torchserve --shape base --device cpu --targets core,core-int8,seed --loads 16x1:60
  python -m benchmarks.bench_torchserve --shape large --targets core,seed --loads 1x1:8,64x1:8,256x1:10,16x32:8 \\
      --seed-loads 1x1:6,64x1:8 --batch-size 128 --max-batch-delay 2 --setting max_batch_tokens=65536
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import results
from benchmarks.make_bench_model import SHAPES, make_model
from benchmarks.workload import make_pairs

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = {"core": "instructor", "core-int8": "instructor_int8", "core-bt": "instructor_bt", "seed": "seed"}
QUIET_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/></Console>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></File>
    <File name="model_log" fileName="${env:LOG_LOCATION:-logs}/model_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off" additivity="false"/>
    <Logger name="TS_METRICS" level="off" additivity="false"/>
    <Logger name="MODEL_METRICS" level="off" additivity="false"/>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Logger name="org.pytorch.serve" level="{level}" additivity="false">
      <AppenderRef ref="ts_log"/><AppenderRef ref="STDOUT" level="error"/></Logger>
    <Logger name="org.pytorch.serve.wlm.WorkerLifeCycle" level="info" additivity="false">
      <AppenderRef ref="ts_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


@dataclasses.dataclass(frozen=True)
class Load:
    concurrency: int
    pairs_per_request: int
    seconds: float

    @property
    def name(self) -> str:
        kind = "single" if self.pairs_per_request == 1 else f"batch{self.pairs_per_request}"
        return f"{kind}_c{self.concurrency}"


def parse_loads(text: str) -> list[Load]:
    """'1x1:8,256x1:10,16x32:8' -> concurrency x pairs-per-request : seconds."""
    loads = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        shape, _, seconds = item.partition(":")
        concurrency, _, pairs = shape.partition("x")
        loads.append(Load(int(concurrency), int(pairs or 1), float(seconds or 10)))
    return loads


@dataclasses.dataclass
class LoadResult:
    load: Load
    requests: int = 0
    pairs: int = 0
    errors: int = 0
    window: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    first_error: str = ""

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.window if self.window else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- load generator (runs in child processes) ------------------------------------------------------


def _client_process(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_client(spec))


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    bodies: list[bytes] = spec["bodies"]
    start_at, measure_from, stop_at = spec["start_at"], spec["measure_from"], spec["stop_at"]
    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    out: dict[str, Any] = {"latencies": [], "pairs": 0, "requests": 0, "errors": 0, "first_error": "",
                           "checked": False}
    counter = iter(range(10**12))
    connector = aiohttp.TCPConnector(limit=spec["concurrency"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))

        async def user() -> None:
            while time.monotonic() < stop_at:
                body = bodies[next(counter) % len(bodies)]
                sent = time.monotonic()
                try:
                    async with session.post(spec["url"], data=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    status, payload = -1, repr(error).encode()
                done = time.monotonic()
                if status != 200:
                    out["errors"] += 1
                    if not out["first_error"]:
                        out["first_error"] = f"{status}: {payload[:300]!r}"
                    continue
                if not out["checked"]:  # one response per process is parsed: a vector of the right size
                    parsed = json.loads(payload)
                    vector = parsed if spec["pairs_per_request"] == 1 else parsed[0]
                    if len(vector) != spec["dimension"]:
                        raise AssertionError(f"response vector has {len(vector)} values, not {spec['dimension']}")
                    out["checked"] = True
                if sent >= measure_from and done <= stop_at:
                    out["latencies"].append(1000.0 * (done - sent))
                    out["requests"] += 1
                    out["pairs"] += spec["pairs_per_request"]

        await asyncio.gather(*(user() for _ in range(spec["concurrency"])))
    return out


def run_load(url: str, key: str, load: Load, pairs: list[tuple[str, str]], processes: int, warmup: float,
             dimension: int, timeout: float) -> LoadResult:
    """Drive ``load`` against ``url`` from several processes; pairs/s counts requests completed in the window."""
    n_procs = max(1, min(processes, load.concurrency))
    per_proc = [load.concurrency // n_procs + (1 if i < load.concurrency % n_procs else 0) for i in range(n_procs)]
    start_at = time.monotonic() + 2.0  # lets every process start before the first request
    measure_from = start_at + warmup
    stop_at = measure_from + load.seconds
    specs = []
    for index, concurrency in enumerate(per_proc):
        bodies = []
        for start in range(index * 997, index * 997 + 512):  # distinct pairs per process
            chunk = [pairs[(start * load.pairs_per_request + j) % len(pairs)] for j in range(load.pairs_per_request)]
            inputs: Any = list(chunk[0]) if load.pairs_per_request == 1 else [list(p) for p in chunk]
            bodies.append(json.dumps({"inputs": inputs}).encode())
        specs.append({"url": url, "key": key, "bodies": bodies, "concurrency": concurrency, "start_at": start_at,
                      "measure_from": measure_from, "stop_at": stop_at, "pairs_per_request": load.pairs_per_request,
                      "dimension": dimension, "timeout": timeout})
    context = multiprocessing.get_context("spawn")
    with context.Pool(n_procs) as pool:
        outputs = pool.map(_client_process, specs)
    result = LoadResult(load, window=load.seconds)
    for out in outputs:
        result.requests += out["requests"]
        result.pairs += out["pairs"]
        result.errors += out["errors"]
        result.latencies_ms.extend(out["latencies"])
        result.first_error = result.first_error or out["first_error"]
    return result


# ---- TorchServe ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TorchServe:
    """One TorchServe on loopback in its own working directory (own TMPDIR, pid file, logs, keys)."""

    def __init__(self, workdir: Path, worker_env: dict[str, str] | None = None, log_level: str = "warn") -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.store = workdir / "model_store"
        self.tmp = workdir / "tmp"
        self.logs = workdir / "logs"
        for path in (self.store, self.tmp, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_i", "grpc_m")}
        self.inference = f"http://127.0.0.1:{self.ports['inference']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"
        self.keys: dict[str, str] = {}
        self.java_pid: int | None = None
        # Workers inherit the frontend's environment: worker_env reaches the handler processes.
        self.env = dict(os.environ, TMPDIR=str(self.tmp), LOG_LOCATION=str(self.logs),
                        METRICS_LOCATION=str(self.logs), **(worker_env or {}))

    def _launcher(self, *args: str, check: bool = True) -> None:
        code = "import sys; from ts.model_server import start; sys.argv[0] = 'torchserve'; start()"
        # Output to a file, not a pipe: Java inherits the launcher's stdout and would hold a pipe open forever.
        with open(self.logs / "launcher.log", "a", encoding="utf-8") as log:
            subprocess.run([sys.executable, "-c", code, *args], cwd=self.workdir, env=self.env, check=check,
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)

    def start(self) -> float:
        config = self.workdir / "config.properties"
        config.write_text("\n".join([
            f"inference_address={self.inference}",
            f"management_address={self.management}",
            f"metrics_address=http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_address=127.0.0.1",
            f"grpc_inference_port={self.ports['grpc_i']}",
            "grpc_management_address=127.0.0.1",
            f"grpc_management_port={self.ports['grpc_m']}",
            f"model_store={self.store}",
            "disable_token_authorization=false",
            "enable_model_api=true",
            "allowed_urls=^$",
            "install_py_dep_per_model=false",
            "default_workers_per_model=1",
            # c=256 single-pair requests must queue, not bounce: the 0.12 default of 100 answers 503.
            "job_queue_size=2048",
            "max_request_size=16777216",
            "max_response_size=33554432",
            "vmargs=-Xmx4g",
        ]) + "\n", encoding="utf-8")
        (self.workdir / "log4j2.xml").write_text(QUIET_LOG4J.replace("{level}", self.log_level), encoding="utf-8")
        started = time.perf_counter()
        self._launcher("--start", "--ncs", "--ts-config", str(config), "--log-config",
                       str(self.workdir / "log4j2.xml"), "--model-store", str(self.store))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            pid_file = self.tmp / ".model_server.pid"
            key_file = self.workdir / "key_file.json"
            if pid_file.exists() and self.java_pid is None:
                self.java_pid = int(pid_file.read_text().split()[0])
            if key_file.exists():
                try:
                    keys = json.loads(key_file.read_text())
                    self.keys = {"inference": keys["inference"]["key"], "management": keys["management"]["key"]}
                    status, _ = self.request("GET", f"{self.inference}/ping", "inference")
                    if status == 200:
                        return time.perf_counter() - started
                except (json.JSONDecodeError, KeyError, OSError):
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe did not answer /ping within 90 s; see {self.logs}")

    def request(self, method: str, url: str, key: str, timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {self.keys[key]}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def register(self, name: str, timeout: float) -> float:
        """Register STORE/name (no-archive); returns seconds until its worker is READY."""
        started = time.perf_counter()
        status, body = self.request("POST", f"{self.management}/models?url={name}&initial_workers=1"
                                            "&synchronous=false", "management")
        if status not in (200, 202):
            raise RuntimeError(f"registering {name}: {status} {body[:500]!r}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"{self.management}/models/{name}", "management")
            if status == 200:
                workers = json.loads(body)[0].get("workers", [])
                if workers and all(w.get("status") == "READY" for w in workers):
                    return time.perf_counter() - started
            time.sleep(1.0)
        raise RuntimeError(f"{name}: no READY worker after {timeout:.0f} s; see {self.logs}/model_log.log")

    def unregister(self, name: str) -> None:
        self.request("DELETE", f"{self.management}/models/{name}", "management", timeout=120)

    def stop(self) -> None:
        """Stop TorchServe and make sure its Java process is gone (SIGKILL after 30 s)."""
        if self.java_pid is None and (self.tmp / ".model_server.pid").exists():
            self.java_pid = int((self.tmp / ".model_server.pid").read_text().split()[0])
        self._launcher("--stop", check=False)
        if self.java_pid is None:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(self.java_pid):
            time.sleep(0.5)
        if _alive(self.java_pid):
            os.kill(self.java_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (already exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


# ---- archives ---------------------------------------------------------------------------------------


def build_archive(target: str, store: Path, model_dir: Path, staging: Path, batch_size: int, delay: int,
                  timeout: int, settings: dict[str, Any], workers: int = 1) -> str:
    """An archive directory STORE/<name> (no-archive format) for ``target``; returns its name."""
    name = MODEL_NAME[target]
    root = staging / name
    extra = root / "extra"
    shutil.rmtree(root, ignore_errors=True)
    extra.mkdir(parents=True)
    shutil.copytree(REPO / "handler", extra / "handler", ignore=shutil.ignore_patterns("__pycache__"))
    (extra / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    if target == "seed":
        entry = REPO / "benchmarks" / "seed_handler.py"
        (extra / "benchmarks").mkdir()
        for file in ("__init__.py", "seed_method.py"):
            shutil.copy(REPO / "benchmarks" / file, extra / "benchmarks" / file)
        config: dict[str, Any] = {"batchSize": 1, "maxBatchDelay": 0}
    else:
        entry = REPO / "handler" / "torchserve_handler.py"
        if target == "core-bt":
            entry = REPO / "benchmarks" / "batched_tokenize_handler.py"
        config = {"batchSize": batch_size, "maxBatchDelay": delay, "handler": settings}
        if target == "core-int8":
            config["handler"] = {**settings, "precision": "int8"}
    n_workers = 1 if target == "seed" else workers
    config = {"minWorkers": n_workers, "maxWorkers": n_workers, "responseTimeout": timeout, "startupTimeout": 1200,
              **config}
    import yaml

    (root / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.rmtree(store / name, ignore_errors=True)
    code = "import sys; from model_archiver.model_packaging import generate_model_archive; " \
           "sys.argv[0] = 'torch-model-archiver'; generate_model_archive()"
    subprocess.run([sys.executable, "-c", code, "--model-name", name, "--version", "1.0", "--handler", str(entry),
                    "--extra-files", str(extra), "--config-file", str(root / "model-config.yaml"),
                    "--export-path", str(store), "--archive-format", "no-archive", "-f"], check=True)
    return name


# ---- what the machine does during a load -----------------------------------------------------------


class Sampler(threading.Thread):
    """Samples CPU use per process (and per thread of the busiest Python process) and the GPU, mid-load."""

    def __init__(self, seconds: float, warmup: float) -> None:
        super().__init__(daemon=True)
        self.delay = 2.0 + warmup + seconds / 3  # run_load starts its clock 2 s after being called
        self.report = "    sampler: nothing sampled"

    def run(self) -> None:
        try:
            self.report = self._sample()
        except Exception as exc:  # diagnostics must never fail a benchmark
            self.report = f"    sampler failed: {exc!r}"

    def _sample(self) -> str:
        import psutil

        time.sleep(self.delay)
        procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
        threads: dict[int, dict[int, float]] = {}
        for proc in procs:
            try:
                proc.cpu_percent(None)
                threads[proc.pid] = {t.id: t.user_time + t.system_time for t in proc.threads()}
            except psutil.Error:
                pass
        psutil.cpu_percent(None, percpu=True)
        gpu = _nvidia_smi()
        time.sleep(1.0)
        per_cpu = psutil.cpu_percent(None, percpu=True)
        rows = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                rows.append((proc.cpu_percent(None), proc))
        rows.sort(key=lambda r: -r[0])
        lines = [f"    sampler: CPUs busy {sum(per_cpu) / 100:.1f} of {len(per_cpu)}; GPU {gpu} / {_nvidia_smi()}"]
        for cpu, proc in rows[:6]:
            cmd = " ".join(proc.info.get("cmdline") or [proc.info.get("name") or "?"])
            lines.append(f"      {cpu:6.1f}% pid {proc.pid} threads {proc.num_threads():3d} {cmd[-90:]}")
        busiest_python = next((p for _, p in rows if "python" in (p.info.get("name") or "")), None)
        if busiest_python is not None and busiest_python.pid in threads:
            before = threads[busiest_python.pid]
            deltas = sorted(((t.user_time + t.system_time - before.get(t.id, 0.0), t.id)
                             for t in busiest_python.threads()), reverse=True)
            lines.append(f"      threads of pid {busiest_python.pid} (CPU s in 1 s): "
                         + ", ".join(f"{d:.2f}" for d, _ in deltas[:8]))
        return "\n".join(lines)


def _nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,clocks.sm,power.draw",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def batch_summary(ts_log: Path, model: str) -> str:
    """Per dynamic-batch size: how many batches and the median encode time, from the handler's metrics lines."""
    import re

    pattern = re.compile(r"\[METRICS\](Instructor\w+)\.\w+:([0-9.]+)\|#ModelName:(\w+)")
    current: dict[str, float] = {}
    by_items: dict[int, list[float]] = {}
    try:
        text = ts_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "    (no ts_log)"
    for match in pattern.finditer(text):
        name, value, owner = match.group(1), float(match.group(2)), match.group(3)
        if owner != model:
            continue
        if name == "InstructorBatches":
            current = {}
        current[name] = value
        if name == "InstructorEncodeSeconds" and "InstructorItems" in current:
            by_items.setdefault(int(current["InstructorItems"]), []).append(1000 * value)
    common = sorted(by_items.items(), key=lambda kv: -len(kv[1]))[:6]
    return "    encode per dynamic batch: " + "; ".join(
        f"{items} pairs x{len(v)}: median {statistics.median(v):.1f} ms" for items, v in common)


# ---- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="model shape (default: base)")
    parser.add_argument("--model-dir", type=Path, help="model directory (default: /tmp/instructor-bench/SHAPE)")
    parser.add_argument("--device", default=None, help="cuda or cpu: only names the card in the results; "
                                                       "TorchServe places workers itself (default: cuda if present)")
    parser.add_argument("--targets", default="core,seed",
                        help="core, core-int8, core-bt (one tokenizer call per dynamic batch), seed "
                             "(default: core,seed)")
    parser.add_argument("--loads", default="1x1:8,64x1:8,256x1:10,16x32:8",
                        help="CONCURRENCYxPAIRS:SECONDS,... for core targets (default: 1x1:8,64x1:8,256x1:10,16x32:8)")
    parser.add_argument("--seed-loads", help="loads for the seed target (default: --loads)")
    parser.add_argument("--target-loads", action="append", default=[], metavar="TARGET=LOADS",
                        help="loads for one target, e.g. core-bt=64x1:8,256x1:10 (repeatable)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default: 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="TorchServe batchSize (default: 128)")
    parser.add_argument("--max-batch-delay", type=int, default=2, help="maxBatchDelay, ms (default: 2)")
    parser.add_argument("--response-timeout", type=int, default=600, help="responseTimeout, s (default: 600)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a handler: setting for core targets (repeatable)")
    parser.add_argument("--processes", type=int, default=4, help="load generator processes (default: 4)")
    parser.add_argument("--workers", type=int, default=1, help="workers (model copies) of core targets; the "
                                                               "seed keeps 1 (default: 1)")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of TorchServe and its workers (repeatable)")
    parser.add_argument("--log-level", default="warn", help="frontend log level (default: warn; info logs "
                                                            "every request)")
    parser.add_argument("--key-suffix", default="", help="appended to every results.json key (variant runs)")
    parser.add_argument("--ratio-load", help="load name for the served/seed ratio (default: the most concurrent "
                                             "single-pair load both ran)")
    parser.add_argument("--workdir", type=Path, help="TorchServe working directory (default: a new temp dir)")
    parser.add_argument("--results-dir", type=Path, default=results.BENCH_DIR)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = args.model_dir or Path("/tmp/instructor-bench") / args.shape
    if not (model_dir / "config.json").exists():
        make_model(args.shape, model_dir)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if any(t not in MODEL_NAME for t in targets):
        parser.error(f"--targets: choose from {sorted(MODEL_NAME)}")
    settings: dict[str, Any] = {}
    for item in args.setting:
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    loads = parse_loads(args.loads)
    target_loads = {target: loads for target in MODEL_NAME}
    if args.seed_loads:
        target_loads["seed"] = parse_loads(args.seed_loads)
    for item in args.target_loads:
        target, _, spec = item.partition("=")
        target_loads[target.strip()] = parse_loads(spec)
    pairs = make_pairs(4096)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ts-bench-"))
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    server = TorchServe(workdir, worker_env, args.log_level)
    measured: dict[str, list[LoadResult]] = {}
    startup: dict[str, float] = {}
    try:
        print(f"TorchServe in {workdir}: started in {server.start():.1f} s", flush=True)
        for target in targets:
            name = build_archive(target, server.store, model_dir, workdir / "staging", args.batch_size,
                                 args.max_batch_delay, args.response_timeout, settings, args.workers)
            startup[target] = server.register(name, timeout=1500)
            print(f"{target}: worker READY {startup[target]:.1f} s after registration", flush=True)
            url = f"{server.inference}/predictions/{name}"
            measured[target] = []
            for load in target_loads[target]:
                sampler = Sampler(load.seconds, args.warmup)
                sampler.start()
                result = run_load(url, server.keys["inference"], load, pairs, args.processes, args.warmup,
                                  dimension=768, timeout=args.response_timeout)
                sampler.join()
                measured[target].append(result)
                print(f"  {target} {load.name}: {result.pairs_per_s:,.1f} pairs/s, p50 {result.percentile(0.5):.1f} "
                      f"ms, p99 {result.percentile(0.99):.1f} ms, {result.requests} requests, {result.errors} errors"
                      + (f" (first: {result.first_error})" if result.errors else ""), flush=True)
                print(sampler.report, flush=True)
            print(batch_summary(server.logs / "ts_log.log", name), flush=True)
            server.unregister(name)
    finally:
        server.stop()
        print(f"TorchServe stopped (java pid {server.java_pid} alive: "
              f"{_alive(server.java_pid) if server.java_pid else False})", flush=True)

    # ---- report ------------------------------------------------------------------------------
    header = ["target", "load", "pairs/s", "requests/s", "p50 ms", "p99 ms", "requests", "errors"]
    rows = []
    for target, target_results in measured.items():
        for r in target_results:
            rows.append([target, r.load.name, round(r.pairs_per_s, 1), round(r.requests / r.window, 1),
                         round(r.percentile(0.5), 1), round(r.percentile(0.99), 1), r.requests, r.errors])
    table = results.markdown_table(header, rows)
    card = results.card_name(device)
    notes = [f"{args.shape}; TorchServe batchSize {args.batch_size}, maxBatchDelay {args.max_batch_delay} ms, "
             f"{args.workers} worker(s); handler settings {settings or 'defaults'}; worker env {worker_env or '-'}; "
             "seed: batchSize 1, 1 worker; "
             f"load: {args.processes} client processes, {args.warmup:.0f} s warm-up per load. "
             "Worker start (registration -> READY): "
             + ", ".join(f"{t} {s:.1f} s" for t, s in startup.items())]
    figures: dict[str, float] = {}
    suffix = {"core": "", "core-int8": "_int8", "core-bt": "_batched_tokenize", "seed": "_seed"}
    for target, target_results in measured.items():
        prefix = f"{card}_{args.shape}{suffix[target]}_torchserve"
        figures[f"{prefix}_startup_s"] = startup[target]
        for r in target_results:
            figures[f"{prefix}_{r.load.name}_pairs_per_s"] = r.pairs_per_s
            figures[f"{prefix}_{r.load.name}_p50_ms"] = r.percentile(0.5)
            figures[f"{prefix}_{r.load.name}_p99_ms"] = r.percentile(0.99)
            if r.load.name == "single_c1":
                figures[f"{prefix}_c1_p50_ms"] = r.percentile(0.5)
    if "seed" in measured:
        seed_by_name = {r.load.name: r for r in measured["seed"]}
        for target in ("core", "core-int8"):
            common = [r for r in measured.get(target, []) if r.load.name in seed_by_name]
            if args.ratio_load:
                common = [r for r in common if r.load.name == args.ratio_load]
            single = [r for r in common if r.load.pairs_per_request == 1] or common
            if not single:
                continue
            chosen = max(single, key=lambda r: r.load.concurrency)
            seed_result = seed_by_name[chosen.load.name]
            if seed_result.pairs_per_s > 0:
                ratio = chosen.pairs_per_s / seed_result.pairs_per_s
                kind = "served" if target == "core" else "int8"
                figures[f"{card}_{args.shape}_{kind}_over_seed_ratio"] = ratio
                notes.append(f"{target} / seed on {chosen.load.name}: {ratio:.2f}x")
    if args.key_suffix:
        figures = {f"{key}{args.key_suffix}": value for key, value in figures.items()}
    print()
    print(table)
    print("\n".join(notes))
    if not args.no_record:
        results.record(f"bench_torchserve {args.shape}", device, f"{table}\n\n" + "\n".join(notes), figures,
                       args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
