"""A bounded HTTP load generator: N concurrent clients for a fixed time, spread over several processes.

Each client (aiohttp, keep-alive) sends one request, waits for the whole response body, sends the next.
Throughput counts only requests sent after the warm-up and finished before the end of the window; latency
is send to last byte. One response per process is checked (a vector of the right size, decoded the way the
request asked for) so that a server answering errors or garbage fast cannot look good.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

Pair = tuple[str, str]


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
    """'1x1:8,256x1:10,16x64:10' -> concurrency x pairs-per-request : seconds."""
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
    gpu: str = "-"  # GPU utilisation seen during the window, filled in by the caller when it samples it
    gpu_memory: tuple[float, int] | None = None  # (MiB, processes holding GPU memory) after the loads

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.window if self.window else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.window if self.window else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client_process(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_client(spec))


def _check(payload: bytes, spec: dict[str, Any]) -> None:
    if spec["encoding_format"] == "raw":  # little-endian float32 rows (Accept: application/octet-stream)
        size = len(payload) // 4 // spec["pairs_per_request"]
        if size != spec["dimension"]:
            raise AssertionError(f"raw response has {size} floats per row, not {spec['dimension']}")
        return
    parsed = json.loads(payload)
    vector = parsed if spec["pairs_per_request"] == 1 else parsed[0]
    size = len(base64.b64decode(vector)) // 4 if spec["encoding_format"] == "base64" else len(vector)
    if size != spec["dimension"]:
        raise AssertionError(f"response vector has {size} values, not {spec['dimension']}")


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    bodies: list[bytes] = spec["bodies"]
    start_at, measure_from, stop_at = spec["start_at"], spec["measure_from"], spec["stop_at"]
    headers = {"Authorization": f"Bearer {spec['key']}", "Content-Type": "application/json"}
    if spec["encoding_format"] == "raw":
        headers["Accept"] = "application/octet-stream"
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
                if not out["checked"]:
                    _check(payload, spec)
                    out["checked"] = True
                if sent >= measure_from and done <= stop_at:
                    out["latencies"].append(1000.0 * (done - sent))
                    out["requests"] += 1
                    out["pairs"] += spec["pairs_per_request"]

        await asyncio.gather(*(user() for _ in range(spec["concurrency"])))
    return out


def request_bodies(pairs: Sequence[Pair], pairs_per_request: int, start: int, count: int,
                   encoding_format: str = "float") -> list[bytes]:
    """``count`` request bodies of ``pairs_per_request`` consecutive pairs each, from pair index ``start`` on."""
    bodies = []
    for index in range(start, start + count):
        chunk = [pairs[(index * pairs_per_request + j) % len(pairs)] for j in range(pairs_per_request)]
        inputs: Any = list(chunk[0]) if pairs_per_request == 1 else [list(p) for p in chunk]
        body: dict[str, Any] = {"inputs": inputs}
        if encoding_format not in ("float", "raw"):  # raw is asked for by a request header
            body["encoding_format"] = encoding_format
        bodies.append(json.dumps(body).encode())
    return bodies


def run_load(url: str, key: str, load: Load, pairs: Sequence[Pair], processes: int, warmup: float,
             dimension: int, timeout: float = 600.0, encoding_format: str = "float") -> LoadResult:
    """Drive ``load`` against ``url`` from several processes; pairs/s counts requests completed in the window."""
    n_procs = max(1, min(processes, load.concurrency))
    per_proc = [load.concurrency // n_procs + (1 if i < load.concurrency % n_procs else 0) for i in range(n_procs)]
    start_at = time.monotonic() + 2.0  # lets every process start before the first request
    measure_from = start_at + warmup
    stop_at = measure_from + load.seconds
    specs = [{"url": url, "key": key, "concurrency": concurrency, "start_at": start_at,
              "measure_from": measure_from, "stop_at": stop_at, "pairs_per_request": load.pairs_per_request,
              "dimension": dimension, "timeout": timeout, "encoding_format": encoding_format,
              "bodies": request_bodies(pairs, load.pairs_per_request, index * 997, 512, encoding_format)}
             for index, concurrency in enumerate(per_proc)]
    with multiprocessing.get_context("spawn").Pool(n_procs) as pool:
        outputs = pool.map(_client_process, specs)
    result = LoadResult(load, window=load.seconds)
    for out in outputs:
        result.requests += out["requests"]
        result.pairs += out["pairs"]
        result.errors += out["errors"]
        result.latencies_ms.extend(out["latencies"])
        result.first_error = result.first_error or out["first_error"]
    return result
