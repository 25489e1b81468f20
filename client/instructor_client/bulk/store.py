"""Durable progress of a bulk run: ``<output>.parts/``, one file per finished request.

Each finished request's vectors land in ``vectors-<start>-<end>.npy`` (float32; start/end index the run's
good rows) written to a temporary name, fsync'ed and renamed: a rename is atomic, so after a crash or a
``kill -9`` every chunk file is complete and a half-written one is only a ``*.tmp`` that the next run
deletes. ``manifest.json`` pins the input (sha256) and the settings that change vectors, so ``--resume``
never mixes vectors of two different inputs. The directory goes away once the output is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = re.compile(r"^vectors-(\d+)-(\d+)\.npy$")
MANIFEST = "manifest.json"


class ResumeError(Exception):
    """The parts directory cannot be used as asked (exists without --resume, or belongs to another run)."""


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


class PartsStore:
    """The chunk files of one run, keyed by ``(start, end)`` ranges of good-row indices."""

    def __init__(self, output: Path) -> None:
        self.dir = parts_dir_for(output)

    def open(self, manifest: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        """Start a new run (empty directory) or continue one whose manifest equals ``manifest``."""
        if self.dir.exists() and not resume:
            if not overwrite:
                raise ResumeError(f"{self.dir} holds an interrupted run: pass --resume to continue it "
                                  "or --overwrite to start again")
            shutil.rmtree(self.dir)
        if self.dir.exists():
            try:
                found = json.loads((self.dir / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                found = None
            if found is None and not self.done():
                # Killed between creating the directory and writing its manifest: nothing to keep.
                _atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
                found = manifest
            if found != manifest:
                differs = sorted(k for k in manifest if not isinstance(found, dict) or found.get(k) != manifest[k])
                raise ResumeError(f"{self.dir} was made for another input or settings (differs: "
                                  f"{', '.join(differs) or 'manifest'}): pass --overwrite to start again")
            for leftover in self.dir.glob("*.tmp"):
                leftover.unlink()  # a write a kill interrupted; its rows are simply embedded again
            return
        self.dir.mkdir(parents=True)
        _atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def done(self) -> list[tuple[int, int]]:
        """The finished ranges, sorted."""
        ranges = []
        for path in self.dir.iterdir():
            match = _CHUNK.match(path.name)
            if match:
                ranges.append((int(match.group(1)), int(match.group(2))))
        return sorted(ranges)

    def write(self, start: int, end: int, vectors: Any) -> None:
        """Store the vectors of rows ``start..end-1`` durably (atomic rename after fsync)."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != end - start:
            raise ValueError(f"rows {start}..{end}: expected {end - start} vectors, got shape {array.shape}")
        path = self.dir / f"vectors-{start:09d}-{end:09d}.npy"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.dir)

    def load(self, n_rows: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors of all n_rows rows or None if no chunk exists, boolean mask of the rows that have one)."""
        present = np.zeros(n_rows, dtype=bool)
        vectors: np.ndarray | None = None
        for start, end in self.done():
            chunk = np.load(self.dir / f"vectors-{start:09d}-{end:09d}.npy")
            if vectors is None:
                vectors = np.zeros((n_rows, chunk.shape[1]), dtype=np.float32)
            if present[start:end].any():
                raise ResumeError(f"{self.dir}: chunks overlap at rows {start}..{end}; pass --overwrite")
            vectors[start:end] = chunk
            present[start:end] = True
        return vectors, present

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself must reach the disk for a power cut; a kill -9 needs only the atomic rename.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
