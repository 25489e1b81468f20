"""Which files of a model directory go into the archive, and the server's own reader run on them.

The weight-file rules are the model reader's (handler/model_directory.py: WEIGHT_CHOICES for the formats,
check_model_directory for everything the server loads): this module only picks the files those rules
name and stages them; what the server cannot load is refused with the reader's own message.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from handler.model_directory import (
    ARCHIVE_MODEL_SUBDIR,
    WEIGHT_CHOICES,
    ModelDirectoryError,
    check_model_directory,
)
from scripts.model_archive.spec import HANDLER_ENTRY, BuildError

# The files a sentence-transformers model needs; weights are chosen separately (never two formats).
CONFIG_PATTERNS = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.txt",
    "1_Pooling/*",
    "2_Dense/*",
    "3_Normalize/*",
)
# Model types whose spiece.model this script can turn into the tokenizer.json the server reads.
SPIECE_MODEL_TYPES = ("t5", "mt5")



def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def choose_weights(files: Iterable[str]) -> tuple[str, ...]:
    """Pick ONE weight format for the root module from a repository's file names.

    Returns the glob patterns of the chosen weights (e.g. ``("model.safetensors",)``).
    """
    names = [f for f in files if "/" not in f]
    for choice in WEIGHT_CHOICES:
        if choice[0] in names and all(any(fnmatch.fnmatchcase(n, p) for n in names) for p in choice):
            return choice
    raise BuildError(
        "No model weights found (looked for model.safetensors, pytorch_model.bin and their sharded "
        "variants). Is this a sentence-transformers / INSTRUCTOR model directory (for a Hugging Face cache: "
        ".../snapshots/<hash>/)?"
    )



def select_files(files: Iterable[str]) -> list[str]:
    """From a model's relative file paths, the ones to serve it: config, tokenizer, ONE weight format.

    The root module's weights come in one format (see WEIGHT_CHOICES); a module folder such as
    2_Dense/ that holds both keeps model.safetensors only.
    """
    names = sorted(files)
    weights = choose_weights(names)
    picked = [f for f in names if _matches(f, CONFIG_PATTERNS) or _matches(f, weights)]
    pickles = {f for f in picked if f.endswith("/pytorch_model.bin")}
    shadowed = {f for f in pickles if f.removesuffix("pytorch_model.bin") + "model.safetensors" in picked}
    return [f for f in picked if f not in shadowed]


def model_files(model_dir: Path) -> list[str]:
    """The files of a local model directory to pack (hidden files and folders, e.g. .cache/, skipped)."""
    return select_files(
        p.relative_to(model_dir).as_posix()
        for p in model_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    )


def validate_model_dir(model_dir: Path) -> list[str]:
    """The files of ``model_dir`` to pack. Whether they make a model the server loads is checked once, by
    the server's reader on the staged files (check_staged_model), with the reader's own messages."""
    if not model_dir.is_dir():
        raise BuildError(f"Model directory {model_dir} does not exist.")
    try:
        return model_files(model_dir)
    except BuildError as e:
        raise BuildError(f"{model_dir}: {e}") from None


def convert_spiece_tokenizer(model_dir: Path, out: Path) -> None:
    """Write the tokenizer.json that transformers' T5TokenizerFast builds from ``model_dir``'s spiece.model.

    Token ids equal those of the tokenizer.json the hkunlp/instructor-* repos ship (tested on the tiny
    models: tests/test_scripts.py). Needs transformers and sentencepiece, imported only here.
    """
    try:
        from transformers import T5TokenizerFast
    except ImportError as e:
        raise BuildError(f"Converting spiece.model needs transformers and sentencepiece ({e}).") from None
    try:
        tokenizer = T5TokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:  # sentencepiece/protobuf missing, a broken spiece.model ...
        raise BuildError(
            f"Cannot convert {model_dir / 'spiece.model'} into tokenizer.json ({type(e).__name__}: {e}). "
            "Download the model's tokenizer.json (the hkunlp/instructor-* repos ship one) into the directory."
        ) from None
    tokenizer.backend_tokenizer.save(str(out))


def check_staged_model(model_dir: Path, staged: Path) -> None:
    """Run the server's own reader on the files being packed (``staged``, the archive's model folder).

    A T5 model that ships only spiece.model gets the tokenizer.json converted from it. Raises BuildError
    with the reader's message, naming the files of ``model_dir``.
    """
    if not (staged / "tokenizer.json").exists() and (staged / "spiece.model").exists():
        config = staged / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type in SPIECE_MODEL_TYPES:
            print(f"{model_dir} has no tokenizer.json: converting spiece.model into one ...", file=sys.stderr)
            convert_spiece_tokenizer(staged, staged / "tokenizer.json")
    try:
        check_model_directory(staged)
    except (ModelDirectoryError, OSError) as e:
        message = str(e).replace(str(staged), str(model_dir))
        hint = " The download may be incomplete: download the model again." if "missing" in message else ""
        raise BuildError(f"The server cannot load this model: {message}.{hint}") from None


def validate_handler_dir(handler_dir: Path) -> Path:
    """Return the handler entry file of the package in ``handler_dir``."""
    entry = handler_dir / HANDLER_ENTRY
    if not entry.is_file():
        raise BuildError(
            f"No handler entry {entry}. The archive needs the handler package (handler/ with "
            f"{HANDLER_ENTRY}); pass --handler-dir DIR to use another one."
        )
    return entry


def stage(model_dir: Path, files: Sequence[str], handler_dir: Path, stage_dir: Path,
          extra_files: Mapping[str, Path] | None = None) -> Path:
    """Lay out the archive root in ``stage_dir`` with symlinks (the archiver copies the targets).

    ``extra_files`` maps archive paths (e.g. ``benchmarks/seed_method.py``) to files to pack as well.
    Returns the staged model folder.
    """
    (stage_dir / "handler").mkdir(parents=True)
    for src in sorted(handler_dir.iterdir()):
        if src.name.startswith(".") or src.name == "__pycache__" or src.suffix == ".pyc":
            continue
        (stage_dir / "handler" / src.name).symlink_to(src.resolve())
    for rel in files:
        dst = stage_dir / ARCHIVE_MODEL_SUBDIR / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((model_dir / rel).resolve())
    for rel, src in (extra_files or {}).items():
        dst = stage_dir / rel
        if dst.exists() or dst.is_symlink():
            raise BuildError(f"extra file {rel!r} would replace a file of the archive.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(Path(src).resolve())
    return stage_dir / ARCHIVE_MODEL_SUBDIR

