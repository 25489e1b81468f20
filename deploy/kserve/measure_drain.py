#!/usr/bin/env python3
"""Count the requests lost when a serving container is stopped under load, the way Kubernetes stops a pod.

Starts docker/entrypoint.sh (the image's entry point) with a TorchServe config whose token auth is off (e.g. a
layout of make_storage.py), keeps CLIENTS concurrent clients sending KServe v1 requests, then sends SIGTERM to
the entry point as the kubelet does. Like a Service whose endpoints are updated after the SIGTERM, the clients
keep sending new requests for --routing-lag-s seconds, then stop; the requests already sent must still finish.
A request is lost when it was sent before the routing switched and did not get HTTP 200.

  deploy/kserve/measure_drain.py --ts-config LAYOUT/config/config.properties --model NAME --drain-delay-s 5

Prints one JSON object: requests sent, answered 200, lost (with the failures seen: ConnectionResetError =
cut while in flight, ConnectionRefusedError = sent to a server that had stopped listening), and the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "!")):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def post(url: str, body: bytes, timeout: float) -> str:
    """'200' or the failure: an HTTP status, or the connection error's name."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return str(resp.status)
    except urllib.error.HTTPError as error:
        return str(error.code)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return type(reason).__name__


def wait_ready(management: str, model: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{management}/models/{model}", timeout=3) as resp:
                if any(w["status"] == "READY" for w in json.loads(resp.read())[0]["workers"]):
                    return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"measure_drain: {model} not READY within {timeout:.0f} s")


def wait_wrapper(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if json.loads(resp.read()).get("ready"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"measure_drain: the KServe wrapper is not ready at {url} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = " (default: %(default)s)"
    parser.add_argument("--ts-config", type=Path, required=True, help="TorchServe config (token auth off)")
    parser.add_argument("--model", required=True, help="model name in the config's model_snapshot")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients" + d)
    parser.add_argument("--load-s", type=float, default=5.0, help="seconds of load before SIGTERM" + d)
    parser.add_argument("--routing-lag-s", type=float, default=1.0,
                        help="seconds new requests still arrive after SIGTERM" + d)
    parser.add_argument("--drain-delay-s", type=float, default=5.0, help="DRAIN_DELAY_S of the entry point" + d)
    parser.add_argument("--kserve", action="store_true",
                        help="start the entry point with --kserve and send to the KServe wrapper on :8080 "
                             "(needs KSERVE_WRAPPER/KSERVE_PYTHON as in docker/entrypoint.sh)")
    parser.add_argument("--interval-s", type=float, default=0.05,
                        help="least time between two sends of one client (refused requests are not retried)" + d)
    args = parser.parse_args()

    props = read_properties(args.ts_config)
    if props.get("disable_token_authorization") != "true":
        parser.error("use a config with disable_token_authorization=true (make_storage.py's default)")
    base = "http://127.0.0.1:8080" if args.kserve else props["inference_address"]
    url = f"{base}/v1/models/{args.model}:predict"
    body = json.dumps({"instances": [["Represent the document:", "word " * 40]]}).encode()
    workdir = Path(tempfile.mkdtemp(prefix="drain-"))
    (workdir / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(workdir / "tmp"), LOG_LOCATION=str(workdir / "logs"),
               METRICS_LOCATION=str(workdir / "logs"), DRAIN_DELAY_S=str(args.drain_delay_s),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    mode = ["--kserve"] if args.kserve else []
    entry = subprocess.Popen([str(REPO / "docker" / "entrypoint.sh"), *mode, "--ts-config", str(args.ts_config),
                              "--log-config", str(REPO / "config" / "log4j2.xml")],
                             cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(props["management_address"], args.model, 300)
        if args.kserve:  # the wrapper opens its port once it has seen a READY worker
            wait_wrapper(f"http://127.0.0.1:8080/v1/models/{args.model}", 300)
        records: list[tuple[float, str]] = []  # (send time, outcome)
        lock = threading.Lock()
        routing_switched = threading.Event()

        def client() -> None:
            while not routing_switched.is_set():
                sent = time.monotonic()
                outcome = post(url, body, timeout=120)
                with lock:
                    records.append((sent, outcome))
                time.sleep(max(0.0, sent + args.interval_s - time.monotonic()))

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.load_s)
        sigterm_at = time.monotonic()
        entry.send_signal(signal.SIGTERM)
        time.sleep(args.routing_lag_s)
        routing_switched.set()
        for thread in threads:
            thread.join()
        entry.wait(timeout=300)
        stopped_after = time.monotonic() - sigterm_at
    finally:
        if entry.poll() is None:
            entry.kill()
    failures: dict[str, int] = {}
    for _, outcome in records:
        if outcome != "200":
            failures[outcome] = failures.get(outcome, 0) + 1
    after_sigterm = [r for r in records if r[0] >= sigterm_at]
    print(json.dumps({
        "through": "kserve wrapper" if args.kserve else "torchserve",
        "clients": args.clients, "drain_delay_s": args.drain_delay_s, "routing_lag_s": args.routing_lag_s,
        "sent": len(records), "ok": sum(o == "200" for _, o in records), "lost": sum(failures.values()),
        "failures": failures, "sent_after_sigterm": len(after_sigterm),
        "lost_after_sigterm": sum(o != "200" for _, o in after_sigterm),
        "entrypoint_exit_code": entry.returncode, "stopped_after_s": round(stopped_after, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
