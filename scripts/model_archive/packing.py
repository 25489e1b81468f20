"""Packing: torch-model-archiver on the staged files, the result moved into the model store atomically."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from scripts.launcher.errors import CtlError
from scripts.launcher.names import check_model_name
from scripts.model_archive.files import check_staged_model, stage, validate_handler_dir, validate_model_dir
from scripts.model_archive.model_config import load_settings_class, render_model_config, validate_settings
from scripts.model_archive.sources import resolve_model
from scripts.model_archive.spec import (
    CONFIG_FILE_NAME,
    DEFAULT_FORMAT,
    DEFAULT_HANDLER_DIR,
    DEFAULT_SPEC,
    DEFAULT_STORE,
    FORMATS,
    ArchiveSpec,
    BuildError,
)


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
    spec: ArchiveSpec = DEFAULT_SPEC,
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
    try:  # the name becomes a folder of the store and a URL: the launcher's one rule for it
        check_model_name(name, "--name")
    except CtlError as e:
        raise BuildError(str(e)) from None
    if fmt not in FORMATS:
        raise BuildError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    for label, value in (("--workers", spec.workers), ("--batch-size", spec.batch_size)):
        if value < 1:
            raise BuildError(f"{label} must be at least 1, not {value}.")
    if spec.max_batch_delay_ms < 1:
        # TorchServe 0.12 reads 0 as "not set" and waits its default 100 ms for every batch.
        raise BuildError(f"--max-batch-delay must be at least 1 ms, not {spec.max_batch_delay_ms} (TorchServe "
                         "reads 0 as unset and then waits 100 ms to fill each batch).")
    default_entry = validate_handler_dir(handler_dir)
    entry = Path(entry) if entry else default_entry
    if not entry.is_file():
        raise BuildError(f"No handler entry file {entry}.")
    validated = validate_settings(load_settings_class(handler_dir), dict(spec.handler_settings))
    spec = dataclasses.replace(spec, handler_settings=tuple(validated.items()))
    model_dir = resolve_model(str(model), revision)
    files = validate_model_dir(model_dir)
    store = Path(store)
    _check_store(store)  # before the staging, which takes a while; nothing is created for a build that fails
    with tempfile.TemporaryDirectory(prefix="instructor-stage-") as tmp:
        stage_dir = Path(tmp) / "root"
        staged_model = stage(model_dir, files, handler_dir, stage_dir, extra_files)
        check_staged_model(model_dir, staged_model)
        config_file = Path(tmp) / CONFIG_FILE_NAME
        config_file.write_text(render_model_config(spec))
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _store_error(store, e.strerror or str(e)) from None
        return run_archiver(name, stage_dir, config_file, store.resolve(), fmt, entry)


def _check_store(store: Path) -> None:
    """BuildError unless ``store`` is, or can be made, a directory this process writes to (created later)."""
    existing = store
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:  # a dangling link, or nothing exists at all
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise _store_error(store, f"{existing} is not a directory")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise _store_error(store, f"{existing} is not writable")


def _store_error(store: Path, why: str) -> BuildError:
    return BuildError(f"--store {store}: cannot use it as the model store ({why}); pass a directory you can "
                      "write to.")
