"""The scripts as a user meets them: --help, archives from build_archive.sh, failures that say what to do,
the secure configuration, and register/serve/stop against real TorchServes (marked torchserve)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts import build_model_archive as bma
from scripts import torchserve_ctl
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

HELP_DEFAULTS = {
    "build_archive.sh": ["(default: demo)", "(default: no-archive)", "(default: 1)", "(default: 16)",
                     "(default: 5)", "(default: 120)", "(default: 600)", "(handler default: auto)"],
    "register.sh": ["(default: 1)", "(default: 600.0)", "key_file.json"],
    "serve.sh": ["(default: demo", "(default: 1)", "(default: 600)", "(default: no-archive)"],
    "stop.sh": ["(default: 60)"],
}


def archive_members(archive: Path) -> set[str]:
    """Relative file paths inside a no-archive folder or a .mar."""
    if archive.suffix == ".mar":
        with zipfile.ZipFile(archive) as z:
            return {n for n in z.namelist() if not n.endswith("/")}
    return {p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file()}


def read_member(archive: Path, member: str) -> str:
    if archive.suffix == ".mar":
        with zipfile.ZipFile(archive) as z:
            return z.read(member).decode()
    return (archive / member).read_text()


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_every_script_explains_itself_with_defaults(script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps to the terminal width
    for default in HELP_DEFAULTS[script]:
        assert default in text, f"{script} --help does not show {default!r}:\n{proc.stdout}"


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_help_works_before_the_environment_exists(script, tmp_path):
    proc = run_script(script, "--help", env={"VENV": str(tmp_path / "no-venv-yet")})
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


@pytest.mark.parametrize("script", sorted(HELP_DEFAULTS))
def test_an_unknown_option_is_refused(script):
    required = ["--name", "x"] if script == "register.sh" else []
    proc = run_script(script, *required, "--no-such-option")
    assert proc.returncode == 2
    assert "--no-such-option" in proc.stderr


# --------------------------------------------------------------------------- build_archive.sh


@pytest.mark.parametrize("fmt", ["no-archive", "mar"])
def test_build_demo_gives_the_documented_layout_with_pinned_workers(fmt, tmp_path):
    store = tmp_path / "store"
    build_with_script("demo", "demo", store, "--format", fmt, "--workers", "2", "--precision", "float32")
    archive = store / ("demo.mar" if fmt == "mar" else "demo")
    members = archive_members(archive)

    handler_files = {f"handler/{p.name}" for p in (REPO / "handler").glob("*.py")}
    assert "torchserve_handler.py" in members  # the entry, at the archive root
    assert handler_files <= members  # the whole package, so `from handler.x import y` works
    for needed in ("model/config.json", "model/modules.json", "model/tokenizer.json",
                   "model/model.safetensors", "model/1_Pooling/config.json"):
        assert needed in members
    assert not any("__pycache__" in m or m.endswith(".pyc") for m in members)
    assert "model/pytorch_model.bin" not in members

    manifest = json.loads(read_member(archive, "MAR-INF/MANIFEST.json"))
    assert manifest["model"]["handler"] == "torchserve_handler.py"
    assert manifest["model"]["configFile"] == "model-config.yaml"
    config = yaml.safe_load(read_member(archive, "model-config.yaml"))
    assert config["minWorkers"] == config["maxWorkers"] == 2
    assert (config["batchSize"], config["maxBatchDelay"]) == (16, 5)
    assert (config["responseTimeout"], config["startupTimeout"]) == (120, 600)
    assert config["handler"] == {"precision": "float32"}


def test_rebuilding_in_the_other_format_replaces_the_old_archive(tmp_path):
    store = tmp_path / "store"
    build_with_script("demo", "demo", store)
    build_with_script("demo", "demo", store, "--format", "mar")
    assert sorted(p.name for p in store.iterdir()) == ["demo.mar"]  # no leftovers, no temp dirs


def test_build_tiny_instructor_model_from_a_local_directory(tiny_models, tmp_path):
    store = tmp_path / "store"
    proc = build_with_script(str(tiny_models["tiny-instructor-relu"]), "tiny", store, "--max-seq-length", "64")
    members = archive_members(store / "tiny")
    assert {"model/pytorch_model.bin", "model/spiece.model", "model/2_Dense/config.json",
            "model/2_Dense/pytorch_model.bin"} <= members
    assert "Built" in proc.stdout
    assert yaml.safe_load((store / "tiny" / "model-config.yaml").read_text())["handler"] == {"max_seq_length": 64}


def test_a_directory_with_both_weight_formats_is_packed_with_safetensors_only(tiny_models, tmp_path):
    model = tmp_path / "both"
    shutil.copytree(tiny_models["tiny-instructor-gated"], model)
    shutil.copy(tiny_models["tiny-instructor-relu"] / "pytorch_model.bin", model / "pytorch_model.bin")
    (model / ".cache").mkdir()
    (model / ".cache" / "junk").write_text("x")
    (model / "README.md").write_text("not needed to serve")
    build_with_script(str(model), "both", tmp_path / "store")
    members = archive_members(tmp_path / "store" / "both")
    assert "model/model.safetensors" in members
    assert not {"model/pytorch_model.bin", "model/README.md", "model/.cache/junk"} & members


def test_select_files_picks_one_weight_format_and_keeps_shards_together():
    config = ["config.json", "modules.json", "tokenizer.json", "1_Pooling/config.json"]
    assert bma.select_files([*config, "model.safetensors", "pytorch_model.bin", "README.md", "onnx/model.onnx"]) \
        == sorted([*config, "model.safetensors"])
    shards = ["model.safetensors.index.json", "model-00001-of-00002.safetensors",
              "model-00002-of-00002.safetensors"]
    assert set(bma.select_files([*config, *shards, "pytorch_model.bin"])) == {*config, *shards}
    dense = ["2_Dense/config.json", "2_Dense/pytorch_model.bin", "2_Dense/model.safetensors"]
    assert "2_Dense/pytorch_model.bin" not in bma.select_files([*config, "pytorch_model.bin", *dense])
    with pytest.raises(bma.BuildError, match="No model weights"):
        bma.select_files(config)


@pytest.mark.parametrize(("model", "name"), [
    ("demo", "demo"), ("hkunlp/instructor-large", "instructor-large"), ("/models/My Model/", "My-Model"),
])
def test_default_name_is_derived_from_the_model(model, name):
    assert bma.default_name(model) == name


def test_build_from_a_missing_directory_says_what_to_pass(tmp_path):
    proc = run_script("build_archive.sh", "--model", str(tmp_path / "nope"), "--store", str(tmp_path / "store"))
    assert proc.returncode == 1
    assert "no such directory" in proc.stderr
    assert "Hugging Face id" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_build_from_a_directory_without_weights_fails_clearly(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    proc = run_script("build_archive.sh", "--model", str(tmp_path / "m"), "--store", str(tmp_path / "store"))
    assert proc.returncode == 1
    assert "No model weights" in proc.stderr and "model.safetensors" in proc.stderr


def test_build_from_an_incomplete_download_names_the_missing_module(tiny_models, tmp_path):
    model = tmp_path / "partial"
    shutil.copytree(tiny_models["tiny-instructor-relu"], model)
    shutil.rmtree(model / "2_Dense")
    proc = run_script("build_archive.sh", "--model", str(model), "--store", str(tmp_path / "store"))
    assert proc.returncode == 1
    assert "2_Dense" in proc.stderr and "download the model again" in proc.stderr


def _unsupported_pooling(model: Path) -> None:
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))


def _unsupported_dense_activation(model: Path) -> None:
    config = json.loads((model / "2_Dense" / "config.json").read_text())
    (model / "2_Dense" / "config.json").write_text(json.dumps({**config, "activation_function": "x.Evil"}))


def _dense_weights_of_another_shape(model: Path) -> None:
    import torch

    torch.save({"linear.weight": torch.zeros(3, 3)}, model / "2_Dense" / "pytorch_model.bin")


def _unreadable_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").write_text("{not json")


@pytest.mark.parametrize("damage", [_unsupported_pooling, _unsupported_dense_activation,
                                    _dense_weights_of_another_shape, _unreadable_tokenizer])
def test_a_model_the_server_cannot_load_is_refused_at_build_time_with_the_servers_message(
        damage, tiny_models, tmp_path):
    from handler.model_directory import ModelDirectoryError, check_model_directory

    model = tmp_path / "model"
    shutil.copytree(tiny_models["tiny-instructor-relu"], model)
    damage(model)
    with pytest.raises(ModelDirectoryError) as server_error:
        check_model_directory(model)
    with pytest.raises(bma.BuildError) as build_error:
        bma.build_archive(model, "damaged", tmp_path / "store")
    assert str(server_error.value) in str(build_error.value)
    assert not (tmp_path / "store").exists()


def test_a_model_without_tokenizer_json_or_spiece_model_is_refused_with_what_to_do(tmp_path):
    model = tmp_path / "minilm"
    shutil.copytree(bma.locate_demo_model(), model)
    (model / "tokenizer.json").unlink()  # BERT: vocab.txt is left, which the server does not read
    proc = run_script("build_archive.sh", "--model", str(model), "--store", str(tmp_path / "store"))
    assert proc.returncode == 1
    assert "tokenizer.json is missing" in proc.stderr and "download the model again" in proc.stderr


def test_a_t5_model_with_only_spiece_model_is_served_with_the_same_tokens_and_vectors(
        tiny_models, reference_fixture, tmp_path):
    """hkunlp repos ship tokenizer.json; a copy with only spiece.model gets one converted at build time."""
    from tokenizers import Tokenizer

    from handler.encoder import InstructorEncoder
    from handler.settings import Settings

    original = tiny_models["tiny-instructor-gated"]
    model = tmp_path / "spiece-only"
    shutil.copytree(original, model)
    (model / "tokenizer.json").unlink()
    archive = bma.build_archive(model, "spiece", tmp_path / "store")
    assert not (model / "tokenizer.json").exists()  # the source directory is left as it was

    cases = reference_fixture["cases"]["pairs"]
    texts = [t for c in cases for t in (c["instruction"], c["text"], c["instruction"] + c["text"])]
    texts += [t["text"] for t in reference_fixture["cases"]["texts"]]
    texts += ["a </s> b", "x<pad>y", "  two  spaces ", "Ärger über Öl"]
    shipped = Tokenizer.from_file(str(original / "tokenizer.json"))
    converted = Tokenizer.from_file(str(archive / "model" / "tokenizer.json"))
    assert [e.ids for e in converted.encode_batch(texts)] == [e.ids for e in shipped.encode_batch(texts)]

    expected = reference_fixture["models"]["tiny-instructor-gated"]["encode"]["pairs"]
    embeddable = [c for c in cases if expected[c["id"]]["pooled_tokens"] > 0]  # the others are refused (422)
    served = InstructorEncoder(archive / "model", Settings(warmup=False))
    vectors = served.encode([(c["instruction"], c["text"]) for c in embeddable]).vectors
    assert np.abs(vectors - np.array([expected[c["id"]]["vector"] for c in embeddable])).max() <= 1e-5


@pytest.mark.parametrize("env", [
    {"HF_HUB_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_ports(1)[0]}"},  # nothing listens
], ids=["offline-mode", "hub-unreachable"])
def test_build_from_a_hub_id_without_network_says_what_to_do(env, tmp_path):
    env = {**env, "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    started = time.monotonic()
    proc = run_script("build_archive.sh", "--model", "hkunlp/instructor-large", "--store", str(tmp_path / "s"),
                      env=env, timeout=120)
    assert proc.returncode == 1
    assert "--model DIR" in proc.stderr and "HF_ENDPOINT" in proc.stderr
    assert "not in the local cache" in proc.stderr
    assert time.monotonic() - started < 60


def test_build_from_a_hub_id_offline_uses_the_hugging_face_cache(tiny_models, tmp_path):
    # The cache layout huggingface_hub writes: refs/main names the snapshot folder.
    repo_dir = tmp_path / "hf-home" / "hub" / "models--hkunlp--instructor-tiny"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_models["tiny-instructor-gated"], repo_dir / "snapshots" / ("0" * 40))
    proc = run_script("build_archive.sh", "--model", "hkunlp/instructor-tiny", "--store", str(tmp_path / "s"),
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert proc.returncode == 0, proc.stderr
    assert "model/model.safetensors" in archive_members(tmp_path / "s" / "instructor-tiny")


@pytest.mark.parametrize(("flag", "message"), [
    (["--precision", "fp16"], "use bfloat16"),
    (["--set", "max_batch_rows=0"], "max_batch_rows"),
    (["--set", "no_such_setting=1"], "unknown setting"),
    (["--name", "bad name!"], "--name"),
    (["--workers", "0"], "--workers"),
])
def test_build_refuses_bad_settings_before_doing_any_work(flag, message, tmp_path):
    proc = run_script("build_archive.sh", "--model", "demo", "--store", str(tmp_path / "s"), *flag)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- configuration


def test_config_properties_defaults_are_secure():
    props = torchserve_ctl.read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "true"
    assert props["install_py_dep_per_model"] == "false"
    assert props["default_workers_per_model"] == "1"
    assert props["metrics_mode"] == "prometheus"
    assert "-Xmx" in props["vmargs"]
    # No URL of any kind may be registered: models come by name from model_store only.
    patterns = props["allowed_urls"].split(",")
    for url in ("http://evil.example/x.mar", "https://evil.example/x.mar", "file:///etc/passwd",
                f"file://{REPO}/model_store/demo.mar", "s3://bucket/x.mar"):
        assert not any(re.fullmatch(p, url) for p in patterns), url


def test_rendered_config_overrides_ports_and_works_from_any_directory(tmp_path):
    env = {"TS_INFERENCE_PORT": "18080", "TS_MANAGEMENT_PORT": "18081", "TS_GRPC_MANAGEMENT_PORT": "17071"}
    text, props = torchserve_ctl.render_config(torchserve_ctl.env_overrides(env))
    assert props["inference_address"] == "http://127.0.0.1:18080"
    assert props["management_address"] == "http://127.0.0.1:18081"
    assert props["grpc_management_port"] == "17071"
    assert props["metrics_address"] == "http://127.0.0.1:8082"  # untouched
    assert props["model_store"] == str(REPO / "model_store")
    assert props["metrics_config"] == str(REPO / "config" / "metrics.yaml")
    assert "# --- Security ---" in text  # comments kept
    (tmp_path / "rendered.properties").write_text(text)
    assert torchserve_ctl.read_properties(tmp_path / "rendered.properties") == props
    with pytest.raises(torchserve_ctl.CtlError, match="TS_METRICS_PORT"):
        torchserve_ctl.env_overrides({"TS_METRICS_PORT": "80a"})


def test_metrics_yaml_declares_every_metric_the_handler_registers():
    from ts.metrics.metric_type_enum import MetricTypes

    from handler.ts_metrics import HandlerMetrics

    class RecordingCache:
        def __init__(self):
            self.added = {}

        def add_metric_to_cache(self, name, unit, dimension_names, metric_type):
            self.added[name] = (metric_type.value, list(dimension_names))

    cache = RecordingCache()
    HandlerMetrics(cache, "m")
    declared = yaml.safe_load((REPO / "config" / "metrics.yaml").read_text())["model_metrics"]
    by_name = {m["name"]: (kind, m["dimensions"]) for kind, metrics in declared.items() for m in metrics}
    assert cache.added, "HandlerMetrics registered nothing"
    for name, (kind, dims) in cache.added.items():
        assert name in by_name, f"{name} is not declared in config/metrics.yaml: it would never reach /metrics"
        assert by_name[name] == (kind, dims), f"{name}: yaml {by_name[name]} != handler {(kind, dims)}"
    assert {m.value for m in MetricTypes} >= set(declared)


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
    with pytest.raises(torchserve_ctl.CtlError, match="already runs") as refused:
        torchserve_ctl.start(tmp_path, tmpdir=demo_server.tmpdir,
                             overrides=torchserve_ctl.port_overrides(free_ports(5)))
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
        keys = torchserve_ctl.read_keys(repo / "key_file.json")
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
