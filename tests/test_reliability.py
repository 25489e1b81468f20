"""Reliability and security through a real TorchServe (Java frontend, real HTTP, loopback only).

Hostile input, sustained load with every answer checked against its own request, a worker killed
under load, a full queue, a corrupt model, tokens, bind addresses and registration sources.
Figures (latencies, recovery time, RSS) are printed and written to build/reliability/*.json;
docs/reliability.md quotes them. Bounded: ~2.5 minutes on 2 cores with the default 60 s load.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import time
import urllib.parse
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import pytest

from handler.encoder import InstructorEncoder
from handler.settings import Settings
from scripts.torchserve_ctl import Registrar
from tests.hostile_corpus import GOOD_PAIR, cases
from tests.torchserve_harness import (
    REPO,
    TorchServe,
    build_with_script,
    register_with_script,
    run_script,
    running_torchserve,
)

pytestmark = pytest.mark.torchserve

MODEL = "tiny"
LOAD_SECONDS = float(os.environ.get("RELIABILITY_LOAD_SECONDS", "60"))
FIGURES = REPO / "build" / "reliability"
WORDS = ("river", "quantum", "bread", "violin", "glacier", "ledger", "orbit", "pepper", "saddle", "tundra",
         "北京", "café", "naïve", "🙂", "Zürich", "data")
INSTRUCTIONS = ("Represent the Science title:", "Represent the question for retrieving documents:", "",
                "Represent the sentence:", "query: ")


def record(name: str, figures: dict) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")


@pytest.fixture(scope="module")
def model_dir(tiny_models) -> Path:
    return tiny_models["tiny-instructor-relu"]


@pytest.fixture(scope="module")
def reference_encoder(model_dir) -> InstructorEncoder:
    """The same model in-process: what every served answer must equal."""
    return InstructorEncoder(model_dir, Settings(warmup=False))


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_dir) -> Path:
    store = tmp_path_factory.mktemp("store")
    build_with_script(str(model_dir), MODEL, store, "--batch-size", "16", "--max-batch-delay", "5")
    return store


@pytest.fixture(scope="module")
def server(store):
    with running_torchserve(store) as ts:
        register_with_script(ts, MODEL, "--workers", "1")
        yield ts


def worker_pids(ts: TorchServe, name: str = MODEL) -> list[int]:
    return [w["pid"] for w in ts.describe(name)["workers"]]


def ready_states(ts: TorchServe, name: str = MODEL) -> list[str]:
    """The readiness check the scripts use (GET /models/NAME through scripts/torchserve_ctl.Registrar)."""
    registrar = Registrar(ts.management_url, ts.keys().management, ts.key_file, ts.log_dir)
    info = registrar.describe(name)
    return [w.get("status") for w in info.get("workers", [])] if info else []


def pair_pool(size: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(INSTRUCTIONS), " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))))
            for _ in range(size)]


async def post(session: aiohttp.ClientSession, ts: TorchServe, body: bytes,
               content_type: str = "application/json") -> tuple[int, bytes, float]:
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {ts.keys().inference}", "Content-Type": content_type}
    async with session.post(f"{ts.inference_url}/predictions/{MODEL}", data=body, headers=headers) as resp:
        payload = await resp.read()
        return resp.status, payload, time.perf_counter() - started


def check_vectors(payload: bytes, expected: np.ndarray) -> bool:
    got = np.asarray(json.loads(payload), dtype=np.float32)
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= 1e-5


# ---- hostile input -------------------------------------------------------------------------------


def test_hostile_requests_get_json_4xx_and_never_disturb_the_worker_or_good_neighbours(server, reference_encoder):
    corpus = cases(max_seq_tokens=reference_encoder.max_seq_length)
    pid_before = worker_pids(server)
    good_pairs = pair_pool(24, seed=1)
    expected = reference_encoder.encode(good_pairs).vectors

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            alone = [await post(session, server, c.body, c.content_type) for c in corpus]
            # All in flight at once, so TorchServe puts good and bad requests into the same batches.
            goods = [post(session, server, json.dumps({"inputs": list(p)}).encode()) for p in good_pairs]
            bads = [post(session, server, c.body, c.content_type) for c in corpus]
            mixed = await asyncio.gather(*goods, *bads)
            return alone, mixed

    alone, mixed = asyncio.run(scenario())
    for case, (status, payload, _) in zip(corpus, alone, strict=True):
        assert status == case.expect, (case.name, payload[:300])
        if case.frontend_only:
            continue  # Netty refuses bodies over max_request_size with a bare 413 before any Python runs
        if status >= 400:
            body = json.loads(payload)
            assert body["code"] == status and body["message"], (case.name, body)
    for (status, payload, _), vector in zip(mixed[:len(good_pairs)], expected, strict=True):
        assert status == 200 and check_vectors(payload, vector)
    for case, (status, _, _) in zip(corpus, mixed[len(good_pairs):], strict=True):
        assert status == case.expect, case.name
    assert worker_pids(server) == pid_before, "a request killed or restarted the worker"
    record("hostile", {"cases": len(corpus), "bad_cases": sum(c.expect >= 400 for c in corpus),
                       "sent_alone_and_mixed": 2 * len(corpus), "server_errors": 0,
                       "worker_restarts": 0})


# ---- sustained load ------------------------------------------------------------------------------


async def load(ts: TorchServe, pool, expected, seconds: float, concurrency: int, stats: dict,
               stop_event: asyncio.Event | None = None) -> None:
    """Concurrency-bounded closed loop; every 200 is checked against the vectors of its own request."""
    deadline = time.monotonic() + seconds
    rng = random.Random(7)

    async def client(session):
        while time.monotonic() < deadline and not (stop_event and stop_event.is_set()):
            picks = [rng.randrange(len(pool)) for _ in range(rng.choice((1, 1, 1, 3)))]
            single = len(picks) == 1 and rng.random() < 0.7
            body = {"inputs": list(pool[picks[0]])} if single else {"inputs": [list(pool[i]) for i in picks]}
            want = expected[picks[0]] if single else expected[picks]
            try:
                status, payload, seconds_taken = await post(session, ts, json.dumps(body).encode())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                stats["transport_errors"].append(repr(exc))
                continue
            stats["latencies"].append(seconds_taken)
            stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
            stats["pairs"] += len(picks)
            if status == 200 and not check_vectors(payload, want):
                stats["mixups"] += 1
            elif status != 200:
                stats["error_bodies"].setdefault(status, payload[:200].decode("utf-8", "replace"))
            stats["timeline"].append((time.monotonic(), status))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*[client(session) for _ in range(concurrency)])


def new_stats() -> dict:
    return {"latencies": [], "statuses": {}, "pairs": 0, "mixups": 0, "transport_errors": [], "timeline": [],
            "error_bodies": {}}


def test_sustained_load_at_concurrency_64_answers_everything_correctly(server, reference_encoder):
    pool = pair_pool(96, seed=2)
    expected = reference_encoder.encode(pool).vectors
    worker = psutil.Process(worker_pids(server)[0])
    asyncio.run(load(server, pool, expected, min(5.0, LOAD_SECONDS), 64, new_stats()))  # warm: allocator, caches
    rss_start = worker.memory_info().rss
    stats = new_stats()
    started = time.monotonic()
    asyncio.run(load(server, pool, expected, LOAD_SECONDS, 64, stats))
    elapsed = time.monotonic() - started
    rss_end = worker.memory_info().rss
    latencies = sorted(stats["latencies"])
    figures = {
        "seconds": round(elapsed, 1), "concurrency": 64, "requests": len(latencies), "pairs": stats["pairs"],
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "statuses": stats["statuses"], "mixups": stats["mixups"],
        "transport_errors": len(stats["transport_errors"]),
        "worker_rss_mb_start": round(rss_start / 2**20, 1), "worker_rss_mb_end": round(rss_end / 2**20, 1),
        "worker_rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
    }
    record("load", figures)
    assert stats["statuses"] == {200: len(latencies)}, stats["statuses"]
    assert stats["mixups"] == 0 and not stats["transport_errors"]
    assert len(latencies) > 100
    assert rss_end < 1.10 * rss_start, figures


# ---- faults --------------------------------------------------------------------------------------


def test_a_killed_worker_is_restarted_and_no_answer_is_ever_wrong(server, reference_encoder):
    pool = pair_pool(48, seed=3)
    expected = reference_encoder.encode(pool).vectors
    [old_pid] = worker_pids(server)
    stats = new_stats()
    observed: dict[str, float] = {}

    async def scenario():
        stop = asyncio.Event()
        traffic = asyncio.create_task(load(server, pool, expected, 120, 8, stats, stop))
        await asyncio.sleep(2)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        while True:  # the scripts' readiness check must say "not ready", then "ready" on a new worker
            states = await asyncio.to_thread(ready_states, server)
            if states != ["READY"]:
                observed.setdefault("not_ready_seen", time.monotonic() - killed_at)
            elif "not_ready_seen" in observed and (await asyncio.to_thread(worker_pids, server)) != [old_pid]:
                observed["ready_again"] = time.monotonic() - killed_at
                break
            if time.monotonic() - killed_at > 90:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(3)  # traffic after recovery must be all 200
        recovered_at = killed_at + observed.get("ready_again", 0)
        stop.set()
        await traffic
        return killed_at, recovered_at

    _, recovered_at = asyncio.run(scenario())
    assert "not_ready_seen" in observed and "ready_again" in observed, observed
    after = [status for t, status in stats["timeline"] if t > recovered_at + 1]
    failed = {s: n for s, n in stats["statuses"].items() if s != 200}
    record("worker_kill", {"recovery_s": round(observed["ready_again"], 2), "requests": len(stats["latencies"]),
                           "statuses": stats["statuses"], "mixups": stats["mixups"],
                           "requests_after_recovery": len(after), "error_bodies": stats["error_bodies"]})
    assert stats["mixups"] == 0
    # Only the requests in flight on the dead worker fail, with TorchServe's own 507 "Worker died.".
    assert set(failed) <= {500, 503, 507}, failed
    assert all("Worker died" in body for body in stats["error_bodies"].values()), stats["error_bodies"]
    assert sum(failed.values()) <= 64
    assert after and set(after) == {200}


def test_a_full_queue_answers_503_fast(model_dir, tmp_path, reference_encoder):
    store = tmp_path / "store"
    build_with_script(str(model_dir), MODEL, store, "--batch-size", "1", "--max-batch-delay", "0")
    heavy = [["Represent the document:", " ".join(random.Random(i).choices(WORDS, k=400))] for i in range(128)]
    body = json.dumps({"inputs": heavy}).encode()
    expected = reference_encoder.encode([tuple(p) for p in heavy]).vectors
    with running_torchserve(store, config={"job_queue_size": "2"}) as ts:
        register_with_script(ts, MODEL, "--workers", "1")

        async def burst():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                return await asyncio.gather(*[post(session, ts, body) for _ in range(24)])

        results = asyncio.run(burst())
    rejected = [seconds for status, _, seconds in results if status == 503]
    served = [(status, payload) for status, payload, _ in results if status == 200]
    record("full_queue", {"sent": len(results), "503": len(rejected), "200": len(served),
                          "median_503_ms": round(1000 * statistics.median(rejected), 1) if rejected else None})
    assert rejected and served
    assert {status for status, _, _ in results} <= {200, 503}
    assert statistics.median(rejected) < 1.0
    assert all(check_vectors(payload, expected) for _, payload in served)


def test_a_corrupt_model_fails_registration_clearly_and_the_server_keeps_serving(server, model_dir, store,
                                                                                 reference_encoder):
    broken_dir = store.parent / "broken-src"
    shutil.copytree(model_dir, broken_dir)
    weights = broken_dir / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:2048])
    build_with_script(str(broken_dir), "broken", store)
    started = time.monotonic()
    proc = register_with_script(server, "broken", "--workers", "1", "--timeout", "120", check=False)
    took = time.monotonic() - started
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "broken" in message and ("model_log" in message or "keep dying" in message), message
    assert took < 150
    listed = [m["modelName"] for m in server.call("GET", "/models", api="management").body["models"]]
    assert "broken" not in listed, "a model whose workers cannot load was left registered (crash loop)"
    good = server.call("POST", f"/predictions/{MODEL}", {"inputs": list(GOOD_PAIR)})
    assert good.status == 200 and check_vectors(json.dumps(good.body).encode(),
                                                reference_encoder.encode([tuple(GOOD_PAIR)]).vectors[0])
    record("corrupt_model", {"register_exit_code": proc.returncode, "seconds_to_refuse": round(took, 1)})


# ---- security ------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["inference", "management"])
@pytest.mark.parametrize("token", [False, "not-the-key"])
def test_apis_refuse_missing_or_wrong_tokens(server, api, token):
    path = f"/predictions/{MODEL}" if api == "inference" else "/models"
    body = {"inputs": list(GOOD_PAIR)} if api == "inference" else None
    resp = server.call("POST" if body else "GET", path, body, api=api, token=token)
    assert 400 <= resp.status < 500 and resp.status != 404, resp
    # ... and the right key of the OTHER api is not accepted either.
    keys = server.keys()
    other = keys.management if api == "inference" else keys.inference
    assert 400 <= server.call("POST" if body else "GET", path, body, api=api, token=other).status < 500


def non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outward interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_no_api_is_reachable_on_a_non_loopback_address(server):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    for port in server.ports.values():
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"port {port} answers on {address}"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/evil.mar", "https://example.com/evil.mar",
                                 "file:///etc/passwd", "/tmp/outside-the-store.mar", "../outside.mar"])
def test_registration_from_a_url_or_outside_the_model_store_is_refused(server, url, tmp_path):
    resp = server.call("POST", "/models?" + urllib.parse.urlencode(
        {"url": url, "model_name": "evil", "initial_workers": 1, "synchronous": "true"}), api="management")
    assert 400 <= resp.status < 500, resp
    listed = [m["modelName"] for m in server.call("GET", "/models", api="management").body["models"]]
    assert "evil" not in listed


def test_stop_script_stops_every_torchserve_process(store):
    with running_torchserve(store) as ts:
        register_with_script(ts, MODEL, "--workers", "1")
        processes = [psutil.Process(ts.pid), *psutil.Process(ts.pid).children(recursive=True)]
        assert len(processes) >= 2  # the Java frontend and its Python worker
        proc = run_script("stop.sh", "--timeout", "60", env=ts.env())
        assert proc.returncode == 0, proc.stderr
        _, alive = psutil.wait_procs(processes, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
