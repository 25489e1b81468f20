"""Registering, scaling and waiting for a model's workers through TorchServe's management API."""

from __future__ import annotations

import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.launcher.config import REPO_ROOT
from scripts.launcher.errors import CtlError, ServerDown
from scripts.launcher.logs import worker_errors
from scripts.launcher.rest import Response, request

DEFAULT_LOG_DIR = REPO_ROOT / "logs"


def check_reachable(name: str, info: dict[str, Any], workers: int) -> None:
    """Fail at once when the model's worker range excludes ``workers``: TorchServe would never start them
    (e.g. waiting for 4 workers of an archive built for 1, loaded at start-up in production mode)."""
    low, high = info.get("minWorkers"), info.get("maxWorkers")
    if isinstance(low, int) and isinstance(high, int) and not low <= workers <= high:
        raise CtlError(
            f"{name} runs {low} to {high} worker(s) (its model-config.yaml minWorkers/maxWorkers), so "
            f"{workers} will never be READY. Wait for {low} (--workers {low}), scale it with "
            f"scripts/register.sh --name {name} --workers {workers}, or rebuild the archive with --workers {workers}."
        )


@dataclass
class Registrar:
    """Registers / scales one model through the management API and waits for its workers."""

    management_url: str
    token: str | None
    key_file: Path
    log_dir: Path = DEFAULT_LOG_DIR
    poll_s: float = 1.0

    def call(self, method: str, path: str, timeout: float = 30.0) -> Response:
        """One management call; a refused token or a disabled model API becomes a CtlError that says why."""
        resp = request(method, self.management_url + path, self.token, timeout)
        if resp.status == 400 and "Token" in resp.message():
            hint = (
                f"no key file at {self.key_file}" if self.token is None
                else f"the management key in {self.key_file} was rejected"
            )
            raise CtlError(
                f"TorchServe refused the call: {hint}. key_file.json is written in the directory TorchServe "
                "was started from (the repo root for scripts/serve.sh) and changes at every start; keys "
                "also expire (token_expiration_min). Pass --key-file PATH, or restart with scripts/serve.sh."
            )
        if resp.status == 405:
            raise CtlError(
                f"{method} {path}: 405, the model API is disabled in this TorchServe. Set "
                "enable_model_api=true in config.properties (scripts/serve.sh does) and restart "
                "(scripts/stop.sh; scripts/serve.sh)."
            )
        return resp

    def describe(self, name: str) -> dict[str, Any] | None:
        """GET /models/NAME: the model's description, or None when it is not registered."""
        resp = self.call("GET", f"/models/{urllib.parse.quote(name)}")
        if resp.status == 404:
            return None
        if resp.status != 200 or not isinstance(resp.body, list) or not resp.body:
            raise CtlError(f"GET /models/{name}: HTTP {resp.status}: {resp.message()}")
        return resp.body[0]

    def log_hint(self) -> str:
        """The distinct error lines at the end of the workers' log."""
        return worker_errors(self.log_dir)

    def post_model(self, name: str, url: str, workers: int, timeout: float,
                 batch_size: int | None = None, max_batch_delay: int | None = None) -> None:
        """POST /models for the archive ``url`` of the model store; a failed one is unregistered again."""
        query = {"url": url, "model_name": name, "initial_workers": workers, "synchronous": "true"}
        if batch_size is not None:
            query["batch_size"] = batch_size
        if max_batch_delay is not None:
            query["max_batch_delay"] = max_batch_delay
        print(f"Registering {name} from {url} with {workers} worker(s) (model load may take minutes) ...",
              file=sys.stderr)
        try:
            resp = self.call("POST", "/models?" + urllib.parse.urlencode(query), timeout=timeout)
        except TimeoutError:
            print(f"No answer to the registration after {timeout:.0f} s; checking the workers ...",
                  file=sys.stderr)
            return
        if resp.status == 409:
            print(f"{name} was registered meanwhile; scaling it instead.", file=sys.stderr)
            return
        if resp.status == 404:
            raise CtlError(
                f"TorchServe cannot find {url!r} in its model store ({resp.message()}). Build it there: "
                f"scripts/build_archive.sh --name {name} (the store must be TorchServe's model_store)."
            )
        if resp.status >= 300:
            # A registration whose workers fail to start leaves the model registered with 0 workers;
            # remove it so that a fixed archive can be registered by simply running this again.
            cleanup = ""
            if self.describe(name) is not None:
                self.unregister(name, timeout=60)
                cleanup = " (unregistered it again)"
            raise CtlError(
                f"Registering {name} failed{cleanup}: HTTP {resp.status}: {resp.message()}\n{self.log_hint()}"
            )

    def scale(self, name: str, workers: int, timeout: float) -> None:
        """Pin the model to exactly ``workers`` workers (min = max)."""
        query = urllib.parse.urlencode({"min_worker": workers, "max_worker": workers, "synchronous": "true"})
        try:
            resp = self.call("PUT", f"/models/{urllib.parse.quote(name)}?{query}", timeout=timeout)
        except TimeoutError:
            return
        if resp.status >= 300:
            raise CtlError(f"Scaling {name} to {workers} worker(s) failed: HTTP {resp.status}: "
                           f"{resp.message()}\n{self.log_hint()}")

    def unregister(self, name: str, timeout: float) -> None:
        """DELETE /models/NAME (a model that is not registered is fine)."""
        resp = self.call("DELETE", f"/models/{urllib.parse.quote(name)}?synchronous=true", timeout=timeout)
        if resp.status >= 300 and resp.status != 404:
            raise CtlError(f"Unregistering {name} failed: HTTP {resp.status}: {resp.message()}")

    def wait_ready(self, name: str, workers: int, deadline: float) -> dict[str, Any]:
        """Wait until exactly ``workers`` workers are READY (``deadline``: time.monotonic()); fail early
        on a crash loop."""
        seen_pids: set[int] = set()
        while True:
            info = self.describe(name)
            if info is None:
                raise CtlError(f"{name} is not registered (or was unregistered while waiting for its workers).")
            states = [w.get("status") for w in info.get("workers", [])]
            seen_pids |= {w["pid"] for w in info.get("workers", []) if isinstance(w.get("pid"), int)
                          and w["pid"] > 0}
            if len(states) == workers and all(s == "READY" for s in states):
                return info
            check_reachable(name, info, workers)
            restarts = len(seen_pids) - workers
            if restarts >= 3:
                raise CtlError(
                    f"The workers of {name} keep dying ({restarts} restarts, states {states}): the handler "
                    f"fails to load. {self.log_hint()}"
                )
            if time.monotonic() > deadline:
                raise CtlError(
                    f"{name}: {states.count('READY')} of {workers} worker(s) READY after the timeout "
                    f"(states: {states}). A big model may need longer (--timeout; the archive's "
                    f"startupTimeout). {self.log_hint()}"
                )
            time.sleep(self.poll_s)


