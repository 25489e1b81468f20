"""Stress TorchServe's worker lifecycle and check EVERY answer against the vector of its own request.

Concurrent clients send single-pair and batch requests drawn from a pool of distinct pairs (each pair
carries its own number, so an answer that belongs to another request can never pass the check) while
a chaos loop scales the model's workers up and down (synchronous PUT min_worker/max_worker) and kills
workers with SIGKILL (cycle: up to --max-workers, kill one, down to 1, kill it; the run lasts at least
one full cycle). Every 200 is compared with the vectors the in-process encoder gives for the very
pairs of that request (max abs difference <= 1e-5); every other answer is counted by status and message.

    VENV=.venv .venv/bin/python -m tools.stress_workers --seconds 300            # tiny INSTRUCTOR model
    VENV=.venv .venv/bin/python -m tools.stress_workers --model demo --seconds 120

Starts its own TorchServe on free loopback ports (tests/torchserve_harness.py) and stops it at the end.
Prints a JSON report; exit status 1 if any 200 carried a wrong vector.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

WORDS = ("river", "quantum", "bread", "violin", "glacier", "ledger", "orbit", "pepper", "saddle", "tundra",
         "北京", "café", "naïve", "🙂", "Zürich", "data", "lantern", "cobalt", "meadow", "syntax")
INSTRUCTIONS = ("Represent the Science title:", "Represent the question for retrieving documents:", "",
                "Represent the sentence:", "query: ")
TOLERANCE = 1e-5


@dataclasses.dataclass
class StressReport:
    """What the clients saw and what the chaos loop did."""

    seconds: float = 0.0
    clients: int = 0
    requests: int = 0
    pairs: int = 0
    wrong_vectors: int = 0
    statuses: Counter = dataclasses.field(default_factory=Counter)
    error_messages: Counter = dataclasses.field(default_factory=Counter)
    transport_errors: Counter = dataclasses.field(default_factory=Counter)
    actions: Counter = dataclasses.field(default_factory=Counter)
    action_failures: list[str] = dataclasses.field(default_factory=list)
    worker_pids_seen: set[int] = dataclasses.field(default_factory=set)
    wrong_examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    chaos_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "seconds": round(self.seconds, 1), "clients": self.clients, "requests": self.requests,
            "pairs": self.pairs, "wrong_vectors": self.wrong_vectors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "error_messages": dict(self.error_messages), "transport_errors": dict(self.transport_errors),
            "actions": dict(self.actions), "action_failures": self.action_failures[:10],
            "distinct_worker_pids": len(self.worker_pids_seen), "wrong_examples": self.wrong_examples[:5],
        }


def pair_pool(size: int, seed: int) -> list[tuple[str, str]]:
    """Distinct [instruction, sentence] pairs: the number in each sentence makes every pair unique."""
    rng = random.Random(seed)
    return [(rng.choice(INSTRUCTIONS),
             f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))))
            for i in range(size)]


def expected_vectors(model_dir: Path, pool: list[tuple[str, str]]) -> np.ndarray:
    """The vectors the served model must return: the same encoder core, in-process."""
    from handler.encoder import InstructorEncoder
    from handler.settings import Settings

    return InstructorEncoder(model_dir, Settings(warmup=False)).encode(pool).vectors


def _close(got: Any, want: np.ndarray) -> bool:
    try:
        array = np.asarray(got, dtype=np.float32)
    except (TypeError, ValueError):
        return False
    return array.shape == want.shape and float(np.abs(array - want).max()) <= TOLERANCE


async def _client(session: aiohttp.ClientSession, url: str, token: str, pool, expected, stop: asyncio.Event,
                  rng: random.Random, report: StressReport) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while not stop.is_set():
        picks = rng.sample(range(len(pool)), rng.choice((1, 1, 1, 2, 4)))
        single = len(picks) == 1 and rng.random() < 0.7
        body = {"inputs": list(pool[picks[0]])} if single else {"inputs": [list(pool[i]) for i in picks]}
        want = expected[picks[0]] if single else expected[picks]
        try:
            async with session.post(url, data=json.dumps(body).encode(), headers=headers) as resp:
                status, payload = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            report.transport_errors[type(exc).__name__] += 1
            continue
        report.requests += 1
        report.pairs += len(picks)
        report.statuses[status] += 1
        if status == 200:
            got = json.loads(payload)
            if not _close(got, want):
                report.wrong_vectors += 1
                report.wrong_examples.append({"pairs": picks, "single": single})
        else:
            try:
                message = json.loads(payload).get("message", "")
            except (ValueError, AttributeError):
                message = payload[:80].decode("utf-8", "replace")
            report.error_messages[f"{status} {message}"[:120]] += 1


def _worker_pids(ts, model: str) -> list[int]:
    return [w["pid"] for w in ts.describe(model)["workers"] if isinstance(w.get("pid"), int) and w["pid"] > 0]


def _scale(ts, model: str, workers: int) -> int:
    """Synchronous PUT; 206 ("Workers scaling in progress...") means a remaining worker was not READY
    yet (e.g. restarting after a kill): the scale itself happened."""
    resp = ts.call("PUT", f"/models/{model}?min_worker={workers}&max_worker={workers}&synchronous=true",
                   api="management", timeout=180)
    if resp.status not in (200, 206):
        raise RuntimeError(f"scale to {workers}: HTTP {resp.status} {resp.body}")
    return resp.status


def _plan(max_workers: int, kills: bool) -> list[tuple[str, int | None]]:
    """One chaos cycle: scale up, kill one, scale down to 1, kill it (without kills: up, down)."""
    if not kills:
        return [("scale", max_workers), ("scale", 1)]
    return [("scale", max_workers), ("kill", None), ("scale", 1), ("kill", None)]


async def _chaos(ts, model: str, stop: asyncio.Event, period: float, plan: list[tuple[str, int | None]],
                 rng: random.Random, report: StressReport) -> None:
    """Run ``plan`` round and round, pausing ``period`` seconds after each action completes."""
    step = 0
    while not stop.is_set():
        await asyncio.sleep(period)
        if stop.is_set():
            break
        action, arg = plan[step % len(plan)]
        step += 1
        try:
            pids = await asyncio.to_thread(_worker_pids, ts, model)
            report.worker_pids_seen.update(pids)
            if action == "scale":
                status = await asyncio.to_thread(_scale, ts, model, arg)
                report.actions[f"scale_to_{arg}"] += 1
                if status == 206:
                    report.actions["scale_answered_206"] += 1
            elif pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                report.actions["kill_9"] += 1
        except Exception as exc:  # keep stressing; the report shows what failed
            report.action_failures.append(f"{action} {arg}: {exc}")
        report.chaos_steps = step
    report.worker_pids_seen.update(await asyncio.to_thread(_worker_pids, ts, model))


async def _stop_when_done(stop: asyncio.Event, seconds: float, min_cycles: int, plan_length: int,
                          report: StressReport) -> None:
    """Stop after ``seconds`` once ``min_cycles`` chaos cycles are complete (a loaded machine starts
    workers slowly); never later than 4 x ``seconds``."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        cycles = report.chaos_steps // plan_length if plan_length else min_cycles
        if elapsed >= 4 * seconds or (elapsed >= seconds and cycles >= min_cycles):
            stop.set()
            return
        await asyncio.sleep(0.2)


