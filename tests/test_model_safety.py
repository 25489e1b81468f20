"""Model files are data: loading them must never execute pickled code, and a broken or incomplete
model directory must fail with a message that says what is wrong."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from handler.encoder import InstructorEncoder
from handler.model_directory import ModelDirectoryError, read_model_directory
from handler.settings import Settings


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"linear.weight": _Payload(marker)}, handle)


@pytest.fixture
def relu_copy(tiny_models, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_models["tiny-instructor-relu"], copy)
    return copy


def test_a_pickle_bomb_in_the_encoder_weights_is_refused_not_executed(relu_copy, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious_pickle(relu_copy / "pytorch_model.bin", marker)
    with pytest.raises(pickle.UnpicklingError, match=r"Weights only load failed(.|\n)*WeightsUnpickler error"):
        InstructorEncoder(relu_copy, Settings(warmup=False))
    assert not marker.exists(), "pickled code ran while loading the encoder weights"


def test_a_pickle_bomb_in_the_dense_head_is_refused_not_executed(relu_copy, tmp_path):
    marker = tmp_path / "pwned"
    write_malicious_pickle(relu_copy / "2_Dense" / "pytorch_model.bin", marker)
    with pytest.raises(ModelDirectoryError,
                       match=r"2_Dense/pytorch_model\.bin was refused: it unpickles more than tensors \(Unsupported"):
        InstructorEncoder(relu_copy, Settings(warmup=False))
    assert not marker.exists(), "pickled code ran while loading the Dense head"


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda d: shutil.rmtree(d), "does not exist"),
    (lambda d: (d / "pytorch_model.bin").unlink(), "no weights"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda d: (d / "modules.json").write_text("{not json"), "modules.json is not valid JSON"),
    (lambda d: (d / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Evil"}])),
     "module type 'x.Evil' is not supported"),
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True})),
     "pooling ['weightedmean'] is not supported"),
])
def test_a_broken_model_directory_is_refused_with_a_clear_message(relu_copy, damage, fragment):
    damage(relu_copy)
    with pytest.raises(ModelDirectoryError) as caught:
        read_model_directory(relu_copy)
    assert fragment in str(caught.value)


def test_truncated_weights_fail_to_load_with_an_error(relu_copy):
    weights = relu_copy / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    # transformers hands torch's own error through: the checkpoint is not a complete zip archive.
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        InstructorEncoder(relu_copy, Settings(warmup=False))


def test_truncated_dense_weights_are_refused_naming_the_file(relu_copy):
    weights = relu_copy / "2_Dense" / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelDirectoryError, match=r"2_Dense/pytorch_model\.bin is not a readable PyTorch checkpoint"):
        InstructorEncoder(relu_copy, Settings(warmup=False))


def test_dense_weights_that_do_not_match_the_config_are_refused(relu_copy):
    torch.save({"linear.weight": torch.zeros(3, 3)}, relu_copy / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(ModelDirectoryError, match=r"do not match config\.json"):
        InstructorEncoder(relu_copy, Settings(warmup=False))