def find_archive(store: Path, name: str) -> str | None:
    """The registration url for NAME in a local model store: NAME (no-archive dir) or NAME.mar."""
    if (store / name / "MAR-INF" / "MANIFEST.json").is_file():
        return name
    if (store / f"{name}.mar").is_file():
        return f"{name}.mar"
    return None


def register(registrar: Registrar, store: Path, name: str, workers: int = 1, *, timeout: float = 600.0,
             archive: str | None = None, batch_size: int | None = None, max_batch_delay: int | None = None,
             reregister: bool = False) -> dict[str, Any]:
    """Register NAME from ``store`` (or scale it if registered) to exactly ``workers`` READY workers.

    Idempotent. Returns the model's description once its workers are READY; raises CtlError with
    what to do when the server is down, the archive missing, batching differs or the workers fail.
    """
    if workers < 0:
        raise CtlError(f"--workers must be >= 0, not {workers}.")
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    try:
        info = registrar.describe(name)
    except ServerDown as e:
        raise CtlError(f"{e} Start it with scripts/serve.sh (or pass --url if it runs elsewhere).") from None
    if info is not None and reregister:
        print(f"Unregistering {name} to register it again ...", file=sys.stderr)
        registrar.unregister(name, timeout=left())
        info = None
    if info is None:
        url = archive or find_archive(store, name)
        if url is None:
            raise CtlError(
                f"No archive for {name!r} in the model store {store} (neither {name}/ nor {name}.mar). "
                f"Build it: scripts/build_archive.sh --model M --name {name}"
            )
        registrar.post_model(name, url, workers, left(), batch_size, max_batch_delay)
        info = registrar.describe(name)
        if info is None:
            raise CtlError(f"{name} is not registered after the registration call. {registrar.log_hint()}")
    else:
        mismatched = [
            f"{label} {info.get(key)} (asked: {want})"
            for label, key, want in (("batch size", "batchSize", batch_size),
                                     ("max batch delay", "maxBatchDelay", max_batch_delay))
            if want is not None and info.get(key) != want
        ]
        if mismatched:
            raise CtlError(
                f"{name} is already registered with {', '.join(mismatched)}; TorchServe cannot change "
                "batching of a registered model. Re-run with --reregister (unregisters, then registers; "
                "requests fail meanwhile), or drop the flag to keep the current batching."
            )
        print(f"{name} is already registered; making sure it runs {workers} worker(s).", file=sys.stderr)
    # yaml minWorkers/maxWorkers override initial_workers: pin the count explicitly either way.
    states = [w.get("status") for w in info.get("workers", [])]
    if len(states) != workers or info.get("minWorkers") != workers or info.get("maxWorkers") != workers:
        registrar.scale(name, workers, left())
    return registrar.wait_ready(name, workers, deadline)

