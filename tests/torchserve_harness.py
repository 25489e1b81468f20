"""A real TorchServe for tests, plus helpers that drive the repo's scripts against it.

``running_torchserve()`` starts TorchServe 0.12 on FREE loopback ports (HTTP and gRPC) in a temporary
working directory with its own TMPDIR (TorchServe allows one server per TMPDIR: pid file, worker
sockets, extracted archives), using a config rendered from the repo's config.properties exactly as
scripts/serve.sh does. It yields a ``TorchServe`` with base URLs and the keys from key_file.json, and
stops it fully at exit, on failure too (scripts/stop.sh, then SIGKILL for anything left).

    with running_torchserve(store) as ts:
        build_with_script("demo", "demo", store)
        register_with_script(ts, "demo", "--workers", "1")
        ts.call("POST", "/predictions/demo", {"inputs": ["Represent the title:", "..."]})
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import torchserve_ctl
from scripts.torchserve_ctl import Keys, Response, process_alive

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# The scripts use the environment the tests run in (VENV), whatever its location.
VENV = Path(sys.prefix)
START_TIMEOUT_S = 90.0


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def scripts_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for running scripts/*.sh from tests: this venv plus ``extra``."""
    env = dict(os.environ, VENV=str(VENV))
    env.update(extra or {})
    return env


def run_script(script: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 900,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run scripts/<script> and capture its output (never raises on a non-zero exit)."""
    return subprocess.run([str(SCRIPTS / script), *args], env=scripts_env(env), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class TorchServe:
    """A running TorchServe: where it lives and how to reach it."""

    workdir: Path
    model_store: Path
    tmpdir: Path
    ports: dict[str, int]
    pid: int
    props: dict[str, str] = field(default_factory=dict)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def keys(self) -> Keys:
        return torchserve_ctl.read_keys(self.key_file)

    def env(self) -> dict[str, str]:
        """Environment that points scripts/register.sh, stop.sh ... at this server."""
        return {
            "TS_INFERENCE_PORT": str(self.ports["inference"]),
            "TS_MANAGEMENT_PORT": str(self.ports["management"]),
            "TS_METRICS_PORT": str(self.ports["metrics"]),
            "TS_GRPC_INFERENCE_PORT": str(self.ports["grpc_inference"]),
            "TS_GRPC_MANAGEMENT_PORT": str(self.ports["grpc_management"]),
            "TS_MODEL_STORE": str(self.model_store),
            "TS_KEY_FILE": str(self.key_file),
            "LOG_LOCATION": str(self.log_dir),
            "TMPDIR": str(self.tmpdir),
        }

    def call(self, method: str, path: str, body: Any = None, *, api: str = "inference",
             token: str | bool | None = True, timeout: float = 120.0) -> Response:
        """One HTTP call to the inference/management API; token=True uses the matching key."""
        if token is True:
            keys = self.keys()
            token = keys.inference if api == "inference" else keys.management
        base = {"inference": self.inference_url, "management": self.management_url,
                "metrics": self.metrics_url}[api]
        data = None if body is None else json.dumps(body).encode()
        return torchserve_ctl.request(method, base + path, token or None, timeout, body=data,
                                      content_type="application/json" if data is not None else None)

    def describe(self, name: str) -> dict[str, Any]:
        resp = self.call("GET", f"/models/{name}", api="management")
        assert resp.status == 200, resp
        return resp.body[0]

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in ("torchserve_stdout.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / log
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(out)


def _process_tree(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def stop_torchserve(ts: TorchServe) -> None:
    """Stop with scripts/stop.sh (the code under test); SIGKILL whatever survives it."""
    children = _process_tree(ts.pid)
    with contextlib.suppress(Exception):
        run_script("stop.sh", "--timeout", "60", env=ts.env(), timeout=120)
    for pid in [ts.pid, *children]:
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_torchserve(model_store: Path | None = None, *, config: Mapping[str, str] | None = None,
                       keep_workdir: bool = False) -> Iterator[TorchServe]:
    """Start TorchServe as scripts/serve.sh does, but on free ports in a temp dir; stop it at exit.

    ``config`` overrides config.properties keys (e.g. {"enable_model_api": "false"}).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ts-test-"))
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    store = Path(model_store) if model_store else workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    names = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    overrides = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(store),
        **(config or {}),
    }
    text, props = torchserve_ctl.render_config(overrides)
    (workdir / "config.properties").write_text(text)
    log_dir = workdir / "logs"
    log_dir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), TEMP=str(tmpdir), TMP=str(tmpdir),
               LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir))
    with open(log_dir / "torchserve_stdout.log", "ab") as out:
        subprocess.run(
            [str(VENV / "bin" / "torchserve"), "--start", "--ncs", "--ts-config", "config.properties",
             "--log-config", str(REPO / "config" / "log4j2.xml")],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=60,
        )
    pid_file = tmpdir / ".model_server.pid"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    ts = TorchServe(workdir=workdir, model_store=store, tmpdir=tmpdir, ports=ports,
                    pid=int(pid_file.read_text().strip()), props=props)
    failed = False
    try:
        torchserve_ctl.wait_until_up(ts.management_url, ts.key_file, deadline - time.monotonic(), ts.pid)
        yield ts
    except BaseException:
        failed = True
        print(ts.log_tail(), file=sys.stderr)  # pytest shows it with the failure
        raise
    finally:
        stop_torchserve(ts)
        if not (keep_workdir or failed):
            shutil.rmtree(workdir, ignore_errors=True)


def build_with_script(model: str, name: str, store: Path, *args: str,
                      env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """scripts/build_mar.sh --model MODEL --name NAME --store STORE ARGS...; asserts success."""
    proc = run_script("build_mar.sh", "--model", model, "--name", name, "--store", str(store), *args, env=env)
    assert proc.returncode == 0, f"build_mar.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def register_with_script(ts: TorchServe, name: str, *args: str,
                         check: bool = True) -> subprocess.CompletedProcess[str]:
    """scripts/register.sh --name NAME ARGS... against ``ts``; asserts success unless check=False."""
    proc = run_script("register.sh", "--name", name, *args, env=ts.env())
    if check:
        assert proc.returncode == 0, f"register.sh failed:\n{proc.stdout}\n{proc.stderr}\n{ts.log_tail()}"
    return proc
