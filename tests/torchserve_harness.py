"""A real TorchServe for tests, plus helpers that drive the repo's scripts against it.

``running_torchserve()`` starts TorchServe 0.12 through the repository's launcher
(scripts/launcher/, the code scripts/serve.sh runs) on FREE loopback ports (HTTP and gRPC)
in a temporary working directory with its own TMPDIR (TorchServe allows one server per TMPDIR: pid
file, worker sockets, extracted archives). It yields a ``TorchServe`` with base URLs and the keys from
key_file.json, and stops it and every worker at exit, on failure too.

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
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import launcher
from scripts.launcher import Keys, Response, Server, free_ports, process_alive

__all__ = ["REPO", "Keys", "Response", "TorchServe", "build_with_script", "free_ports", "post_bytes",
           "process_alive", "register_with_script", "run_script", "running_torchserve", "scripts_env"]

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# The scripts use the environment the tests run in (VENV), whatever its location.
VENV = Path(sys.prefix)
START_TIMEOUT_S = 90.0


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
class TorchServe(Server):
    """A running test TorchServe: the launcher's Server plus its ports and the scripts' environment."""

    ports: dict[str, int] = field(default_factory=dict)

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

    def describe(self, name: str) -> dict[str, Any]:
        """GET /models/NAME of a registered model (asserts it is registered)."""
        resp = self.call("GET", f"/models/{name}", api="management")
        assert resp.status == 200, resp
        return resp.body[0]


@contextlib.contextmanager
def running_torchserve(model_store: Path | None = None, *, config: Mapping[str, str] | None = None,
                       keep_workdir: bool = False) -> Iterator[TorchServe]:
    """Start TorchServe as scripts/serve.sh does, but on free ports in a temp dir; stop it at exit.

    ``config`` overrides config.properties keys (e.g. {"enable_model_api": "false"}).
    """
    workdir = Path(tempfile.mkdtemp(prefix="ts-test-"))
    store = Path(model_store) if model_store else workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(launcher.PORT_NAMES, free_ports(len(launcher.PORT_NAMES)), strict=True))
    overrides = {**launcher.port_overrides(ports), "model_store": str(store), **(config or {})}
    failed = False
    try:
        server = launcher.start(workdir, overrides=overrides, config_file=workdir / "config.properties",
                                      log_dir=workdir / "logs", tmpdir=workdir / "tmp", timeout=START_TIMEOUT_S)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    ts = TorchServe(**{f: getattr(server, f) for f in ("workdir", "props", "pid", "tmpdir", "log_dir",
                                                         "config_file", "started_s")}, ports=ports)
    try:
        yield ts
    except BaseException:
        failed = True
        print(ts.log_tail(), file=sys.stderr)  # pytest shows it with the failure
        raise
    finally:
        ts.stop()
        if not (keep_workdir or failed):
            shutil.rmtree(workdir, ignore_errors=True)


def build_with_script(model: str, name: str, store: Path, *args: str,
                      env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """scripts/build_archive.sh --model MODEL --name NAME --store STORE ARGS...; asserts success."""
    proc = run_script("build_archive.sh", "--model", model, "--name", name, "--store", str(store), *args, env=env)
    assert proc.returncode == 0, f"build_archive.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def register_with_script(ts: TorchServe, name: str, *args: str,
                         check: bool = True) -> subprocess.CompletedProcess[str]:
    """scripts/register.sh --name NAME ARGS... against ``ts``; asserts success unless check=False."""
    proc = run_script("register.sh", "--name", name, *args, env=ts.env())
    if check:
        assert proc.returncode == 0, f"register.sh failed:\n{proc.stdout}\n{proc.stderr}\n{ts.log_tail()}"
    return proc


@contextlib.contextmanager
def served_models(store: Path, models: Mapping[str, tuple[Path, Sequence[str]]], *,
                  config: Mapping[str, str] | None = None) -> Iterator[TorchServe]:
    """Archives built with build_archive.sh (name -> (model directory, its build options)) into ``store``,
    served by one TorchServe (``config`` overrides) with one worker each, registered with register.sh."""
    for name, (model_dir, args) in models.items():
        build_with_script(str(model_dir), name, store, *args)
    with running_torchserve(store, config=config) as ts:
        for name in models:
            register_with_script(ts, name, "--workers", "1")
        yield ts


def post_bytes(ts: Server, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
    """POST ``body`` exactly as given (``Server.call`` sends JSON of a value) to the inference API with the
    inference key: (status, the JSON answer), error statuses included."""
    request = urllib.request.Request(f"http://127.0.0.1:{ts.ports['inference']}{path}", data=body,
                                     headers={"Authorization": f"Bearer {ts.keys().inference}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
