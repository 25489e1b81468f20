"""Send many large request bodies at once to a real TorchServe and report what the server did.

Reproduces "a flood of maximal bodies" (docs/reliability.md, Limits): COUNT concurrent POSTs of one body
of about BYTES bytes, then a small good request, then (optionally) a request every 10 s while watching
the worker. Reports the statuses, the worker PID before/after, the worker's RSS (before, peak, after)
and the frontend's "OutOfMemoryError" log lines.

    VENV=.venv .venv/bin/python -m tools.flood_bodies --kind text --count 150 --bytes 8300000
    VENV=.venv .venv/bin/python -m tools.flood_bodies --kind lists --count 16 --bytes 2090000
    # the configuration before the limits were recalculated:
    ... --set max_request_size=8388608 --set job_queue_size=100 --set vmargs=-Xmx1g \\
        --set decode_input_request=true

Kinds: text = 256 pairs of one repeated letter (valid within the handler's limits up to ~10 MB);
expanding = one instruction of 20,000 x U+FDFA (18 characters each after NFKC) for 256 empty sentences;
lists = {"inputs": [[], [], ...]} (refused by the handler: too many pairs). Loopback only; the flood
itself is bounded by --timeout (default 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil


def make_body(kind: str, size: int) -> bytes:
    """A body of about ``size`` bytes."""
    if kind == "text":
        per = max(1, (size - 40) // 512 - 8)
        return json.dumps({"inputs": [["i" * per, "x" * per]] * 256}).encode()
    if kind == "expanding":  # each character becomes 18 under NFKC: 20,000 of them, 256 times (size ignored)
        return json.dumps({"instruction": "\ufdfa" * 20000, "sentences": [""] * 256}, ensure_ascii=False).encode()
    count = max(1, (size - 20) // 3)
    return b'{"inputs": [' + b"[]," * (count - 1) + b"[]]}"


async def _flood(ts, model: str, body: bytes, count: int, timeout: float, pid: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ts.keys().inference}", "Content-Type": "application/json"}
    statuses: Counter = Counter()
    times: list[float] = []
    peak = {"worker": 0, "frontend": 0}

    async def one(session):
        started = time.monotonic()
        try:
            async with session.post(f"{ts.inference_url}/predictions/{model}", data=body, headers=headers) as r:
                await r.read()
                statuses[r.status] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            statuses[type(exc).__name__] += 1
        times.append(time.monotonic() - started)

    async def watch():
        while True:
            for key, p in (("worker", pid), ("frontend", ts.pid)):
                with contextlib.suppress(psutil.Error):
                    peak[key] = max(peak[key], psutil.Process(p).memory_info().rss)
            await asyncio.sleep(0.2)

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*[one(session) for _ in range(count)])
        watcher.cancel()
    times.sort()
    return {"statuses": {str(k): v for k, v in statuses.items()}, "seconds": round(time.monotonic() - started, 1),
            "median_s": round(times[len(times) // 2], 2), "max_s": round(times[-1], 2),
            "worker_rss_mb_peak": peak["worker"] >> 20, "frontend_rss_mb_peak": peak["frontend"] >> 20}


def _good(ts, model: str, timeout: float) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        status = ts.call("POST", f"/predictions/{model}", {"inputs": ["Represent:", "a good request"]},
                         timeout=timeout).status
    except TimeoutError:
        status = "no answer"
    return status, round(time.monotonic() - started, 1)


def run(ts, model: str, kind: str, count: int, size: int, timeout: float, watch_s: float) -> dict[str, Any]:
    """Flood ``ts`` and return the figures."""
    body = make_body(kind, size)
    [worker] = ts.describe(model)["workers"][:1]
    pid = worker["pid"]
    rss_before = psutil.Process(pid).memory_info().rss >> 20
    figures: dict[str, Any] = {"kind": kind, "count": count, "body_bytes": len(body),
                               "worker_rss_mb_before": rss_before}
    figures |= asyncio.run(_flood(ts, model, body, count, timeout, pid))
    figures["good_request_after"] = _good(ts, model, 30)
    figures["worker_pids_after"] = [w["pid"] for w in ts.describe(model)["workers"]]
    figures["worker_pid_unchanged"] = figures["worker_pids_after"] == [pid]
    try:
        figures["worker_rss_mb_after"] = psutil.Process(pid).memory_info().rss >> 20
    except psutil.Error:
        figures["worker_rss_mb_after"] = None
    watch: list[Any] = []
    deadline = time.monotonic() + watch_s
    while time.monotonic() < deadline:
        status, seconds = _good(ts, model, 5)
        info = ts.describe(model)
        watch.append({"status": status, "s": seconds, "workers": [w["status"] for w in info["workers"]],
                      "queue": info.get("jobQueueStatus")})
        time.sleep(max(0.0, 10 - seconds))
    if watch:
        figures["watch_every_10s"] = watch
    log = ts.log_dir / "ts_log.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    figures["frontend_out_of_memory_lines"] = text.count("OutOfMemoryError")
    return figures


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.flood_bodies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = " (default: %(default)s)"
    p.add_argument("--kind", choices=("text", "expanding", "lists"), default="text", help="body content" + d)
    p.add_argument("--count", type=int, default=150, help="concurrent bodies (at most 150)" + d)
    p.add_argument("--bytes", type=int, default=8_300_000, help="size of each body" + d)
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout of the flood, s (<= 60)" + d)
    p.add_argument("--watch", type=float, default=0.0, help="then probe every 10 s for this long, s" + d)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config.properties override (repeatable)")
    args = p.parse_args(argv)
    if not (0 < args.count <= 150 and 0 < args.timeout <= 60):
        p.error("--count must be 1..150 and --timeout 1..60 (this is a bounded reproduction)")
    overrides = dict(item.split("=", 1) for item in args.set)

    from tests.tiny_models import build_tiny_models
    from tests.torchserve_harness import build_with_script, register_with_script, running_torchserve

    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        model_dir = build_tiny_models(Path(tmp) / "models")["tiny-instructor-relu"]
        store = Path(tmp) / "store"
        build_with_script(str(model_dir), "tiny", store, "--batch-size", "16", "--max-batch-delay", "5")
        with running_torchserve(store, config=overrides) as ts:
            register_with_script(ts, "tiny", "--workers", "1")
            figures = run(ts, "tiny", args.kind, args.count, args.bytes, args.timeout, args.watch)
    print(json.dumps(figures | {"overrides": overrides}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
