"""Build a KServe storage layout from a real archive and start TorchServe from it, as the pod would.

The pod runs ``torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties``; here the layout's own directory stands in
for /mnt/models, and the ports are free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from scripts import torchserve_ctl
from tests.torchserve_harness import REPO, VENV, TorchServe, free_ports

MAKE_STORAGE = REPO / "deploy" / "kserve" / "make_storage.py"
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def make_storage(archive: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/kserve/make_storage.py (never raises on a non-zero exit)."""
    return subprocess.run([sys.executable, str(MAKE_STORAGE), "--archive", str(archive), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120)


def layout_port_args(ports: dict[str, int], mount: Path) -> list[str]:
    """make_storage.py flags that put a layout on the given loopback ports and mount path."""
    return ["--mount-path", str(mount),
            "--inference-address", f"http://127.0.0.1:{ports['inference']}",
            "--management-address", f"http://127.0.0.1:{ports['management']}",
            "--metrics-address", f"http://127.0.0.1:{ports['metrics']}",
            "--grpc-inference-port", str(ports["grpc_inference"]),
            "--grpc-management-port", str(ports["grpc_management"])]


def free_layout_ports() -> dict[str, int]:
    return dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))


def wait_for_ready_worker(ts: TorchServe, name: str, token: bool, timeout: float = 180.0) -> dict:
    """Poll GET /models/<name> (what KServe's wrapper and our readiness probe do) until a worker is READY."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not torchserve_ctl.process_alive(ts.pid):
            raise AssertionError("TorchServe exited during start-up:\n" + ts.log_tail())
        with contextlib.suppress(torchserve_ctl.CtlError, TimeoutError, ValueError, OSError):
            resp = ts.call("GET", f"/models/{name}", api="management", token=True if token else None, timeout=5)
            if resp.status == 200 and any(w["status"] == "READY" for w in resp.body[0]["workers"]):
                return resp.body[0]
        time.sleep(0.5)
    raise AssertionError(f"no READY worker for {name} within {timeout:.0f} s:\n{ts.log_tail()}")


@contextlib.contextmanager
def serve_layout(layout: Path, ports: dict[str, int], name: str, *, token: bool) -> Iterator[TorchServe]:
    """Start TorchServe from layout/config/config.properties; stop it (and its workers) at exit."""
    workdir = Path(tempfile.mkdtemp(prefix="ts-kserve-"))
    tmpdir = workdir / "tmp"
    log_dir = workdir / "logs"
    tmpdir.mkdir()
    log_dir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), TEMP=str(tmpdir), TMP=str(tmpdir),
               LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir))
    with open(log_dir / "torchserve_stdout.log", "ab") as out:
        subprocess.run([str(VENV / "bin" / "torchserve"), "--start", "--ncs",
                        "--model-store", str(layout / "model-store"),
                        "--ts-config", str(layout / "config" / "config.properties"),
                        "--log-config", str(REPO / "config" / "log4j2.xml")],
                       cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60)
    pid_file = tmpdir / ".model_server.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    config = layout / "config" / "config.properties"
    pid = int(pid_file.read_text().strip())
    ts = TorchServe(workdir=workdir, props=torchserve_ctl.read_properties(config), pid=pid,
                    tmpdir=tmpdir, log_dir=log_dir, config_file=config, ports=ports)
    failed = False
    try:
        wait_for_ready_worker(ts, name, token)
        yield ts
    except BaseException:
        failed = True
        print(ts.log_tail(), file=sys.stderr)
        raise
    finally:
        ts.stop()
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
