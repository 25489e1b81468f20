"""Talk to a local TorchServe 0.12: its configuration, its token keys and its management API.

Used by scripts/serve.sh, scripts/register.sh and the test harness (tests/torchserve_harness.py).
Standard library only, so it runs before anything but Python is installed.

Subcommands:
  render-config  write the effective config.properties (repo file + port/store overrides from the env)
  get            print one property of the effective configuration (e.g. model_store)
  archive        print the path of a model's archive in the model store (exit 1: none)
  wait-up        wait until a starting TorchServe answers
  register       register a model (or scale an already registered one) and wait for its READY workers
  example        print (and optionally run) a curl call of the model with the inference token
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "config.properties"
DEFAULT_KEY_FILE = REPO_ROOT / "key_file.json"
DEFAULT_LOG_DIR = REPO_ROOT / "logs"

# Environment variable -> (config key, value template). Addresses stay on loopback.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TS_INFERENCE_PORT": ("inference_address", "http://127.0.0.1:{}"),
    "TS_MANAGEMENT_PORT": ("management_address", "http://127.0.0.1:{}"),
    "TS_METRICS_PORT": ("metrics_address", "http://127.0.0.1:{}"),
    "TS_GRPC_INFERENCE_PORT": ("grpc_inference_port", "{}"),
    "TS_GRPC_MANAGEMENT_PORT": ("grpc_management_port", "{}"),
    "TS_MODEL_STORE": ("model_store", "{}"),
}
# Keys holding paths: made absolute (against the repo) so the rendered file works from any directory.
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


def render_config(
    overrides: Mapping[str, str] | None = None,
    base: Path = BASE_CONFIG,
    base_dir: Path = REPO_ROOT,
) -> tuple[str, dict[str, str]]:
    """Return (text, properties) of ``base`` with ``overrides`` applied and path keys made absolute.

    Comments and order of ``base`` are kept; overridden keys are replaced in place, new ones appended.
    """
    overrides = dict(overrides or {})
    lines = base.read_text().splitlines()
    props = read_properties(base)
    props.update(overrides)
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
    header = f"# GENERATED from {base} by scripts/torchserve_ctl.py: edit that file, not this one.\n"
    return header + "\n".join(out + extra) + "\n", props


def effective_config(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The properties TorchServe runs with when started by scripts/serve.sh in this environment."""
    return render_config(env_overrides(os.environ if env is None else env))[1]


def base_url(props: Mapping[str, str], api: str) -> str:
    """Base URL of the ``inference``/``management``/``metrics`` API for these properties."""
    return props.get(f"{api}_address", DEFAULT_ADDRESSES[api]).rstrip("/")


# --------------------------------------------------------------------------- keys


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


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON when possible, else text


class ServerDown(CtlError):
    pass


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
                f"scripts/build_mar.sh --name {name} (the store must be TorchServe's model_store)."
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
        query = urllib.parse.urlencode({"min_worker": workers, "max_worker": workers, "synchronous": "true"})
        try:
            resp = self.call("PUT", f"/models/{urllib.parse.quote(name)}?{query}", timeout=timeout)
        except TimeoutError:
            return
        if resp.status >= 300:
            raise CtlError(f"Scaling {name} to {workers} worker(s) failed: HTTP {resp.status}: "
                           f"{_message(resp)}\n{self.log_hint()}")

    def unregister(self, name: str, timeout: float) -> None:
        resp = self.call("DELETE", f"/models/{urllib.parse.quote(name)}?synchronous=true", timeout=timeout)
        if resp.status >= 300 and resp.status != 404:
            raise CtlError(f"Unregistering {name} failed: HTTP {resp.status}: {_message(resp)}")

    def wait_ready(self, name: str, workers: int, deadline: float) -> dict[str, Any]:
        """Wait until exactly ``workers`` workers are READY; fail early on a crash loop."""
        seen_pids: set[int] = set()
        while True:
            info = self.describe(name)
            if info is None:
                raise CtlError(f"{name} disappeared while waiting for its workers (unregistered?).")
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


