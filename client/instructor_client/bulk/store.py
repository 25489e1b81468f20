"""Durable progress of a bulk run: ``<output>.parts/``, one file per finished request.

Each finished request lands in ``vectors-<start>-<end>.npy`` (start/end index the run's good rows): an
.npy float32 matrix that ``numpy.load`` reads as it is, followed by the rows' ``[line, id]`` as JSON
lines (one file, so one fsync per request). It is written to a temporary name, fsync'ed and renamed: a
rename is atomic, so after a crash or a ``kill -9`` every chunk file is complete and a half-written one
is only a ``*.tmp`` that the next run deletes. ``manifest.json`` pins the input (sha256), the settings
that change vectors and what the vectors come from (see ``probe.py``), so ``--resume`` never mixes
vectors of two inputs or two models. The directory goes away once the output is complete. A parts
folder that is a symbolic link is kept as a link: only this module's files in it are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = re.compile(r"^vectors-(\d+)-(\d+)\.npy$")
_OWN = re.compile(r"^(vectors-\d+-\d+\.npy|manifest\.json)(\.tmp)?$")
MANIFEST = "manifest.json"


class ResumeError(Exception):
    """The parts directory cannot be used as asked (exists without --resume, or belongs to another run)."""


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


class PartsStore:
    """The chunk files of one run, keyed by ``(start, end)`` ranges of good-row indices."""

    def __init__(self, output: Path) -> None:
        self.dir = parts_dir_for(output)

    def has_run(self) -> bool:
        """Whether the parts folder holds (part of) a run: its manifest or a finished chunk."""
        return self.dir.is_dir() and any(_OWN.match(path.name) for path in self.dir.iterdir())

    def open(self, manifest: dict[str, Any], *, resume: bool, overwrite: bool,
             loose: tuple[str, ...] = ()) -> dict[str, Any]:
        """Start a new run (empty directory) or continue one whose manifest equals ``manifest``.

        Keys in ``loose`` are not compared here (the caller compares them its own way); returns the
        manifest in force (the stored one when resuming)."""
        if self.has_run() and not resume:
            if not overwrite:
                raise ResumeError(f"{self.dir} holds an interrupted run: pass --resume to continue it "
                                  "or --overwrite to start again")
            self.remove()
        if self.has_run():
            try:
                found = json.loads((self.dir / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                found = None
            if found is None and not self.done():
                # Killed between creating the directory and writing its manifest: nothing to keep.
                _atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
                found = manifest
            differs = sorted(k for k in manifest
                             if k not in loose and (not isinstance(found, dict) or found.get(k) != manifest[k]))
            if differs:
                shown = "; ".join(f"{k}: {_short(found.get(k) if isinstance(found, dict) else None)} then, "
                                  f"{_short(manifest[k])} now" for k in differs)
                raise ResumeError(f"{self.dir} was made for another input, settings or server ({shown}): "
                                  "resume with the same ones, or pass --overwrite to start again")
            for leftover in self.dir.glob("*.tmp"):
                leftover.unlink()  # a write a kill interrupted; its rows are simply embedded again
            return found  # type: ignore[return-value]
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return manifest

    def done(self) -> list[tuple[int, int]]:
        """The finished ranges, sorted."""
        ranges = []
        for path in self.dir.iterdir():
            match = _CHUNK.match(path.name)
            if match:
                ranges.append((int(match.group(1)), int(match.group(2))))
        return sorted(ranges)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.dir / MANIFEST).read_text(encoding="utf-8"))

    def _path(self, start: int, end: int) -> Path:
        return self.dir / f"vectors-{start:09d}-{end:09d}.npy"

    def write(self, start: int, end: int, rows: list[tuple[int, Any]], vectors: Any) -> None:
        """Store rows ``start..end-1`` (their ``(line, id)`` and vectors) durably: atomic rename after fsync."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != end - start or len(rows) != end - start:
            raise ValueError(f"rows {start}..{end}: expected {end - start} rows and vectors, got {len(rows)} "
                             f"and shape {array.shape}")
        path = self._path(start, end)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, array)
            handle.write("".join(json.dumps([line, row_id]) + "\n" for line, row_id in rows).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    def chunks(self) -> Iterator[tuple[list[tuple[int, Any]], np.ndarray]]:
        """The stored chunks in row order, one at a time: ``([(line, id), ...], float32 vectors)``."""
        cursor = 0
        for start, end in self.done():
            if start < cursor:
                raise ResumeError(f"{self.dir}: chunks overlap at rows {start}..{end}; pass --overwrite")
            cursor = end
            with open(self._path(start, end), "rb") as handle:
                vectors = np.load(handle)
                rows = [tuple(json.loads(line)) for line in handle.read().decode("utf-8").splitlines()]
            yield rows, vectors  # type: ignore[misc]

    def shape(self) -> tuple[int, int]:
        """(rows stored, vector dimension) without loading the vectors."""
        rows, dim = 0, 0
        for start, end in self.done():
            rows += end - start
            if not dim:
                with open(self._path(start, end), "rb") as handle:
                    version = np.lib.format.read_magic(handle)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    dim = int(header(handle)[0][1])
        return rows, dim

    def remove(self) -> None:
        if self.dir.is_symlink():
            # The link may point at a folder of the user's: remove only what this module wrote there.
            for path in self.dir.iterdir():
                if _OWN.match(path.name):
                    path.unlink()
            return
        shutil.rmtree(self.dir, ignore_errors=True)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def missing_ranges(n_rows: int, done: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The gaps of [0, n_rows) not covered by ``done``."""
    gaps, cursor = [], 0
    for start, end in sorted(done):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < n_rows:
        gaps.append((cursor, n_rows))
    return gaps


def _atomic_write(path: Path, data: bytes, sync_dir: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk for a power cut; a kill -9 needs only the atomic rename.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
