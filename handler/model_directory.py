"""Read a sentence-transformers model directory without executing any of its code.

Understands the hkunlp/instructor-* layout (T5 encoder at the root, ``1_Pooling``, ``2_Dense``, a
``3_Normalize`` entry in modules.json without a folder) and ordinary sentence-transformers models
(e.g. all-MiniLM-L6-v2: BERT, mean pooling, Normalize). A plain Hugging Face encoder directory
(no modules.json) gets mean pooling, as sentence-transformers would give it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where weights are loaded: the archive builder reads files without it
    import torch

# Where the model files sit inside a TorchServe archive (written by the archive builder, read by the handler).
ARCHIVE_MODEL_SUBDIR = "model"


class ModelDirectoryError(ValueError):
    """The model directory is missing, incomplete or uses something we do not support."""


POOLING_MODES = ("mean", "cls", "max", "lasttoken")
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
# Activation class paths sentence-transformers writes into 2_Dense/config.json -> torch.nn class name.
_DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "Identity",
    "torch.nn.modules.activation.Tanh": "Tanh",
}
# The weight files of a module, in order of preference (safetensors over pickles, one file over shards):
# the loader accepts any of them, the archive builder packs the first one present.
WEIGHT_CHOICES: tuple[tuple[str, ...], ...] = (
    ("model.safetensors",),
    ("model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("pytorch_model.bin",),
    ("pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
)


@dataclasses.dataclass(frozen=True)
class ModelDirectory:
    """What the files of a model directory say; no weights are loaded here except the Dense head."""

    root: Path
    transformer_dir: Path
    model_type: str
    max_seq_length: int | None
    do_lower_case: bool
    pooling_mode: str
    dense_dirs: tuple[Path, ...]
    normalize: bool

    @property
    def is_instructor_layout(self) -> bool:
        """T5 encoder followed by a Dense head: the hkunlp/instructor-* layout."""
        return self.model_type in ("t5", "mt5") and bool(self.dense_dirs)

    @property
    def tokenizer_file(self) -> Path:
        return self.transformer_dir / "tokenizer.json"


def read_model_directory(path: str | Path) -> ModelDirectory:
    """Parse modules.json and the per-module configs of ``path``; raise ModelDirectoryError if unusable."""
    root = Path(path)
    if not root.is_dir():
        raise ModelDirectoryError(f"model directory {root} does not exist or is not a directory")
    modules = _read_json(root / "modules.json") if (root / "modules.json").exists() else None
    if modules is None:
        transformer_dir, pooling_dir, dense_dirs, normalize = root, None, (), False
    else:
        transformer_dir, pooling_dir, dense_dirs, normalize = _parse_modules(root, modules)

    config_path = transformer_dir / "config.json"
    if not config_path.exists():
        raise ModelDirectoryError(f"{config_path} is missing: not a Hugging Face model directory")
    model_type = str(_read_json(config_path).get("model_type", ""))
    if not _has_weights(transformer_dir):
        raise ModelDirectoryError(
            f"no weights in {transformer_dir}: expected model.safetensors or pytorch_model.bin"
        )
    if not (transformer_dir / "tokenizer.json").exists():
        raise ModelDirectoryError(
            f"{transformer_dir / 'tokenizer.json'} is missing: the server tokenizes with tokenizer.json only "
            "(scripts/build_archive.sh converts a T5 spiece.model into one)"
        )
    sbert = _read_sbert_config(transformer_dir)
    max_seq_length = sbert.get("max_seq_length")
    return ModelDirectory(
        root=root,
        transformer_dir=transformer_dir,
        model_type=model_type,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        pooling_mode=_read_pooling_mode(pooling_dir),
        dense_dirs=dense_dirs,
        normalize=normalize,
    )


def check_model_directory(path: str | Path) -> ModelDirectory:
    """Everything the server reads before the encoder weights, checked: modules, configs, pooling, the
    weight files' format, tokenizer.json (parsed) and the Dense heads (loaded, safely).

    The archive builder calls this on the files it packs, so a model the server cannot load is refused
    at build time with the same message. The encoder weights themselves are not read (multi-GB).
    """
    from tokenizers import Tokenizer

    model_dir = read_model_directory(path)
    try:
        Tokenizer.from_file(str(model_dir.tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception for any parse error
        raise ModelDirectoryError(f"{model_dir.tokenizer_file} cannot be read by tokenizers ({exc})") from None
    load_dense_layers(model_dir)
    return model_dir


def load_dense_layers(model_dir: ModelDirectory) -> list[torch.nn.Module]:
    """The Dense heads as ``nn.Sequential(Linear, activation)``, loaded without unpickling code."""
    import torch

    layers: list[torch.nn.Module] = []
    for dense_dir in model_dir.dense_dirs:
        config = _read_json(dense_dir / "config.json")
        try:
            in_features, out_features = int(config["in_features"]), int(config["out_features"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirectoryError(f"{dense_dir / 'config.json'}: bad in/out_features ({exc})") from exc
        activation_name = config.get("activation_function", "torch.nn.modules.linear.Identity")
        if activation_name not in _DENSE_ACTIVATIONS:
            raise ModelDirectoryError(
                f"{dense_dir / 'config.json'}: activation {activation_name!r} is not supported "
                f"(supported: {sorted(_DENSE_ACTIVATIONS)})"
            )
        linear = torch.nn.Linear(in_features, out_features, bias=bool(config.get("bias", True)))
        state = _load_state_dict(dense_dir)
        # sentence-transformers saves the Linear under the prefix "linear.".
        state = {key.removeprefix("linear."): value for key, value in state.items()}
        try:
            linear.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelDirectoryError(f"{dense_dir}: weights do not match config.json ({exc})") from exc
        activation = getattr(torch.nn, _DENSE_ACTIVATIONS[activation_name])()
        layers.append(torch.nn.Sequential(linear, activation))
    return layers


def _parse_modules(
    root: Path, modules: Any
) -> tuple[Path, Path | None, tuple[Path, ...], bool]:
    if not isinstance(modules, list) or not modules:
        raise ModelDirectoryError(f"{root / 'modules.json'} must be a non-empty list")
    transformer_dir: Path | None = None
    pooling_dir: Path | None = None
    dense_dirs: list[Path] = []
    normalize = False
    for entry in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        module_path = root / str(entry.get("path", ""))
        # 1.0.1 and other forks use their own class names (INSTRUCTOR_Transformer, ...): match the suffix.
        if kind.endswith("Transformer"):
            transformer_dir = module_path
        elif kind.endswith("Pooling"):
            pooling_dir = module_path
        elif kind == "Dense":
            dense_dirs.append(module_path)
        elif kind == "Normalize":
            normalize = True  # hkunlp repos list it without shipping a folder; it has no parameters
        else:
            raise ModelDirectoryError(f"modules.json: module type {entry.get('type')!r} is not supported")
    if transformer_dir is None:
        raise ModelDirectoryError(f"{root / 'modules.json'} has no Transformer module")
    return transformer_dir, pooling_dir, tuple(dense_dirs), normalize


def _read_pooling_mode(pooling_dir: Path | None) -> str:
    if pooling_dir is None:
        return "mean"
    config = _read_json(pooling_dir / "config.json")
    if "pooling_mode" in config and isinstance(config["pooling_mode"], str):
        modes = [config["pooling_mode"].lower()]
    else:
        modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelDirectoryError(
            f"{pooling_dir / 'config.json'}: pooling {modes} is not supported (one of {POOLING_MODES})"
        )
    return modes[0]


def _read_sbert_config(transformer_dir: Path) -> dict[str, Any]:
    path = transformer_dir / "sentence_bert_config.json"
    return _read_json(path) if path.exists() else {}


def _has_weights(directory: Path) -> bool:
    return any((directory / choice[0]).exists() for choice in WEIGHT_CHOICES)


def _load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    import torch
    from safetensors.torch import load_file as load_safetensors

    safetensors_file, pickle_file = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_file.exists():
        try:
            return load_safetensors(str(safetensors_file))
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
            raise ModelDirectoryError(f"{safetensors_file} is not a readable safetensors file ({exc})") from None
    if pickle_file.exists():
        try:
            # weights_only: a pickle that tries to build anything but tensors is refused, not executed.
            return torch.load(pickle_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message is a page of advice; the line naming what was refused is what matters.
            reason = next((line.strip() for line in str(exc).splitlines() if line.startswith("Unsupported")),
                          str(exc).splitlines()[0])
            raise ModelDirectoryError(
                f"{pickle_file} was refused: it unpickles more than tensors ({reason})"
            ) from None
        except (RuntimeError, EOFError) as exc:  # a truncated or corrupt checkpoint
            raise ModelDirectoryError(f"{pickle_file} is not a readable PyTorch checkpoint ({exc})") from None
    raise ModelDirectoryError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ModelDirectoryError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirectoryError(f"{path} is not valid JSON ({exc})") from None
