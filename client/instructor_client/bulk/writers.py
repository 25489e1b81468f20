"""Write the embedded rows, in input order, as .parquet, .npy (+ .ids.jsonl) or .jsonl, one chunk at a time.

Every row carries ``line`` (where it was in the input) and ``id`` (the input's id, or null), so rows
stay joinable with the input even when rows were skipped or refused. The rows come from the run's
stored chunks one chunk at a time, so writing takes the memory of one chunk whatever the output's size.
Files are written under a temporary name and renamed, so an output file is either complete or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

OUTPUT_FORMATS = {".parquet": "parquet", ".npy": "npy", ".jsonl": "jsonl"}
Chunk = tuple[Sequence[tuple[int, Any]], np.ndarray]  # ([(line, id), ...], float32 vectors)


def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"--output must end in {', '.join(OUTPUT_FORMATS)}; got {path.name}") from None


def ids_path(output: Path) -> Path:
    """The sidecar of an .npy output: one {"line", "id"} per vector row."""
    return output.with_suffix(".ids.jsonl")


def write_output(path: Path, chunks: Callable[[], Iterable[Chunk]], rows: int, dim: int) -> list[Path]:
    """Write ``rows`` rows of ``dim`` floats from ``chunks()`` (called once per pass); returns the files."""
    fmt = output_format(path)
    if fmt == "npy":
        sidecar = ids_path(path)
        _replace(path, lambda handle: _write_npy(handle, chunks(), rows, dim))
        _replace(sidecar, lambda handle: _write_ids(handle, chunks()))
        return [path, sidecar]
    if fmt == "jsonl":
        _replace(path, lambda handle: _write_jsonl(handle, chunks(), dim))
        return [path]
    id_type = _parquet_id_type(chunks())
    _replace(path, lambda handle: _write_parquet(handle, chunks(), dim, id_type))
    return [path]


def _write_npy(handle: BinaryIO, chunks: Iterable[Chunk], rows: int, dim: int) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    np.lib.format.write_array_header_1_0(handle, header)
    for _, vectors in chunks:
        handle.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())


def _write_ids(handle: BinaryIO, chunks: Iterable[Chunk]) -> None:
    for rows, _ in chunks:
        handle.write("".join(json.dumps({"line": line, "id": row_id}) + "\n" for line, row_id in rows).encode())


def _write_jsonl(handle: BinaryIO, chunks: Iterable[Chunk], dim: int) -> None:
    # %.9g round-trips float32 exactly and is ~10x faster than json.dumps on a list of floats.
    row_format = "[" + ",".join(["%.9g"] * dim) + "]"
    for rows, vectors in chunks:
        for (line, row_id), vector in zip(rows, vectors, strict=True):
            head = json.dumps({"line": line, "id": row_id})[:-1]
            handle.write(f'{head}, "vector": {row_format % tuple(vector.tolist())}}}\n'.encode())


def _parquet_id_type(chunks: Iterable[Chunk]) -> Any:
    """One Arrow type for the id column of every chunk: the ids' own type if they share one, else string."""
    pa = _pyarrow()[0]
    kinds: set[type] = set()
    for rows, _ in chunks:
        for _, row_id in rows:
            if row_id is None:
                continue
            if isinstance(row_id, int) and not isinstance(row_id, bool) and not -(2**63) <= row_id < 2**63:
                return pa.string()  # beyond int64: the whole column is text
            kinds.add(type(row_id))
    if not kinds:
        return pa.null()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def _parquet_ids(ids: Sequence[Any], id_type: Any) -> Any:
    pa = _pyarrow()[0]
    if pa.types.is_string(id_type):
        return pa.array([None if v is None else str(v) for v in ids], type=id_type)
    return pa.array(list(ids), type=id_type)


def _write_parquet(handle: BinaryIO, chunks: Iterable[Chunk], dim: int, id_type: Any) -> None:
    pa, pq = _pyarrow()
    schema = pa.schema([("line", pa.int64()), ("id", id_type), ("vector", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(handle, schema) as writer:
        for rows, vectors in chunks:
            flat = pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1))
            ids = _parquet_ids([row_id for _, row_id in rows], id_type)
            writer.write_table(pa.table({
                "line": pa.array([line for line, _ in rows], type=pa.int64()),
                "id": ids,
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            }, schema=schema))


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("Parquet needs pyarrow: pip install 'instructor-serve-client[parquet]'") from None
    return pa, pq


def _replace(path: Path, write: Callable[[BinaryIO], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
