"""The launcher as a user meets it: serve.sh, register.sh and stop.sh (--help, failures that say what to
do) and register/serve/stop against real TorchServes (marked torchserve)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import launcher
from tests.torchserve_harness import (
    REPO,
    TorchServe,
    build_with_script,
    free_ports,
    register_with_script,
    run_script,
    running_torchserve,
    scripts_env,
)

# --------------------------------------------------------------------------- servers that are down


def test_register_against_a_stopped_server_says_to_run_serve_sh(tmp_path):
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    proc = run_script("register.sh", "--name", "demo", "--url", url, env={"TS_KEY_FILE": str(tmp_path / "k")})
    assert proc.returncode == 1
    assert "does not answer" in proc.stderr and "scripts/serve.sh" in proc.stderr


def test_stop_when_nothing_runs_is_fine(tmp_path):
    (tmp_path / ".model_server.pid").write_text("999999")  # stale pid file of a dead server
    proc = run_script("stop.sh", env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == 0
    assert "not running" in proc.stdout
    assert not (tmp_path / ".model_server.pid").exists()


# --------------------------------------------------------------------------- real TorchServe


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """One TorchServe with the demo model built (not registered) in its store."""
    store = tmp_path_factory.mktemp("store")
    build_with_script("demo", "demo", store)
    with running_torchserve(store) as ts:
        yield ts


@pytest.mark.torchserve
def test_register_is_idempotent_and_pins_the_worker_count(demo_server: TorchServe):
    ts = demo_server
    register_with_script(ts, "demo", "--workers", "1")
    info = ts.describe("demo")
    assert [w["status"] for w in info["workers"]] == ["READY"]

    again = register_with_script(ts, "demo", "--workers", "1")
    assert "already registered" in again.stderr

    register_with_script(ts, "demo", "--workers", "2")
    info = ts.describe("demo")
    assert info["minWorkers"] == info["maxWorkers"] == 2
    assert [w["status"] for w in info["workers"]] == ["READY", "READY"]

    refused = register_with_script(ts, "demo", "--workers", "1", "--batch-size", "4", check=False)
    assert refused.returncode == 1 and "--reregister" in refused.stderr

    register_with_script(ts, "demo", "--workers", "1", "--batch-size", "4", "--reregister")
    info = ts.describe("demo")
    assert info["batchSize"] == 4
    assert [w["status"] for w in info["workers"]] == ["READY"]


@pytest.mark.torchserve
def test_a_second_torchserve_in_the_same_temp_directory_is_refused_with_what_to_do(demo_server: TorchServe,
                                                                                   tmp_path):
    with pytest.raises(launcher.CtlError, match="already runs") as refused:
        launcher.start(tmp_path, tmpdir=demo_server.tmpdir,
                             overrides=launcher.port_overrides(free_ports(5)))
    assert f"pid {demo_server.pid}" in str(refused.value) and "scripts/stop.sh" in str(refused.value)
    assert demo_server.call("GET", "/models", api="management").status == 200  # the first one is untouched


@pytest.mark.torchserve
def test_register_without_an_archive_says_how_to_build_it(demo_server: TorchServe):
    proc = register_with_script(demo_server, "nothing-built", check=False)
    assert proc.returncode == 1
    assert "scripts/build_archive.sh" in proc.stderr


@pytest.mark.torchserve
def test_register_with_a_stale_key_file_explains_where_keys_live(demo_server: TorchServe, tmp_path):
    stale = tmp_path / "key_file.json"
    stale.write_text(json.dumps({"management": {"key": "wrong"}, "inference": {"key": "wrong"}}))
    proc = register_with_script(demo_server, "demo", "--key-file", str(stale), check=False)
    assert proc.returncode == 1
    assert "key_file.json" in proc.stderr and "rejected" in proc.stderr


@pytest.mark.torchserve
def test_a_disabled_model_api_is_explained(tmp_path):
    store = tmp_path / "store"
    build_with_script("demo", "demo", store)
    with running_torchserve(store, config={"enable_model_api": "false"}) as ts:
        proc = register_with_script(ts, "demo", check=False)
    assert proc.returncode == 1
    assert "405" in proc.stderr and "enable_model_api=true" in proc.stderr


# --------------------------------------------------------------------------- serve.sh / stop.sh


def _copy_repo(dest: Path) -> Path:
    """The repo's working tree as a fresh clone would have it (no venv, logs, keys or archives)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "logs", "build", "key_file.json", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "*.mar")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    for item in (dest / "model_store").iterdir():
        if item.name != ".gitkeep":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    return dest


