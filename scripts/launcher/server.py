"""A running TorchServe as an object: where it lives, how to call it, how to stop it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.launcher import mps
from scripts.launcher.config import base_url
from scripts.launcher.logs import recent
from scripts.launcher.processes import is_torchserve, pid_file, stop_process_tree
from scripts.launcher.registrar import Registrar, register
from scripts.launcher.rest import Keys, Response, read_keys, request


@dataclass
class Server:
    """A running TorchServe: where it lives, how to reach it, how to stop it."""

    workdir: Path  # its working directory: key_file.json is written here
    props: dict[str, str]  # the configuration it was started with
    pid: int  # the Java frontend
    tmpdir: Path  # its temp directory: pid file, worker sockets, extracted .mar files
    log_dir: Path
    config_file: Path
    started_s: float = field(default=0.0, compare=False)  # seconds start() took; 0 when attached

    @property
    def inference_url(self) -> str:
        return base_url(self.props, "inference")

    @property
    def management_url(self) -> str:
        return base_url(self.props, "management")

    @property
    def metrics_url(self) -> str:
        return base_url(self.props, "metrics")

    @property
    def model_store(self) -> Path:
        return Path(self.props.get("model_store", self.workdir / "model_store"))

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def keys(self) -> Keys:
        """The current tokens (TorchServe rewrites key_file.json at every start)."""
        return read_keys(self.key_file)

    def registrar(self, poll_s: float = 1.0) -> Registrar:
        return Registrar(self.management_url, self.keys().management, self.key_file, self.log_dir, poll_s)

    def call(self, method: str, path: str, body: Any = None, *, api: str = "inference",
             token: str | bool | None = True, timeout: float = 120.0) -> Response:
        """One HTTP call to an API with a JSON body; token=True sends the matching key, None/False none."""
        if token is True:
            keys = self.keys()
            token = keys.inference if api == "inference" else keys.management
        data = None if body is None else json.dumps(body).encode()
        return request(method, base_url(self.props, api) + path, token or None, timeout, body=data,
                       content_type="application/json" if data is not None else None)

    def register(self, name: str, workers: int = 1, *, timeout: float = 600.0, **options: Any) -> dict[str, Any]:
        """register() against this server's model store; ``options`` as for register()."""
        return register(self.registrar(), self.model_store, name, workers, timeout=timeout, **options)

    def wait_ready(self, name: str, workers: int = 1, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until NAME has exactly ``workers`` READY workers (e.g. a model loaded at start-up)."""
        return self.registrar().wait_ready(name, workers, time.monotonic() + timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the launcher's, the frontend's and the workers' logs."""
        return recent(self.log_dir, lines)

    def stop(self, timeout: float = 60.0) -> float:
        """Stop the frontend and its workers and wait until they are gone; returns seconds."""
        took = stop_process_tree(self.pid, timeout) if is_torchserve(self.pid) else 0.0
        pid_file(self.tmpdir).unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)  # its keys die with the server
        mps.stop(self.tmpdir)  # after the workers: MPS clients must be gone before the daemon quits
        return took


