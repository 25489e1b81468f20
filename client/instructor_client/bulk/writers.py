"""Write the embedded rows, in input order, as .parquet, .npy (+ .ids.jsonl) or .jsonl.

Every row carries ``line`` (where it was in the input) and ``id`` (the input's id, or null), so rows
stay joinable with the input even when bad rows were skipped. Files are written under a temporary
name and renamed, so an output file is either complete or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_FORMATS = {".parquet": "parquet", ".npy": "npy", ".jsonl": "jsonl"}


def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"--output must end in {', '.join(OUTPUT_FORMATS)}; got {path.name}") from None


def ids_path(output: Path) -> Path:
    """The sidecar of an .npy output: one {"line", "id"} per vector row."""
    return output.with_suffix(".ids.jsonl")


def write_output(path: Path, lines: Sequence[int], ids: Sequence[Any], vectors: np.ndarray) -> list[Path]:
    """Write rows (``lines[i]``, ``ids[i]``, ``vectors[i]``); returns the files written."""
    fmt = output_format(path)
    if fmt == "npy":
        _replace(path, lambda handle: np.save(handle, np.asarray(vectors, dtype=np.float32)))
        sidecar = ids_path(path)
        _replace(sidecar, lambda handle: handle.write(_ids_jsonl(lines, ids)))
        return [path, sidecar]
    if fmt == "jsonl":
        _replace(path, lambda handle: _write_jsonl(handle, lines, ids, vectors))
        return [path]
    _replace(path, lambda handle: _write_parquet(handle, lines, ids, vectors))
    return [path]


def _ids_jsonl(lines: Sequence[int], ids: Sequence[Any]) -> bytes:
    rows = zip(lines, ids, strict=True)
    return "".join(json.dumps({"line": line, "id": row_id}) + "\n" for line, row_id in rows).encode()


def _write_jsonl(handle: Any, lines: Sequence[int], ids: Sequence[Any], vectors: np.ndarray) -> None:
    if len(lines) == 0:
        return
    # %.9g round-trips float32 exactly and is ~10x faster than json.dumps on a list of floats.
    row_format = "[" + ",".join(["%.9g"] * vectors.shape[1]) + "]"
    for line, row_id, vector in zip(lines, ids, vectors, strict=True):
        head = json.dumps({"line": line, "id": row_id})[:-1]
        handle.write(f'{head}, "vector": {row_format % tuple(vector.tolist())}}}\n'.encode())


def _write_parquet(handle: Any, lines: Sequence[int], ids: Sequence[Any], vectors: np.ndarray) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("Parquet needs pyarrow: pip install 'instructor-serve-client[parquet]'") from None
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else 0
    flat = pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1))
    try:
        id_column = pa.array(list(ids))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        id_column = pa.array([None if v is None else str(v) for v in ids], type=pa.string())
    table = pa.table({
        "line": pa.array(list(lines), type=pa.int64()),
        "id": id_column,
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    })
    pq.write_table(table, handle)


def _replace(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
