"""One TorchServe per GPU behind nginx, on CPU: the plan for 1..8 GPUs, nginx's configuration validated by
``nginx -t``, and a real nginx spreading requests over simulated backends with auth and limits kept."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts import launcher
from scripts.launcher import balancer
from scripts.launcher.processes import process_alive

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (apt-get install nginx)")


@pytest.mark.parametrize("gpus", range(1, 9))
def test_one_backend_per_gpu_with_distinct_ports_and_a_valid_nginx_config(gpus, tmp_path):
    ids = [f"GPU-{i:04d}" if i % 2 else str(i) for i in range(gpus)]  # indices or UUIDs
    backends = balancer.plan_backends(ids, 20000, tmp_path)
    assert [b.env() for b in backends] == [{"CUDA_VISIBLE_DEVICES": g} for g in ids]
    ports = [p for b in backends for p in b.ports.values()]
    assert len(set(ports)) == len(ports) == 5 * gpus
    assert len({b.tmpdir for b in backends}) == gpus  # one pid file each
    assert all(b.overrides()["inference_address"] == f"http://127.0.0.1:{b.ports['inference']}" for b in backends)
    props = launcher.render_config()[1]
    conf = balancer.write_config(
        balancer.render_nginx(backends, "127.0.0.1:19999", tmp_path / "nginx", props, balancer.new_key()),
        tmp_path / "nginx")
    balancer.check_config(conf)  # nginx -t
    text = conf.read_text()
    assert text.count("max_fails=0;") == gpus and "least_conn;" in text
    assert f"client_max_body_size {props['max_request_size']};" in text
    assert oct(conf.stat().st_mode & 0o777) == "0o600"  # it holds the key
    assert oct(conf.parent.stat().st_mode & 0o777) == "0o700"  # and the relay sockets that add the backends\' keys


def test_a_broken_config_is_refused_with_nginx_s_message(tmp_path):
    conf = balancer.write_config("events {}\nhttp { server { listen nowhere:x; } }\n", tmp_path)
    with pytest.raises(launcher.CtlError, match="nginx -t refused"):
        balancer.check_config(conf)


def test_no_gpus_is_refused(tmp_path):
    with pytest.raises(launcher.CtlError, match="needs GPUs"):
        balancer.plan_backends([], 20000, tmp_path)


class _Backend(BaseHTTPRequestHandler):
    """A stand-in TorchServe: answers which backend it is and what Authorization it was sent."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        time.sleep(0.002)  # a little work, so that requests overlap
        body = json.dumps({"backend": self.server.index, "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def behind_nginx(tmp_path):
    ports = launcher.free_ports(5)
    servers = []
    for i in range(4):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
        server.index = i
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    backends = [balancer.Backend(str(i), {"inference": s.server_address[1], "management": 0, "metrics": 0,
                                          "grpc_inference": 0, "grpc_management": 0}, tmp_path / f"gpu{i}")
                for i, s in enumerate(servers)]
    key = balancer.new_key()
    props = {"max_request_size": "4096", "default_response_timeout": "30"}
    text = balancer.render_nginx(backends, f"127.0.0.1:{ports[0]}", tmp_path / "nginx", props, key,
                                 [f"backend-key-{i}" for i in range(4)])
    conf = balancer.write_config(text, tmp_path / "nginx")
    balancer.start_nginx(conf)
    pid = int((conf.parent / "nginx.pid").read_text())
    try:
        yield f"http://127.0.0.1:{ports[0]}", key
    finally:
        assert balancer.stop_nginx(conf)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid)
        for s in servers:
            s.shutdown()


def _post(url: str, token: str | None, body: bytes = b'{"inputs": ["", "x"]}') -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_requests_are_spread_evenly_over_the_backends_with_auth_and_limits_kept(behind_nginx):
    url, key = behind_nginx
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _post(url + "/predictions/m", key), range(800)))
    assert {status for status, _ in answers} == {200}
    per_backend = Counter(body["backend"] for _, body in answers)
    assert sorted(per_backend) == [0, 1, 2, 3]
    assert min(per_backend.values()) >= 0.6 * 800 / 4, per_backend  # every GPU gets its share
    # The client's key stops at nginx; each backend gets its own (TorchServe's token auth stays on).
    assert all(body["auth"] == f"Bearer backend-key-{body['backend']}" for _, body in answers)
    for token in (None, "wrong"):
        status, body = _post(url + "/predictions/m", token)
        assert status == 401 and body["code"] == 401 and "Bearer" in body["message"]
    status, body = _post(url + "/predictions/m", key, b"x" * 5000)
    assert status == 413 and "max_request_size" in body["message"]
    with urllib.request.urlopen(url + "/ping", timeout=30) as resp:  # open, as TorchServe's /ping is
        assert resp.status == 200


