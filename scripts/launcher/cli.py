"""The launcher's command line: each command parses its flags and calls the package; no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.launcher import fleet
from scripts.launcher.config import BASE_CONFIG, REPO_ROOT, base_url, effective_config, env_overrides, render_config
from scripts.launcher.errors import CtlError, ServerDown
from scripts.launcher.java import find_java
from scripts.launcher.lifecycle import (
    DEFAULT_LOG_CONFIG,
    RENDERED_CONFIG,
    START_TIMEOUT_S,
    start,
    stop,
    wait_until_up,
)
from scripts.launcher.memory import RECOMMENDED_MAX, Capacity
from scripts.launcher.processes import pid_file, running_pid
from scripts.launcher.registrar import DEFAULT_LOG_DIR, Registrar, find_archive, register
from scripts.launcher.rest import read_keys, request
from scripts.launcher.workers import at_least_one, describe_auto, workers_arg

DEFAULT_KEY_FILE = REPO_ROOT / "key_file.json"
EXAMPLE_BODY = {
    "inputs": [
        "Represent the Science title:",
        "3D ActionSLAM: wearable person tracking in multi-floor environments",
    ]
}
DESCRIPTION = """\
Start, stop and talk to a local TorchServe 0.12 (standard library only).

commands:
  start          render the configuration, check Python and Java, start TorchServe and wait until it answers
                 and every load_models model is registered
  stop           stop TorchServe and its workers (and its MPS daemon), waiting until every process is gone
  status         print the PID of the TorchServe of this temp directory (exit 1: none runs)
  register       register a model (or scale an already registered one) and wait for its READY workers
  wait-ready     wait until a model has exactly N READY workers (e.g. models loaded at start-up)
  java           print the JAVA_HOME that start would use (exit 1: no Java >= 11)
  render-config  write the effective config.properties (repo file + overlays + overrides)
  get            print one property of the effective configuration (e.g. model_store)
  archive        print the path of a model's archive in the model store (exit 1: none)
  example        print (and optionally run) a curl call of the model with the inference token
The TS_*_PORT and TS_MODEL_STORE environment variables override config.properties for every command.
"""



def _cli_overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = env_overrides(os.environ)
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CtlError(f"--set {item!r}: expected KEY=VALUE (a config.properties key).")
        overrides[key.strip()] = value.strip()
    return overrides


def _capacity(args: argparse.Namespace) -> Capacity | None:
    """--workers/--batch-size: what the frontend's memory is sized for (default: the largest recommended)."""
    if args.capacity_workers is None and args.capacity_batch_size is None:
        return None
    return Capacity(args.capacity_workers or RECOMMENDED_MAX.workers,
                    args.capacity_batch_size or RECOMMENDED_MAX.batch_size)


def default_python() -> str:
    """The Python that has TorchServe: $VENV's, else the repository's .venv, else the one running this."""
    for venv in (os.environ.get("VENV"), REPO_ROOT / ".venv"):
        if venv and (Path(venv) / "bin" / "python").exists():
            return str(Path(venv) / "bin" / "python")
    return sys.executable


def _start(args: argparse.Namespace) -> int:
    if args.per_gpu:
        return _start_fleet(args)
    server = start(args.workdir, base_config=args.config, overrides=_cli_overrides(args),
                   overlays=tuple(args.overlay), capacity=_capacity(args), config_file=args.config_out,
                   log_dir=args.log_dir, log_config=args.log_config, timeout=args.timeout, reuse=args.reuse,
                   python=args.python, use_mps=args.mps)
    if server.started_s:
        print(f"TorchServe is up (pid {server.pid}) after {server.started_s:.0f} s; logs: {server.log_dir}")
    else:
        print(f"TorchServe is already running (pid {server.pid}).")
    return 0


def _start_fleet(args: argparse.Namespace) -> int:
    overrides = _cli_overrides(args)
    props = render_config(overrides, overlays=tuple(args.overlay))[1]
    listen = base_url(props, "inference").removeprefix("http://")
    devices = fleet.device_ids()
    if args.reuse and fleet.management_urls(args.workdir):
        print("The per-GPU TorchServes are already running (build/fleet.json).")
        return 0
    running = fleet.start_fleet(args.workdir, devices, listen=listen, overrides=overrides,
                                overlays=tuple(args.overlay), capacity=_capacity(args), python=args.python,
                                use_mps=args.mps, log_config=args.log_config,
                                token_auth=props.get("disable_token_authorization", "false") != "true")
    print(f"{len(running.servers)} TorchServes (one per GPU: {', '.join(devices)}) behind nginx at {running.url}; "
          f"logs: {args.workdir / 'logs'}/gpu*")
    return 0


