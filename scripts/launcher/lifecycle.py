"""Starting and stopping TorchServe: render the configuration, check Python and Java, start, wait, verify.

``start`` only says "up" when TorchServe answers AND every model the configuration loads at start-up
(``load_models``) is registered: in production mode nothing else could load it later.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scripts.launcher import mps
from scripts.launcher.config import BASE_CONFIG, REPO_ROOT, render_config
from scripts.launcher.errors import CtlError
from scripts.launcher.java import find_java
from scripts.launcher.logs import STDOUT_LOG, start_failure, worker_errors
from scripts.launcher.memory import Capacity
from scripts.launcher.processes import (
    pid_file,
    process_alive,
    process_cwd,
    running_pid,
    stop_engines,
    stop_process_tree,
)
from scripts.launcher.rest import read_keys, request
from scripts.launcher.server import Server

DEFAULT_LOG_CONFIG = REPO_ROOT / "config" / "log4j2.xml"
# Where `start` writes the rendered configuration, relative to TorchServe's working directory.
RENDERED_CONFIG = Path("build") / "config.properties"
START_TIMEOUT_S = 90.0


def check_python(python: str) -> None:
    """Refuse a Python without TorchServe (the ``ts`` package) before anything starts, saying which to use."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('ts') is None)"
    try:
        ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        raise CtlError(
            f"{python} has no TorchServe (the Python package ts), so it cannot start one. Use the project's "
            "environment: scripts/setup_venv.sh, then .venv/bin/python (scripts/serve.sh does this), or pass "
            "--python PATH (VENV=DIR for the scripts)."
        )


def startup_models(props: Mapping[str, str]) -> list[str] | None:
    """The model names ``load_models`` asks for (NAME=URL, or URL whose name is its stem); None for ALL/none."""
    value = props.get("load_models", "").strip()
    if not value or value.lower() == "all":
        return None
    names = []
    for entry in value.split(","):
        name, sep, _url = entry.strip().partition("=")
        names.append(name.strip() if sep else Path(name.strip()).name.removesuffix(".mar"))
    return [n for n in names if n]


def check_startup_models(server: Server) -> None:
    """Fail unless every model of ``load_models`` is registered (TorchServe logs a missing one and runs on).

    With ``load_models=ALL`` and the model API off, at least one model must have loaded.
    """
    resp = server.call("GET", "/models?limit=1000", api="management", timeout=30)
    if resp.status != 200 or not isinstance(resp.body, dict):
        raise CtlError(f"GET /models: HTTP {resp.status}: {resp.message()}")
    loaded = {m.get("modelName") for m in resp.body.get("models", [])}
    wanted = startup_models(server.props)
    store = server.props.get("model_store", "model_store")
    if wanted is None:
        production = server.props.get("enable_model_api", "false").lower() == "false"
        if production and server.props.get("load_models") and not loaded:
            raise CtlError(f"No model loaded from the model store {store} (load_models=ALL) and the model API "
                           f"is off, so none can be added. Build one there (scripts/build_archive.sh). "
                           f"{worker_errors(server.log_dir)}")
        return
    missing = [n for n in wanted if n not in loaded]
    if missing:
        raise CtlError(
            f"load_models names {', '.join(missing)}, which did not load (loaded: {sorted(loaded) or 'none'}). "
            f"Is its archive in the model store {store} (scripts/build_archive.sh --name NAME)? From the "
            f"frontend's log: {start_failure(server.log_dir)}"
        )


