"""deploy/kserve/make_storage.py on a real archive, and TorchServe started from its DEFAULT layout as KServe's
TorchServe wrapper reaches it: on loopback, without a token (the wrapper sends none), model API off."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import psutil
import pytest

from scripts import launcher
from tests.kserve_support import MAKE_STORAGE, free_layout_ports, layout_port_args, make_storage, serve_layout
from tests.torchserve_harness import REPO, build_with_script

NAME = "short"


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_models):
    store = tmp_path_factory.mktemp("store")
    build_with_script(str(tiny_models["tiny-instructor-short"]), NAME, store, "--format", "mar",
                      "--batch-size", "4", "--max-batch-delay", "7", "--workers", "1")
    return store / f"{NAME}.mar"


def test_help_shows_defaults():
    proc = subprocess.run([sys.executable, str(MAKE_STORAGE), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--token-auth {off,on}" in proc.stdout and "(default: off)" in proc.stdout
    assert "(default: http://127.0.0.1:8085)" in proc.stdout


def test_mistakes_get_messages_that_say_what_to_do(tmp_path, archive):
    not_mar = tmp_path / "x.mar"
    not_mar.write_text("no zip")
    proc = make_storage(not_mar, tmp_path / "out")
    assert proc.returncode == 1 and "build_archive.sh --format mar" in proc.stderr
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep").write_text("x")
    proc = make_storage(archive, out)
    assert proc.returncode == 1 and "--force" in proc.stderr
    proc = make_storage(archive, tmp_path / "o2", "--token-auth", "on", "--management-address",
                        "http://127.0.0.1:8085")
    assert proc.returncode == 2 and "different addresses" in proc.stderr


def test_the_default_layout_is_production_mode_on_loopback(tmp_path, archive):
    out = tmp_path / "layout"
    proc = make_storage(archive, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "config/config.properties", "config/metrics.yaml", f"model-store/{NAME}.mar"]
    assert zipfile.ZipFile(out / "model-store" / f"{NAME}.mar").testzip() is None
    props = launcher.read_properties(out / "config" / "config.properties")
    for key in ("inference_address", "management_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "true"  # the wrapper sends no token: loopback instead
    assert props["enable_model_api"] == "false" and props["enable_envvars_config"] == "false"
    assert props["allowed_urls"] == "^$" and "service_envelope" not in props
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == 1
    assert snapshot["models"] == {NAME: {"1.0": {
        "defaultVersion": True, "marName": f"{NAME}.mar", "minWorkers": 1, "maxWorkers": 1, "batchSize": 4,
        "maxBatchDelay": 7, "responseTimeout": 120, "startupTimeout": 600}}}
    assert (out / "config" / "metrics.yaml").read_text() == (REPO / "config" / "metrics.yaml").read_text()


def test_flags_override_the_archive_settings(tmp_path, archive):
    out = tmp_path / "layout"
    assert make_storage(archive, out, "--name", "emb", "--workers", "2", "--batch-size", "64").returncode == 0
    props = launcher.read_properties(out / "config" / "config.properties")
    entry = json.loads(props["model_snapshot"])["models"]["emb"]["1.0"]
    assert (entry["marName"], entry["minWorkers"], entry["maxWorkers"], entry["batchSize"]) == ("emb.mar", 2, 2, 64)
    assert (out / "model-store" / "emb.mar").is_file()


@pytest.mark.torchserve
def test_torchserve_from_the_default_layout_serves_the_wrapper_on_loopback_only(tmp_path, archive):
    """What the wrapper does: GET {management}/models/<name> for READY workers, then POST
    {inference}/v1/models/<name>:predict (v2: /v2/models/<name>/infer), without an Authorization header."""
    layout = tmp_path / "layout"
    ports = free_layout_ports()
    assert make_storage(archive, layout, *layout_port_args(ports, layout)).returncode == 0
    with serve_layout(layout, ports, NAME, token=False) as ts:
        v1 = ts.call("POST", f"/v1/models/{NAME}:predict", {"instances": [["Represent:", "x"]]}, token=None)
        assert v1.status == 200, v1
        v2 = ts.call("POST", f"/v2/models/{NAME}/infer", {"inputs": [
            {"name": "pairs", "datatype": "BYTES", "shape": [1, 2], "data": ["Represent:", "x"]}]}, token=None)
        assert v2.status == 200 and v2.body["outputs"][0]["data"] == v1.body["predictions"][0], v2
        assert ts.call("POST", f"/models?url={NAME}.mar", api="management", token=None).status == 405
        probe = subprocess.run([sys.executable, str(REPO / "docker" / "readiness.py"), "--config",
                                str(layout / "config" / "config.properties")], capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(ts.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert {port for _, port in listening} >= set(ports.values()), listening
        # Java reports IPv4 loopback as IPv4-mapped IPv6.
        assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}, listening


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "a..b", "x\ncors_allowed_origin=*", "a\\b", " x", ""])
def test_a_model_name_that_is_not_a_plain_name_is_refused(tmp_path, archive, name):
    """The name becomes a file name and a config line: nothing is written outside --out, no line injected."""
    out = tmp_path / "deep" / "layout"
    proc = make_storage(archive, out, "--name", name)
    assert proc.returncode == 1 and "is not allowed" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.mar").exists() and not (tmp_path / "deep" / "x.mar").exists()
    assert not (out / "config" / "config.properties").exists()


def test_a_hostile_name_in_the_archive_manifest_is_refused(tmp_path, archive):
    hostile = tmp_path / "hostile.mar"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelName"] = "../../escaped"
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    proc = make_storage(hostile, tmp_path / "layout")
    assert proc.returncode == 1 and "is not allowed" in proc.stderr and "--name" in proc.stderr
    assert not list(tmp_path.rglob("escaped.mar"))
    assert make_storage(hostile, tmp_path / "named", "--name", "fine").returncode == 0


def test_the_layout_config_is_the_base_plus_the_kserve_overlay_sized_for_its_workers(tmp_path, archive):
    out = tmp_path / "layout"
    assert make_storage(archive, out, "--workers", "4", "--batch-size", "128").returncode == 0
    props = launcher.read_properties(out / "config" / "config.properties")
    expected = launcher.render_config(capacity=launcher.Capacity(4, 128))[1]
    assert props["vmargs"] == expected["vmargs"]
    for key in ("max_request_size", "max_response_size", "decode_input_request", "allowed_urls"):
        assert props[key] == expected[key], key
