"""Several GPUs of one host: one TorchServe per GPU (each pinned with CUDA_VISIBLE_DEVICES) behind one nginx.

``start_fleet`` starts the backends (balancer.plan_backends) and nginx in front of them, writes the one
inference key to WORKDIR/key_file.json in TorchServe's format (so the scripts, the client and the curl example
read it as usual) and a state file (WORKDIR/build/fleet.json) from which ``stop_fleet`` stops everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.launcher import balancer
from scripts.launcher.config import render_config
from scripts.launcher.errors import CtlError
from scripts.launcher.lifecycle import DEFAULT_LOG_CONFIG, stop
from scripts.launcher.lifecycle import start as start_one
from scripts.launcher.memory import Capacity
from scripts.launcher.server import Server

STATE_FILE = Path("build") / "fleet.json"


@dataclass
class Fleet:
    """The running backends and the nginx in front of them."""

    workdir: Path
    servers: list[Server]
    nginx_conf: Path
    url: str  # what clients call: nginx's inference address
    key: str | None

    def register(self, name: str, workers_per_gpu: int = 1, **options: Any) -> list[dict[str, Any]]:
        """Register NAME on every backend with the same workers and batching; waits until all are READY."""
        return [server.register(name, workers_per_gpu, **options) for server in self.servers]

    def stop(self) -> None:
        stop_fleet(self.workdir)


def start_fleet(workdir: Path, device_ids: Sequence[str], *, listen: str = "127.0.0.1:8080",
                first_port: int = 9100, overrides: Mapping[str, str] | None = None, overlays: tuple[Path, ...] = (),
                capacity: Capacity | None = None, token_auth: bool = True, python: str = sys.executable,
                use_mps: bool = False, log_config: Path = DEFAULT_LOG_CONFIG) -> Fleet:
    """Start one TorchServe per device of ``device_ids`` and nginx on ``listen``; stops all of it on failure."""
    workdir = Path(workdir).resolve()
    backends = balancer.plan_backends(device_ids, first_port, workdir / "build" / "fleet")
    balancer.nginx_binary()  # refuse before anything starts
    servers: list[Server] = []
    state = workdir / STATE_FILE
    state.parent.mkdir(parents=True, exist_ok=True)
    prefix = workdir / "build" / "nginx"
    try:
        for i, backend in enumerate(backends):
            state.write_text(json.dumps({"tmpdirs": [str(b.tmpdir) for b in backends], "nginx": None}))
            servers.append(start_one(
                workdir / "build" / "fleet" / f"work{i}", overrides={**(overrides or {}), **backend.overrides()},
                overlays=overlays, capacity=capacity, tmpdir=backend.tmpdir, log_dir=workdir / "logs" / f"gpu{i}",
                env={**backend.env()}, python=python, use_mps=use_mps, log_config=log_config))
        key = balancer.new_key() if token_auth else None
        props = render_config(overrides, overlays=overlays, capacity=capacity)[1]
        backend_keys = [server.keys().inference for server in servers]
        conf = balancer.write_config(balancer.render_nginx(backends, listen, prefix, props, key, backend_keys),
                                     prefix)
        state.write_text(json.dumps({"tmpdirs": [str(b.tmpdir) for b in backends], "nginx": str(conf),
                                     "management": [server.management_url for server in servers],
                                     "key_files": [str(server.key_file) for server in servers]}))
        balancer.start_nginx(conf)
    except BaseException:
        stop_fleet(workdir)
        raise
    key_file = workdir / "key_file.json"
    if key is not None:
        key_file.touch(mode=0o600)
        key_file.write_text(json.dumps({"inference": {"key": key}}))
    return Fleet(workdir, servers, conf, f"http://{listen}", key)


def stop_fleet(workdir: Path) -> bool:
    """Stop nginx, then every backend of the fleet started from ``workdir``; False if there was none."""
    state_file = Path(workdir) / STATE_FILE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return False
    errors = []
    if state.get("nginx"):
        try:
            balancer.stop_nginx(Path(state["nginx"]))
        except CtlError as e:
            errors.append(str(e))
    for tmpdir in state.get("tmpdirs", []):
        with contextlib.suppress(OSError):
            stop(Path(tmpdir))
    state_file.unlink(missing_ok=True)
    (Path(workdir) / "key_file.json").unlink(missing_ok=True)
    if errors:
        raise CtlError("; ".join(errors))
    return True


def management_urls(workdir: Path) -> list[tuple[str, Path]]:
    """The backends' management APIs and key files of the fleet started from ``workdir`` (none: no fleet)."""
    try:
        state = json.loads((Path(workdir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [(url, Path(key)) for url, key in zip(state.get("management", []), state.get("key_files", []),
                                                 strict=False)]


def device_ids(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs to spread over: CUDA_VISIBLE_DEVICES's entries, else every GPU nvidia-smi lists."""
    from scripts.launcher.workers import visible_device_ids, visible_gpus

    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return visible_device_ids(env["CUDA_VISIBLE_DEVICES"])
    return [str(i) for i in range(visible_gpus(env))]