@pytest.mark.torchserve
def test_a_fleet_of_two_torchserves_serves_the_same_vectors_from_both_behind_one_key(tmp_path):
    """Two backends pinned to devices 0 and 1 (CPU here: no GPU, so both run on the CPU), the demo model on
    each, requests through nginx with the fleet's one key; then everything stops."""
    from scripts.launcher import fleet
    from scripts.launcher.processes import running_pid
    from tests.torchserve_harness import build_with_script

    store = tmp_path / "store"
    build_with_script("demo", "demo", store)
    listen = f"127.0.0.1:{launcher.free_ports(1)[0]}"
    first = launcher.free_ports(1)[0] + 100
    running = fleet.start_fleet(tmp_path / "work", ["0", "1"], listen=listen, first_port=first,
                                overrides={"model_store": str(store)})
    try:
        assert fleet.management_urls(tmp_path / "work") == [(s.management_url, s.key_file) for s in running.servers]
        # register.sh's command on a fleet: every backend, --workers split evenly over the GPUs.
        from scripts.launcher.cli import main

        assert main(["register", "--name", "demo", "--workers", "3", "--workdir", str(tmp_path / "work")]) == 1
        assert main(["register", "--name", "demo", "--workers", "2", "--workdir", str(tmp_path / "work"),
                     "--store", str(store)]) == 0
        assert [len(s.wait_ready("demo", 1)["workers"]) for s in running.servers] == [1, 1]
        key = json.loads((tmp_path / "work" / "key_file.json").read_text())["inference"]["key"]
        answers = [_post(running.url + "/predictions/demo", key, json.dumps({"inputs": ["", f"x{i}"]}).encode())
                   for i in range(40)]
        assert {status for status, _ in answers} == {200}, answers[:2]
        again = [_post(running.url + "/predictions/demo", key, json.dumps({"inputs": ["", "x0"]}).encode())[1]
                 for _ in range(6)]
        assert all(a == answers[0][1] for a in again)  # the same vector whichever backend answered
        served = [sum("/predictions/demo" in line for line in (tmp_path / "work" / "logs" / f"gpu{i}" /
                                                                 "access_log.log").read_text().splitlines())
                  for i in range(2)]
        assert min(served) > 0, served  # both backends served
        assert _post(running.url + "/predictions/demo", None)[0] == 401
    finally:
        assert fleet.stop_fleet(tmp_path / "work")
    assert all(running_pid(s.tmpdir) is None for s in running.servers)
    assert not (tmp_path / "work" / "key_file.json").exists()


@pytest.mark.parametrize(("visible", "ids"), [("0,1", ["0", "1"]), ("3,2,1,0", ["3", "2", "1", "0"]),
                                              ("GPU-a1,GPU-b2", ["GPU-a1", "GPU-b2"]), ("1,-1,2", ["1"]), ("", []),
                                              (",".join(map(str, range(8))), [str(i) for i in range(8)])])
def test_the_fleet_takes_one_backend_per_visible_device(visible, ids):
    from scripts.launcher import fleet

    assert fleet.device_ids({"CUDA_VISIBLE_DEVICES": visible}) == ids


def test_start_per_gpu_without_gpus_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys):
    from scripts.launcher.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["start", "--per-gpu", "--workdir", str(tmp_path)]) == 1
    assert "needs GPUs" in capsys.readouterr().err
    assert not (tmp_path / "build" / "fleet.json").exists() and not (tmp_path / "key_file.json").exists()