async def _run(ts, model: str, pool, expected, seconds: float, clients: int, period: float,
               max_workers: int, seed: int, chaos: bool, kills: bool, min_cycles: int) -> StressReport:
    report = StressReport(clients=clients)
    rng = random.Random(seed)
    stop = asyncio.Event()
    started = time.monotonic()
    url = f"{ts.inference_url}/predictions/{model}"
    token = ts.keys().inference
    plan = _plan(max_workers, kills) if chaos else []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150),
                                     connector=aiohttp.TCPConnector(limit=clients)) as session:
        tasks = [_client(session, url, token, pool, expected, stop, random.Random(seed + i + 1), report)
                 for i in range(clients)]
        tasks.append(_stop_when_done(stop, seconds, min_cycles if chaos else 0, len(plan), report))
        if chaos:
            tasks.append(_chaos(ts, model, stop, period, plan, rng, report))
        await asyncio.gather(*tasks)
    report.seconds = time.monotonic() - started
    return report


def stress(ts, model: str, model_dir: Path, *, seconds: float, clients: int = 16, period: float = 5.0,
           max_workers: int = 2, pool_size: int = 512, seed: int = 0, chaos: bool = True,
           kills: bool = True, min_cycles: int = 1) -> StressReport:
    """Run the stress against a running TorchServe serving ``model`` (built from ``model_dir``)."""
    pool = pair_pool(pool_size, seed)
    expected = expected_vectors(model_dir, pool)
    return asyncio.run(_run(ts, model, pool, expected, seconds, clients, period, max_workers, seed, chaos,
                            kills, min_cycles))


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.stress_workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = " (default: %(default)s)"
    p.add_argument("--model", choices=("tiny", "demo"), default="tiny",
                   help="tiny: the tiny INSTRUCTOR test model; demo: all-MiniLM-L6-v2" + d)
    p.add_argument("--seconds", type=float, default=60.0, help="duration of the load" + d)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients" + d)
    p.add_argument("--period", type=float, default=5.0,
                   help="pause after each chaos action completes, s" + d)
    p.add_argument("--max-workers", type=int, default=2, help="workers when scaled up" + d)
    p.add_argument("--pool", type=int, default=512, help="distinct pairs the requests draw from" + d)
    p.add_argument("--seed", type=int, default=0, help="random seed" + d)
    p.add_argument("--no-chaos", action="store_true", help="load only: no scaling, no kills")
    p.add_argument("--no-kill", action="store_true", help="scale up and down only, no SIGKILL")
    p.add_argument("--json", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.clients <= 0 or args.max_workers < 1:
        p.error("--seconds, --clients and --max-workers must be positive")

    from tests.demo_model import demo_model_path
    from tests.tiny_models import build_tiny_models
    from tests.torchserve_harness import build_with_script, register_with_script, running_torchserve

    with tempfile.TemporaryDirectory(prefix="stress-") as tmp:
        tmp_path = Path(tmp)
        if args.model == "tiny":
            model_dir = build_tiny_models(tmp_path / "models")["tiny-instructor-relu"]
            source = str(model_dir)
        else:
            model_dir, source = demo_model_path(), "demo"
        store = tmp_path / "store"
        build_with_script(source, args.model, store, "--batch-size", "16", "--max-batch-delay", "5")
        with running_torchserve(store) as ts:
            register_with_script(ts, args.model, "--workers", "1")
            report = stress(ts, args.model, model_dir, seconds=args.seconds, clients=args.clients,
                            period=args.period, max_workers=args.max_workers, pool_size=args.pool,
                            seed=args.seed, chaos=not args.no_chaos, kills=not args.no_kill)
    figures = report.as_dict() | {"model": args.model, "period_s": args.period, "max_workers": args.max_workers,
                                  "kills": not args.no_kill and not args.no_chaos}
    text = json.dumps(figures, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if report.wrong_vectors else 0


if __name__ == "__main__":
    sys.exit(_main())