def start(
    workdir: Path = REPO_ROOT,
    *,
    base_config: Path = BASE_CONFIG,
    overrides: Mapping[str, str] | None = None,
    overlays: tuple[Path, ...] = (),
    capacity: Capacity | None = None,
    config_file: Path | None = None,
    log_dir: Path | None = None,
    tmpdir: Path | None = None,
    log_config: Path = DEFAULT_LOG_CONFIG,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = START_TIMEOUT_S,
    reuse: bool = False,
    use_mps: bool = False,
) -> Server:
    """Start TorchServe (``--start --ncs``) in ``workdir`` and wait until its management API answers.

    The configuration is ``base_config`` + ``overlays`` + ``overrides`` (any key: ports via port_overrides(),
    model_store, job_queue_size, enable_model_api ...), its frontend memory sized for ``capacity``
    (render_config), written to ``config_file`` (default: WORKDIR/build/config.properties). Logs go to
    ``log_dir`` (default: WORKDIR/logs), the pid file and worker sockets to ``tmpdir`` (default: the current
    temp directory; one TorchServe per temp directory). ``env`` adds environment variables for the frontend
    and, through it, the workers. ``use_mps`` starts a CUDA MPS daemon for its workers first (mps.py). With
    ``reuse``, a TorchServe of this temp directory started from ``workdir`` is returned instead of an error.
    On failure the server is stopped and CtlError carries the log lines that say why.
    """
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    log_dir = Path(log_dir) if log_dir else workdir / "logs"
    tmpdir = Path(tmpdir) if tmpdir else Path(tempfile.gettempdir())
    config_file = Path(config_file) if config_file else workdir / RENDERED_CONFIG
    if config_file.resolve() == Path(base_config).resolve():
        raise CtlError(f"The rendered configuration would overwrite its source {base_config}: pick another file.")
    text, props = render_config(overrides, base=Path(base_config), overlays=overlays, capacity=capacity)

    pid = running_pid(tmpdir)
    if pid is not None:
        where = process_cwd(pid)
        if reuse and where == workdir:
            return Server(workdir, props, pid, tmpdir, log_dir, config_file)
        raise CtlError(
            f"A TorchServe (pid {pid}) started from {where or 'another directory'} already runs for the temp "
            f"directory {tmpdir} (its keys are in that directory). Stop it with scripts/stop.sh, or start this "
            "one with another TMPDIR and other ports (TS_*_PORT variables)."
        )
    check_python(python)
    java_home = find_java({**os.environ, **(env or {})})
    if use_mps:
        mps.control_binary({**os.environ, **(env or {})})  # refuse before anything starts
    for path in (log_dir, tmpdir, config_file.parent):
        path.mkdir(parents=True, exist_ok=True)
    config_file.write_text(text)
    run_env = dict(os.environ)
    run_env.pop("TS_CONFIG_FILE", None)  # it would beat --ts-config
    run_env.update(env or {})
    if use_mps:
        run_env.update(mps.start(mps.for_server(tmpdir, log_dir), tmpdir, run_env))
    run_env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir), TMP=str(tmpdir), JAVA_HOME=str(java_home),
                   LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir))
    # The launcher returns at once and Java inherits its stdout: a file, never a pipe that Java holds open.
    with open(log_dir / STDOUT_LOG, "ab") as out:
        proc = subprocess.run(
            [python, "-m", "ts.model_server", "--start", "--ncs", "--ts-config", str(config_file),
             "--log-config", str(log_config)],
            cwd=workdir, env=run_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=120,
        )
    pid = running_pid(tmpdir)
    if proc.returncode != 0 or pid is None:
        if pid is not None:
            stop_process_tree(pid)
        mps.stop(tmpdir)
        raise CtlError(f"TorchServe did not start (launcher exit {proc.returncode}). {start_failure(log_dir)}")
    server = Server(workdir, props, pid, tmpdir, log_dir, config_file)
    try:
        wait_until_up(server.management_url, server.key_file, timeout - (time.monotonic() - started), pid)
    except CtlError as e:
        server.stop()
        raise CtlError(f"{e} {start_failure(log_dir)}") from None
    except KeyboardInterrupt:
        server.stop()
        raise
    try:
        check_startup_models(server)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - started
    return server


@contextlib.contextmanager
def running(workdir: Path = REPO_ROOT, **options: Any) -> Iterator[Server]:
    """start(workdir, **options) as a context: the server and all its workers are stopped at exit."""
    server = start(workdir, **options)
    try:
        yield server
    finally:
        server.stop()


def wait_until_up(management_url: str, key_file: Path, timeout: float, pid: int | None = None) -> None:
    """Wait until a starting TorchServe answers GET /models; fail early if process ``pid`` exits."""
    url = management_url.rstrip("/") + "/models"
    deadline = time.monotonic() + timeout
    while True:
        if pid and not process_alive(pid):
            raise CtlError("TorchServe exited during start-up.")
        try:
            # TorchServe writes key_file.json while it starts: it may be empty for a moment.
            if request("GET", url, read_keys(key_file).management, timeout=5).status == 200:
                return
        except (CtlError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise CtlError(f"TorchServe did not answer at {url} within {max(timeout, 0):.0f} s.")
        time.sleep(0.3)


def stop(tmpdir: Path | None = None, timeout: float = 60.0) -> tuple[int, float] | None:
    """Stop the TorchServe of this temp directory (and its MPS daemon); returns (pid, seconds), or None if
    none ran. Also removes the pid file and the key_file.json in TorchServe's working directory."""
    pid = running_pid(tmpdir)
    state_dir = pid_file(tmpdir).parent
    if pid is None:
        pid_file(tmpdir).unlink(missing_ok=True)  # stale: its server is gone
        mps.stop(state_dir)
        return None
    workdir = process_cwd(pid)
    took = stop_process_tree(pid, timeout)
    stop_engines(pid_file(tmpdir).parent)
    pid_file(tmpdir).unlink(missing_ok=True)
    if workdir is not None:
        (workdir / "key_file.json").unlink(missing_ok=True)
    mps.stop(state_dir)
    return pid, took
