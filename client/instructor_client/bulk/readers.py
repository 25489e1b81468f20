"""Read the rows to embed from JSONL, CSV, Parquet or plain text, keeping each row's line number.

A row that cannot be embedded (missing field, empty text, not a string, broken JSON) becomes a BadRow
with its line number and the reason, instead of stopping the read. Line numbers are 1-based physical
lines for JSONL, CSV (the line a record starts on; the header is line 1) and text; for Parquet, the
1-based row number.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv", "parquet", "text")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class Row:
    """One pair to embed; ``line`` locates it in the input, ``id`` is the input's id (or None)."""

    line: int
    id: Any
    instruction: str
    text: str


@dataclass(frozen=True)
class BadRow:
    line: int
    problem: str


@dataclass(frozen=True)
class InputSpec:
    """What to read and how: field names, and the instruction for rows (or text lines) without one."""

    path: Path
    format: str
    instruction: str | None = None
    text_field: str = "text"
    instruction_field: str = "instruction"
    id_field: str = "id"


def detect_format(path: Path) -> str:
    """The format a file name implies (.jsonl/.ndjson, .csv, .parquet, .txt); ValueError otherwise."""
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        choices = ",".join(FORMATS)
        raise ValueError(f"cannot tell the format of {path.name}: pass --input-format {{{choices}}}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(spec: InputSpec) -> tuple[list[Row], list[BadRow]]:
    """All good rows in input order, and the bad ones with their reasons."""
    if spec.format == "text" and spec.instruction is None:
        raise ValueError("plain text input needs --instruction (use --instruction '' for no instruction)")
    reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records,
              "text": _text_records}[spec.format]
    rows: list[Row] = []
    bad: list[BadRow] = []
    for line, record in reader(spec):
        row = record if isinstance(record, BadRow) else _to_row(line, record, spec)
        (bad if isinstance(row, BadRow) else rows).append(row)
    return rows, bad


def _to_row(line: int, record: dict[str, Any], spec: InputSpec) -> Row | BadRow:
    instruction = record.get(spec.instruction_field)
    if instruction is None:
        if spec.instruction is None:
            return BadRow(line, f"missing field '{spec.instruction_field}' (or pass --instruction)")
        instruction = spec.instruction
    if not isinstance(instruction, str):
        return BadRow(line, f"field '{spec.instruction_field}' must be a string; got {type(instruction).__name__}")
    text = record.get(spec.text_field)
    if text is None:
        return BadRow(line, f"missing field '{spec.text_field}'")
    if not isinstance(text, str):
        return BadRow(line, f"field '{spec.text_field}' must be a string; got {type(text).__name__}")
    if not text.strip():
        return BadRow(line, f"empty text in field '{spec.text_field}'")
    for name, value in ((spec.instruction_field, instruction), (spec.text_field, text)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return BadRow(line, f"field '{name}' is not valid Unicode (a lone surrogate)")
    row_id = record.get(spec.id_field)
    return Row(line=line, id=None if row_id == "" else row_id, instruction=instruction, text=text)


def _jsonl_records(spec: InputSpec):
    with open(spec.path, encoding="utf-8", errors="surrogateescape") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines hold no row
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield line, BadRow(line, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield line, BadRow(line, f"expected a JSON object; got {type(record).__name__}")
                continue
            yield line, record


def _csv_records(spec: InputSpec):
    with open(spec.path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return
        start = reader.line_num + 1
        for record in reader:
            yield start, record
            start = reader.line_num + 1


def _parquet_records(spec: InputSpec):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("Parquet needs pyarrow: pip install 'instructor-serve-client[parquet]'") from None
    table = pq.read_table(spec.path)
    wanted = [c for c in (spec.instruction_field, spec.text_field, spec.id_field) if c in table.column_names]
    columns = {name: table.column(name).to_pylist() for name in wanted}
    for index in range(table.num_rows):
        yield index + 1, {name: values[index] for name, values in columns.items()}


def _text_records(spec: InputSpec):
    with open(spec.path, encoding="utf-8", errors="surrogateescape") as handle:
        for line, raw in enumerate(handle, start=1):
            yield line, {spec.text_field: raw.rstrip("\r\n")}
