"""The archive builder as a user meets it: scripts/build_archive.sh --help, archives of the documented layout,
models the server cannot load refused with the server's own message, bad settings refused before any work."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts import model_archive as bma
from tests.torchserve_harness import REPO, build_with_script, free_ports, run_script


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


def test_a_batch_delay_of_zero_is_refused_because_torchserve_would_wait_100_ms(tmp_path):
    proc = run_script("build_archive.sh", "--max-batch-delay", "0", "--store", str(tmp_path / "store"))
    assert proc.returncode == 1
    assert "--max-batch-delay must be at least 1 ms" in proc.stderr and "100 ms" in proc.stderr
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




def test_a_store_that_cannot_be_a_directory_is_a_clear_error_not_a_traceback(tiny_models, tmp_path):
    in_the_way = tmp_path / "store"
    in_the_way.write_text("a file where the store should be")
    for store in (in_the_way, in_the_way / "sub"):
        proc = run_script("build_archive.sh", "--model", str(tiny_models["tiny-instructor-relu"]), "--name", "t",
                          "--store", str(store))
        assert proc.returncode == 1, proc.stderr
        assert f"build_archive: error: --store {store}: cannot use it as the model store" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert in_the_way.read_text() == "a file where the store should be"