def _stop(args: argparse.Namespace) -> int:
    if fleet.stop_fleet(args.workdir):
        print("The TorchServes of every GPU and their nginx are stopped.")
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


def _cli_registrars(args: argparse.Namespace) -> tuple[list[Registrar], int, dict[str, str]]:
    """The management APIs to act on (every backend of a per-GPU fleet, else one) and the workers for each."""
    props = render_config(_cli_overrides(args))[1]
    backends = [] if args.url else fleet.management_urls(args.workdir)
    if backends:
        if args.workers % len(backends):
            raise CtlError(f"--workers {args.workers} does not split evenly over {len(backends)} GPUs (one "
                           "TorchServe each): give a multiple of the GPU count, or auto.")
        return ([Registrar(url, read_keys(key_file).management, key_file, log_dir=args.log_dir)
                 for url, key_file in backends],
                args.workers // len(backends), props)
    mgmt = (args.url or os.environ.get("TS_MANAGEMENT_URL") or base_url(props, "management")).rstrip("/")
    return [Registrar(mgmt, read_keys(args.key_file).management, args.key_file, log_dir=args.log_dir)], \
        args.workers, props


def _register(args: argparse.Namespace) -> int:
    registrars, workers, props = _cli_registrars(args)
    store = Path(args.store or props.get("model_store", REPO_ROOT / "model_store"))
    for registrar in registrars:
        info = register(registrar, store, args.name, workers, timeout=args.timeout, archive=args.archive,
                        batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                        reregister=args.reregister)
        print(f"{args.name}: {workers} worker(s) READY (batch size {info.get('batchSize')}, "
              f"max batch delay {info.get('maxBatchDelay')} ms) at {registrar.management_url}.")
    return 0


def _wait_ready(args: argparse.Namespace) -> int:
    registrars, workers, _ = _cli_registrars(args)
    for registrar in registrars:
        try:
            registrar.wait_ready(args.name, workers, time.monotonic() + args.timeout)
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
    text, _ = render_config(_cli_overrides(args), overlays=tuple(args.overlay), capacity=_capacity(args))
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
    p = argparse.ArgumentParser(prog="scripts/torchserve_ctl.py", description=DESCRIPTION, formatter_class=raw)
    sub = p.add_subparsers(dest="command", required=True)
    key_file = Path(os.environ.get("TS_KEY_FILE") or DEFAULT_KEY_FILE)
    log_dir = Path(os.environ.get("LOG_LOCATION") or DEFAULT_LOG_DIR)

    def settable(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config.properties key, repeatable (after the TS_* variables)")

    def sized(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--overlay", type=Path, action="append", default=[],
                            help="properties file applied on top (e.g. config/production.properties); repeatable")
        parser.add_argument("--workers", dest="capacity_workers", type=workers_arg, metavar="N",
                            help="workers of all models, for the frontend's memory (default: "
                                 f"{RECOMMENDED_MAX.workers}, the largest recommended)")
        parser.add_argument("--batch-size", dest="capacity_batch_size", type=int, metavar="B",
                            help=f"their batch size, idem (default: {RECOMMENDED_MAX.batch_size})")
        settable(parser)

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
    s.add_argument("--python", default=default_python(),
                   help="the Python with TorchServe (ts) that runs it (default: $VENV's or .venv's, else this one; "
                        "now %(default)s)")
    s.add_argument("--per-gpu", action="store_true",
                   help="one TorchServe per visible GPU behind nginx on the inference address (fleet.py); "
                        "register.sh then registers on each, --workers split evenly")
    s.add_argument("--mps", action="store_true",
                   help="start a CUDA MPS daemon for the workers first (nvidia-cuda-mps-control; stop ends it)")
    sized(s)
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
    t.add_argument("--workdir", type=Path, default=REPO_ROOT,
                   help="where a per-GPU fleet was started from (its build/fleet.json)" + d)
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
        parser.add_argument("--workdir", type=Path, default=REPO_ROOT,
                            help="where a per-GPU fleet was started from: its backends are used (build/fleet.json)"
                                 + d)

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
                   help="exact number of workers, or " + describe_auto() + d)
    r.add_argument("--batch-size", type=at_least_one, help="override the archive's batchSize (default: the archive's)")
    r.add_argument("--max-batch-delay", type=at_least_one, metavar="MS",
                   help="override the archive's maxBatchDelay in ms, >= 1: TorchServe reads 0 as unset and waits "
                        "100 ms (default: the archive's)")
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
    sized(c)
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