def register_model(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise CtlError(f"--workers must be >= 0, not {args.workers}.")
    props = effective_config()
    mgmt = (args.url or os.environ.get("TS_MANAGEMENT_URL") or base_url(props, "management")).rstrip("/")
    store = Path(args.store or props.get("model_store", REPO_ROOT / "model_store"))
    keys = read_keys(args.key_file)
    reg = Registrar(mgmt, keys.management, args.key_file, log_dir=args.log_dir)
    deadline = time.monotonic() + args.timeout
    try:
        info = reg.describe(args.name)
    except ServerDown as e:
        raise CtlError(f"{e} Start it with scripts/serve.sh (or pass --url if it runs elsewhere).") from None

    if info is not None and args.reregister:
        print(f"Unregistering {args.name} to register it again ...", file=sys.stderr)
        reg.unregister(args.name, timeout=max(1.0, deadline - time.monotonic()))
        info = None
    if info is None:
        url = args.archive or find_archive(store, args.name)
        if url is None:
            raise CtlError(
                f"No archive for {args.name!r} in the model store {store} (neither {args.name}/ nor "
                f"{args.name}.mar). Build it: scripts/build_mar.sh --model M --name {args.name}"
            )
        reg.register(args.name, url, args.workers, max(1.0, deadline - time.monotonic()),
                     args.batch_size, args.max_batch_delay)
        info = reg.describe(args.name)
        if info is None:
            raise CtlError(f"{args.name} is not registered after the registration call. {reg.log_hint()}")
    else:
        mismatched = [
            f"{label} {info.get(key)} (asked: {want})"
            for label, key, want in (("batch size", "batchSize", args.batch_size),
                                     ("max batch delay", "maxBatchDelay", args.max_batch_delay))
            if want is not None and info.get(key) != want
        ]
        if mismatched:
            raise CtlError(
                f"{args.name} is already registered with {', '.join(mismatched)}; TorchServe cannot change "
                "batching of a registered model. Re-run with --reregister (unregisters, then registers; "
                "requests fail meanwhile), or drop the flag to keep the current batching."
            )
        print(f"{args.name} is already registered; making sure it runs {args.workers} worker(s).",
              file=sys.stderr)
    # yaml minWorkers/maxWorkers override initial_workers: pin the count explicitly either way.
    states = [w.get("status") for w in info.get("workers", [])]
    if len(states) != args.workers or info.get("minWorkers") != args.workers \
            or info.get("maxWorkers") != args.workers:
        reg.scale(args.name, args.workers, max(1.0, deadline - time.monotonic()))
    info = reg.wait_ready(args.name, args.workers, deadline)
    print(f"{args.name}: {args.workers} worker(s) READY (batch size {info.get('batchSize')}, "
          f"max batch delay {info.get('maxBatchDelay')} ms) at {mgmt}.")
    return 0


# --------------------------------------------------------------------------- other subcommands


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


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
            raise CtlError(f"TorchServe did not answer at {url} within {timeout:.0f} s.")
        time.sleep(0.3)


def wait_up(args: argparse.Namespace) -> int:
    wait_until_up(base_url(effective_config(), "management"), args.key_file, args.timeout, args.pid)
    return 0


def archive(args: argparse.Namespace) -> int:
    store = Path(effective_config().get("model_store", REPO_ROOT / "model_store"))
    url = find_archive(store, args.name)
    if url is None:
        return 1
    print(store / url)
    return 0


def example(args: argparse.Namespace) -> int:
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


def render(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = {}
    for overlay in args.overlay:  # e.g. config/production.properties
        overrides.update(read_properties(overlay))
    overrides.update(env_overrides(os.environ))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CtlError(f"--set {item!r}: expected KEY=VALUE, e.g. --set load_models=demo=demo")
        overrides[key.strip()] = value.strip()
    text, _ = render_config(overrides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def get(args: argparse.Namespace) -> int:
    props = effective_config()
    if args.key not in props:
        raise CtlError(f"{args.key} is not set in {BASE_CONFIG}.")
    print(props[args.key])
    return 0


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    d = " (default: %(default)s)"
    p = argparse.ArgumentParser(prog="scripts/torchserve_ctl.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    key_file = os.environ.get("TS_KEY_FILE") or str(DEFAULT_KEY_FILE)
    log_dir = os.environ.get("LOG_LOCATION") or str(DEFAULT_LOG_DIR)

    r = sub.add_parser(
        "register", prog="scripts/register.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    r.add_argument("--workers", type=int, default=1, help="exact number of workers" + d)
    r.add_argument("--batch-size", type=int, help="override the archive's batchSize (default: the archive's)")
    r.add_argument("--max-batch-delay", type=int, metavar="MS",
                   help="override the archive's maxBatchDelay in ms (default: the archive's)")
    r.add_argument("--url", help="management API base URL (default: management_address of config.properties, "
                                 "http://127.0.0.1:8081)")
    r.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for registration and READY workers" + d)
    r.add_argument("--key-file", type=Path, default=Path(key_file),
                   help="TorchServe's key_file.json (written in its working directory)" + d)
    r.add_argument("--store", help="model store to look for the archive in (default: model_store of "
                                   "config.properties)")
    r.add_argument("--archive", help="registration url, e.g. NAME.mar (default: found in the store)")
    r.add_argument("--reregister", action="store_true",
                   help="unregister first if registered (to change batching or load a rebuilt archive)")
    r.add_argument("--log-dir", type=Path, default=Path(log_dir),
                   help="TorchServe's log directory, for error hints" + d)
    r.set_defaults(func=register_model)

    w = sub.add_parser("wait-up", help="wait until a starting TorchServe answers")
    w.add_argument("--key-file", type=Path, default=Path(key_file))
    w.add_argument("--timeout", type=float, default=60.0)
    w.add_argument("--pid", type=int, help="fail as soon as this process is gone")
    w.set_defaults(func=wait_up)

    e = sub.add_parser("example", help="print a curl call of the model")
    e.add_argument("--name", required=True)
    e.add_argument("--key-file", type=Path, default=Path(key_file))
    e.add_argument("--check", action="store_true", help="also send the request and report the status")
    e.add_argument("--timeout", type=float, default=120.0)
    e.set_defaults(func=example)

    c = sub.add_parser("render-config", help="write the effective config.properties")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--overlay", type=Path, action="append", default=[],
                   help="properties file applied on top (e.g. config/production.properties); repeatable")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override, applied last (e.g. load_models=NAME=NAME); repeatable")
    c.set_defaults(func=render)

    a = sub.add_parser("archive", help="print the path of NAME's archive in the model store; exit 1 if none")
    a.add_argument("--name", required=True)
    a.set_defaults(func=archive)

    g = sub.add_parser("get", help="print one property of the effective configuration")
    g.add_argument("key", help="e.g. model_store, management_address")
    g.set_defaults(func=get)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except CtlError as e:
        prog = "register.sh" if args.command == "register" else f"torchserve_ctl {args.command}"
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except TimeoutError as e:
        print(f"torchserve_ctl {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
