"""The container image built with podman and run as a user would (pytest -m container).

scripts/container_test.sh builds the image and runs this module with CONTAINER_IMAGE set; run alone with
``-m container`` it builds the image through that script first (minutes). The image runs in two ways:

- plain: the demo model's store mounted read-only at the model-store volume, ports published on loopback;
  non-root, token auth, HEALTHCHECK, production mode, the request limits of docker/config.properties,
  draining on SIGTERM (requests counted), restart of the same container with the same volume;
- KServe: the same image with a deploy/kserve/make_storage.py layout at /mnt/models and the container args of
  deploy/kserve/servingruntime.yaml: KServe v1/v2 requests and the probes a KServe deployment sends.

Skipped where podman is missing, and unless selected with ``-m container``: building the image takes minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.served_vectors import assert_same
from tests.torchserve_harness import REPO, build_with_script

PODMAN = shutil.which("podman")
DEFAULT_OPTS = "--runtime runc --cgroup-manager=cgroupfs" if shutil.which("runc") else ""
PODMAN_OPTS = shlex.split(os.environ.get("PODMAN_OPTS", DEFAULT_OPTS))
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
IMAGE = os.environ.get("CONTAINER_IMAGE", "localhost/instructor-serve:test")
HOME = "/home/model-server"
PAIR = ["Represent the title:", "Containers built and run for real"]
READY_TIMEOUT_S = 600.0

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed (Debian: apt-get install -y podman runc "
                                              "debootstrap); scripts/container_test.sh builds and runs the image"),
]


@pytest.fixture(scope="module", autouse=True)
def _selected_explicitly(request) -> None:
    # Module scope: autouse fixtures run before the other fixtures of their scope, so nothing is built or started.
    markexpr = request.config.getoption("markexpr") or ""
    if not re.search(r"(?<!not )\bcontainer\b", markexpr):
        pytest.skip("builds a container image (minutes): select with -m container, or run scripts/container_test.sh")


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *PODMAN_OPTS, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass
class Reply:
    status: int
    body: object


def http(method: str, url: str, body: object = None, token: str | None = None, raw: bytes | None = None,
         timeout: float = 120) -> Reply:
    """One request; the status and the JSON body (or the text where it is not JSON)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return Reply(status, json.loads(text))
    except ValueError:
        return Reply(status, text)


async def post_status(url: str, body: bytes, token: str) -> int:
    """The status of one POST of a large body. aiohttp reads the answer while it still sends, as clients must:
    the frontend answers 413 from the Content-Length and closes, before the body has been sent."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


def assert_refused(reply: Reply) -> None:
    """TorchServe 0.12's answer to a missing or wrong token: 400 InvalidKeyException, nothing computed."""
    assert reply.status == 400 and isinstance(reply.body, dict), reply
    assert reply.body.get("type") == "InvalidKeyException" and "Token" in reply.body.get("message", ""), reply