@pytest.mark.torchserve
@pytest.mark.slow
def test_serve_sh_from_a_fresh_copy_prints_a_working_curl_and_comes_back_after_stop_sh(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    ports = free_ports(5)
    env = {
        "TMPDIR": str(tmpdir),
        "TS_INFERENCE_PORT": str(ports[0]), "TS_MANAGEMENT_PORT": str(ports[1]),
        "TS_METRICS_PORT": str(ports[2]), "TS_GRPC_INFERENCE_PORT": str(ports[3]),
        "TS_GRPC_MANAGEMENT_PORT": str(ports[4]),
    }
    serve = [str(repo / "scripts" / "serve.sh")]
    try:
        proc = subprocess.run(serve, env=scripts_env(env), capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        keys = launcher.read_keys(repo / "key_file.json")
        assert f"curl -s -X POST http://127.0.0.1:{ports[0]}/predictions/demo" in proc.stdout
        assert keys.inference not in proc.stdout + proc.stderr  # the printed curl reads the key itself
        assert "checked: HTTP 200" in proc.stderr
        if shutil.which("curl"):
            curl = proc.stdout[proc.stdout.index("curl -s"):].split("\n\n")[0]
            out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
            vector = json.loads(out.stdout)
            assert len(vector) == 384 and all(isinstance(x, float) for x in vector)

        again = subprocess.run(serve, env=scripts_env(env), capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout and "already registered" in again.stderr

        # That every process ends is tested in tests/test_reliability.py; here: the keys go with the server.
        stop = subprocess.run([str(repo / "scripts" / "stop.sh")], env=scripts_env(env),
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert not (repo / "key_file.json").exists()
        assert not (tmpdir / ".model_server.pid").exists()

        # After a full stop, serve.sh alone brings the model back (the archive is reused, not rebuilt).
        back = subprocess.run(serve, env=scripts_env(env), capture_output=True, text=True, timeout=300)
        assert back.returncode == 0, back.stdout + back.stderr
        assert "checked: HTTP 200" in back.stderr
        assert "Using the archive" in back.stdout
    finally:
        subprocess.run([str(repo / "scripts" / "stop.sh")], env=scripts_env(env),
                       capture_output=True, timeout=120)


SERVE_BAD_VALUES = {
    "workers 0": (["--workers", "0"], "--workers must be a number >= 1 or auto, not '0'"),
    "batch size": (["--batch-size", "-1"], "--batch-size must be a number >= 1, not '-1'"),
    # TorchServe reads a delay of 0 as unset and waits 100 ms for every batch (measured).
    "batch delay 0": (["--max-batch-delay", "0"], "--max-batch-delay must be a number of milliseconds >= 1"),
    "timeout": (["--timeout", "soon"], "--timeout must be a number of seconds > 0, not 'soon'"),
    "precision": (["--precision", "float16"], "--precision: setting 'precision': float16 is refused"),
}


@pytest.mark.parametrize("flags,message", SERVE_BAD_VALUES.values(), ids=SERVE_BAD_VALUES.keys())
def test_serve_sh_refuses_a_bad_value_before_it_starts_torchserve(tmp_path, flags, message):
    """A mistyped value gets exit 2 naming the flag, and leaves no server behind (no keys, no logs, no pid)."""
    repo = _copy_repo(tmp_path / "repo")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    names = ("TS_INFERENCE_PORT", "TS_MANAGEMENT_PORT", "TS_METRICS_PORT", "TS_GRPC_INFERENCE_PORT",
             "TS_GRPC_MANAGEMENT_PORT")
    env = scripts_env({"TMPDIR": str(tmpdir), **{n: str(port) for n, port in zip(names, free_ports(5), strict=True)}})
    try:
        proc = subprocess.run([str(repo / "scripts" / "serve.sh"), *flags], env=env, capture_output=True, text=True,
                              timeout=300)
        started = (tmpdir / ".model_server.pid").exists() or (repo / "key_file.json").exists()
    finally:  # should the check regress, the server it started must not outlive the test
        subprocess.run([str(repo / "scripts" / "stop.sh")], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "(see --help)" in proc.stderr
    assert not started and not (repo / "logs").exists()


# --------------------------------------------------------------------------- production mode


def test_start_with_a_python_without_torchserve_says_which_python_to_use(tmp_path):
    """Not a port conflict: the Python is told apart before anything starts."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a Python without the ts package answers the probe with 1
    fake.chmod(0o755)
    with pytest.raises(launcher.CtlError, match="has no TorchServe") as refused:
        launcher.start(tmp_path, tmpdir=tmp_path / "tmp", python=str(fake),
                       overrides=launcher.port_overrides(free_ports(5)))
    assert "port" not in str(refused.value) and "setup_venv.sh" in str(refused.value)
    assert launcher.running_pid(tmp_path / "tmp") is None


@pytest.mark.torchserve
def test_production_start_fails_for_a_missing_model_and_wait_ready_for_an_unreachable_count(demo_server, tmp_path):
    production = (REPO / "config" / "production.properties",)
    overrides = {**launcher.port_overrides(free_ports(5)), "model_store": str(demo_server.model_store)}
    with pytest.raises(launcher.CtlError, match="load_models names ghost") as missing:
        launcher.start(tmp_path / "a", tmpdir=tmp_path / "ta", overlays=production,
                       overrides={**overrides, "load_models": "demo=demo,ghost=ghost.mar"})
    assert "model store" in str(missing.value)
    assert launcher.running_pid(tmp_path / "ta") is None  # stopped again, not left "up"
    with launcher.running(tmp_path / "b", tmpdir=tmp_path / "tb", overlays=production,
                          overrides={**overrides, "load_models": "demo=demo"}) as server:
        server.wait_ready("demo", 1, timeout=300)
        # Workflows are not gated by enable_model_api: a clean JSON refusal, never the frontend's 500.
        for url in ("demo", "demo.mar", "x.war", "", "http://evil.example/x.war", "/etc/passwd"):
            refused = server.call("POST", f"/workflows?url={url}", api="management", timeout=30)
            assert refused.status in (400, 404) and isinstance(refused.body, dict), (url, refused)
        # At once (the timeout's message would say "after the timeout"), naming the archive's range.
        with pytest.raises(launcher.CtlError, match=r"runs 1 to 1 worker.*will never be READY"):
            server.wait_ready("demo", 4, timeout=300)