@dataclass
class Container:
    name: str
    started_at: float  # monotonic time of `podman run`
    not_ready_probes: int = 0  # health checks that failed before the first one passed

    def port(self, inner: int) -> int:
        out = podman("port", self.name, str(inner)).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def url(self, path: str, inner: int = 8080) -> str:
        return f"http://127.0.0.1:{self.port(inner)}{path}"

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=check, timeout=60)

    def inspect(self, fmt: str) -> str:
        return podman("inspect", "--format", fmt, self.name).stdout.strip()

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def key(self, which: str = "inference") -> str:
        return json.loads(self.exec("cat", f"{HOME}/key_file.json").stdout)[which]["key"]

    def wait_healthy(self, probe: list[str] | None = None) -> float:
        """Seconds from `podman run`/`start` until the health check (or ``probe``) passes."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        self.not_ready_probes = 0
        while time.monotonic() < deadline:
            assert self.inspect("{{.State.Running}}") == "true", f"the container exited:\n{self.logs()[-4000:]}"
            proc = (self.exec(*probe, check=False) if probe
                    else podman("healthcheck", "run", self.name, check=False, timeout=60))
            if proc.returncode == 0:
                return time.monotonic() - self.started_at
            self.not_ready_probes += 1
            time.sleep(2)
        raise AssertionError(f"not healthy within {READY_TIMEOUT_S:.0f} s:\n{self.logs()[-4000:]}")


def run_container(name: str, *args: str, image_args: tuple[str, ...] = ()) -> Container:
    podman("rm", "-f", "-t", "0", name, check=False)
    started = time.monotonic()
    podman("run", "-d", "--name", name, *LIMITS, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8082", *args,
           IMAGE, *image_args)
    return Container(name, started)


@pytest.fixture(scope="module")
def image() -> str:
    if "CONTAINER_IMAGE" not in os.environ:
        proc = subprocess.run([str(REPO / "scripts" / "container_test.sh"), "--build-only", "--tag", IMAGE],
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, f"scripts/container_test.sh --build-only failed:\n{proc.stderr[-6000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\n[container] image {IMAGE}: {size / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("container-store")
    build_with_script("demo", "demo", store, "--format", "mar", "--workers", "1")
    store.chmod(0o755)  # the container's user (UID 1000) reads the mounted store
    for path in store.iterdir():
        path.chmod(0o644)
    return store


@pytest.fixture(scope="module")
def expected_vector(demo_model_dir) -> np.ndarray:
    """The vector the handler computes for PAIR outside any container (the core the served tests check)."""
    from handler.encoder import InstructorEncoder
    from handler.settings import Settings

    return InstructorEncoder(demo_model_dir, Settings(warmup=False)).encode([tuple(PAIR)]).vectors


@pytest.fixture(scope="module")
def plain(image, demo_store) -> Iterator[Container]:
    container = run_container("instructor-container-test-plain", "-e", "DRAIN_DELAY_S=5",
                              "-v", f"{demo_store}:{HOME}/model-store:ro")
    try:
        print(f"\n[container] plain image: start to healthy (every worker READY) {container.wait_healthy():.1f} s")
        yield container
    finally:
        podman("rm", "-f", "-t", "0", container.name, check=False)


def test_the_plain_image_runs_as_a_non_root_user_with_a_read_only_store(plain):
    assert plain.inspect("{{.Config.User}}") == "1000:1000"
    assert plain.exec("id", "-u").stdout.strip() == "1000"
    assert plain.exec("stat", "-c", "%u", "/proc/1").stdout.strip() == "1000"  # the entry point itself
    # Every process of the container (entry point, Java frontend, Python workers) runs as UID 1000.
    uids = plain.exec("sh", "-c", "stat -c %u /proc/[0-9]*").stdout.split()
    assert len(uids) >= 3 and set(uids) == {"1000"}, uids
    programs = plain.exec("sh", "-c", "for p in /proc/[0-9]*; do readlink $p/exe; done; true").stdout
    assert "/java" in programs and "python" in programs, programs
    refused = plain.exec("touch", f"{HOME}/model-store/x", check=False)
    assert refused.returncode != 0 and "Read-only" in refused.stderr


def test_the_health_check_is_the_readiness_probe_and_passes_once_workers_are_ready(plain):
    assert "readiness.py" in plain.inspect("{{json .Config.Healthcheck}}")
    assert plain.not_ready_probes > 0  # it failed while TorchServe and its workers were starting
    assert plain.inspect("{{.State.Health.Status}}") == "healthy"
    probe = plain.exec("python", f"{HOME}/readiness.py", "--config", f"{HOME}/config.properties")
    assert probe.stdout.strip() == "ready"
    workers = json.loads(plain.exec("python", "-c", (
        "import json, urllib.request as u; key = json.load(open('key_file.json'))['management']['key'];"
        "r = u.Request('http://127.0.0.1:8081/models/demo', headers={'Authorization': 'Bearer ' + key});"
        "print(json.dumps(json.load(u.urlopen(r))[0]['workers']))")).stdout)
    assert [w["status"] for w in workers] == ["READY"]


def test_token_auth_refuses_a_request_without_the_key_and_serves_the_exact_vector_with_it(plain, expected_vector):
    url = plain.url("/predictions/demo")
    assert_refused(http("POST", url, {"inputs": [PAIR]}))
    assert_refused(http("POST", url, {"inputs": [PAIR]}, token="not-the-key"))
    ok = http("POST", url, {"inputs": [PAIR]}, token=plain.key())
    assert ok.status == 200, ok
    assert_same(ok.body, expected_vector)
    v1 = http("POST", plain.url("/v1/models/demo:predict"), {"instances": [PAIR]}, token=plain.key())
    assert v1.status == 200, v1
    assert_same(v1.body["predictions"], expected_vector)


def test_production_mode_refuses_registration_and_keeps_management_inside(plain):
    assert "8081" not in podman("port", plain.name).stdout  # only inference and metrics are published
    status = plain.exec("python", "-c", (
        "import json, urllib.request as u, urllib.error as e; key = json.load(open('key_file.json'))['management']"
        "['key']; r = u.Request('http://127.0.0.1:8081/models?url=demo.mar', method='POST', "
        "headers={'Authorization': 'Bearer ' + key})\n"
        "try: print(u.urlopen(r).status)\nexcept e.HTTPError as x: print(x.code)")).stdout.strip()
    assert status == "405"
    metrics = urllib.request.urlopen(plain.url("/metrics", 8082), timeout=30).read().decode()
    assert "ts_inference_requests_total" in metrics or "# TYPE" in metrics


def test_a_body_over_the_2_mib_limit_is_refused_with_413_and_one_under_it_is_served(plain):
    limit = 2 * 1024 * 1024
    props = (REPO / "docker" / "config.properties").read_text()
    assert re.search(rf"^max_request_size={limit}$", props, re.M)
    token = plain.key()
    over = json.dumps({"inputs": [["", "word " * (limit // 5 + 10)]]}).encode()
    assert len(over) > limit
    assert asyncio.run(post_status(plain.url("/predictions/demo"), over, token)) == 413
    under = http("POST", plain.url("/predictions/demo"), {"inputs": [["", "word " * 1000]]}, token=token)
    assert under.status == 200, under


def test_sigterm_drains_the_requests_in_flight_and_a_restart_with_the_same_volume_serves(plain, expected_vector):
    url, token = plain.url("/predictions/demo"), plain.key()
    body = json.dumps({"inputs": [["Represent the document:", "word " * 40]] * 4}).encode()
    outcomes: list[int] = []
    lock = threading.Lock()
    routing_switched = threading.Event()

    def client() -> None:
        # Like a Service whose endpoints update after SIGTERM: new requests keep coming for a second.
        while not routing_switched.is_set():
            try:
                status = http("POST", url, raw=body, token=token).status
            except OSError:
                status = -1  # connection refused or reset: lost
            with lock:
                outcomes.append(status)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    sigterm_at = time.monotonic()
    stop = subprocess.Popen(["podman", *PODMAN_OPTS, "stop", "-t", "60", plain.name],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    routing_switched.set()
    for thread in threads:
        thread.join(timeout=180)
    stop.communicate(timeout=120)
    stopped_after = time.monotonic() - sigterm_at
    lost = sum(status != 200 for status in outcomes)
    print(f"\n[container] SIGTERM under load: sent {len(outcomes)}, answered 200 {len(outcomes) - lost}, "
          f"lost {lost}; container stopped {stopped_after:.1f} s after SIGTERM (DRAIN_DELAY_S=5)")
    assert outcomes and lost == 0, outcomes
    assert plain.inspect("{{.State.ExitCode}}") == "0"
    assert "draining for 5s" in plain.logs()

    old_key = token
    plain.started_at = time.monotonic()
    podman("start", plain.name)
    print(f"\n[container] restart with the same volume: healthy after {plain.wait_healthy():.1f} s")
    new_key = plain.key()
    assert new_key != old_key  # TorchServe writes new keys at every start
    assert_refused(http("POST", plain.url("/predictions/demo"), {"inputs": [PAIR]}, token=old_key))
    ok = http("POST", plain.url("/predictions/demo"), {"inputs": [PAIR]}, token=new_key)
    assert ok.status == 200, ok
    assert_same(ok.body, expected_vector)


# --- The same image in its KServe configuration -------------------------------------------------------------

KSERVE_CONFIG = "/mnt/models/config/config.properties"
KSERVE_ARGS = ("--model-store=/mnt/models/model-store", f"--ts-config={KSERVE_CONFIG}")  # servingruntime.yaml


@pytest.fixture(scope="module")
def kserve(image, demo_store, tmp_path_factory) -> Iterator[Container]:
    layout = tmp_path_factory.mktemp("kserve-layout")
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "deploy" / "kserve" / "make_storage.py"),
                           "--archive", str(demo_store / "demo.mar"), "--out", str(layout), "--force",
                           # No wrapper in front: TorchServe itself answers KServe on the pod's port 8080.
                           "--inference-address", "http://0.0.0.0:8080",
                           "--management-address", "http://127.0.0.1:8081"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for path in layout.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    layout.chmod(0o755)
    container = run_container("instructor-container-test-kserve", "-e", "DRAIN_DELAY_S=5",
                              "-e", "TMPDIR=/tmp/torchserve", "-v", f"{layout}:/mnt/models:ro",
                              image_args=KSERVE_ARGS)
    try:
        # The ServingRuntime's readinessProbe/startupProbe: readiness.py on the layout's config.
        took = container.wait_healthy(["python", f"{HOME}/readiness.py", "--config", KSERVE_CONFIG])
        print(f"\n[container] KServe configuration: start to ready {took:.1f} s")
        yield container
    finally:
        podman("rm", "-f", "-t", "0", container.name, check=False)


def test_kserve_v1_predict_and_v2_infer_return_the_exact_vector(kserve, expected_vector):
    v1 = http("POST", kserve.url("/v1/models/demo:predict"), {"instances": [PAIR, PAIR]})
    assert v1.status == 200, v1
    assert_same(v1.body["predictions"], np.vstack([expected_vector, expected_vector]))
    v2 = http("POST", kserve.url("/v2/models/demo/infer"), {"id": "q-1", "inputs": [
        {"name": "pairs", "datatype": "BYTES", "shape": [1, 2], "data": [PAIR]}]})
    assert v2.status == 200, v2
    (output,) = v2.body["outputs"]
    assert v2.body["id"] == "q-1" and output["datatype"] == "FP32" and output["shape"] == [1, expected_vector.shape[1]]
    assert_same(np.array(output["data"]).reshape(output["shape"]), expected_vector)
    bad = http("POST", kserve.url("/v2/models/demo/infer"), {"inputs": [
        {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]})
    assert bad.status == 400 and "error" in bad.body, bad


def test_kserve_configuration_is_production_mode_and_the_image_health_check_follows_its_config(kserve):
    health = podman("healthcheck", "run", kserve.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr  # readiness.py on the layout's config
    assert kserve.exec("cat", "ts-config.path").stdout.strip() == KSERVE_CONFIG
    # KServe's clients send no TorchServe token: the layout turns it off, and nothing can be registered.
    status = kserve.exec("python", "-c", (
        "import urllib.request as u, urllib.error as e\n"
        "try: print(u.urlopen(u.Request('http://127.0.0.1:8081/models?url=demo.mar', method='POST')).status)\n"
        "except e.HTTPError as x: print(x.code)")).stdout.strip()
    assert status == "405"


@pytest.mark.xfail(strict=True, reason="TorchServe 0.12 does not answer KServe's health routes (/v2/health/live, "
                                       "/v2/health/ready, /v2/models/<name>/ready, /v1/models/<name>): they come "
                                       "with the work that makes TorchServe itself answer KServe's probes")
def test_kserve_health_probes_answer_as_in_the_cluster(kserve):
    live = http("GET", kserve.url("/v2/health/live"))
    assert live.status == 200 and live.body.get("live") is True, live
    ready = http("GET", kserve.url("/v2/health/ready"))
    assert ready.status == 200 and ready.body.get("ready") is True, ready
    model = http("GET", kserve.url("/v2/models/demo/ready"))
    assert model.status == 200 and model.body.get("ready") is True, model
    v1 = http("GET", kserve.url("/v1/models/demo"))
    assert v1.status == 200 and v1.body.get("ready") is True, v1
