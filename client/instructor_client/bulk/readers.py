"""Read the rows to embed from JSONL, CSV, Parquet or plain text as a stream, keeping each row's line number.

A row that cannot be embedded (missing field, empty text, not a string, broken JSON, invalid UTF-8)
becomes a BadRow with its line number and the reason, instead of stopping the read. Line numbers are
1-based physical lines for JSONL, CSV (the line a record starts on; the header is line 1) and text;
for Parquet, the 1-based row number. JSONL lines end at \\n only: a raw \\r inside a record is JSON
whitespace, not a line break. A UTF-8 byte order mark (Excel's "CSV UTF-8") is skipped.

``open_input`` checks what can be checked before anything is sent (the columns a CSV header or a Parquet
schema names, the fields of the first JSONL records) and refuses with the columns that do exist.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv", "parquet", "text")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
BOM = codecs.BOM_UTF8
# Python's csv refuses fields over 131,072 characters by default; a long document is a row like any
# other (the server decides whether it is too long, for that row alone).
CSV_FIELD_LIMIT = (1 << 31) - 1
SAMPLE_RECORDS = 1000  # JSONL records read up front to check that the named fields exist
PARQUET_BATCH_ROWS = 4096  # Parquet rows decoded at a time: bounded memory whatever the file's size


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
    id: Any = None


@dataclass(frozen=True)
class InputSpec:
    """What to read and how: field names, and the instruction for rows (or text lines) without one.

    ``id_field_given``: the caller named the id field, so its absence is a mistake, not "no ids"."""

    path: Path
    format: str
    instruction: str | None = None
    text_field: str = "text"
    instruction_field: str = "instruction"
    id_field: str = "id"
    id_field_given: bool = False


def detect_format(path: Path) -> str:
    """The format a file name implies (.jsonl/.ndjson, .csv, .parquet, .txt); ValueError otherwise."""
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        choices = ",".join(FORMATS)
        raise ValueError(f"cannot tell the format of {path.name}: pass --input-format {{{choices}}}") from None


def scan_file(path: Path) -> tuple[str, int]:
    """(sha256 of the file, number of \\n in it): what pins the input, and a row estimate for progress."""
    digest = hashlib.sha256()
    newlines = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            newlines += block.count(b"\n")
    return digest.hexdigest(), newlines


def check_input(spec: InputSpec) -> None:
    """Refuse, before anything is sent, an input whose named fields/columns do not exist (ValueError)."""
    if spec.format == "text":
        if spec.instruction is None:
            raise ValueError("plain text input needs --instruction (use --instruction '' for no instruction)")
        return
    if spec.format == "csv":
        columns = _csv_header(spec.path)
        _check_columns(spec, columns, "column")
    elif spec.format == "parquet":
        names = _parquet_file(spec.path).schema_arrow.names
        doubled = sorted(name for name, count in Counter(names).items() if count > 1)
        wanted_doubles = [n for n in doubled if n in (spec.text_field, spec.instruction_field, spec.id_field)]
        if wanted_doubles:
            raise ValueError(f"{spec.path.name}: column(s) {', '.join(map(repr, wanted_doubles))} appear more "
                             "than once in the Parquet schema: rename them so each name is unique")
        _check_columns(spec, names, "column")
    else:
        fields = _jsonl_fields(spec.path)
        if fields is not None:
            _check_columns(spec, fields, f"field of the first {SAMPLE_RECORDS} records")


def _check_columns(spec: InputSpec, columns: list[str], what: str) -> None:
    shown = ", ".join(repr(c) for c in columns) or "none"
    if spec.text_field not in columns:
        raise ValueError(f"{spec.path.name}: no {what} named {spec.text_field!r} (--text-field); found: {shown}")
    if spec.instruction is None and spec.instruction_field not in columns:
        raise ValueError(f"{spec.path.name}: no {what} named {spec.instruction_field!r} (--instruction-field) "
                         f"and no --instruction; found: {shown}")
    if spec.id_field_given and spec.id_field not in columns:
        raise ValueError(f"{spec.path.name}: no {what} named {spec.id_field!r} (--id-field); found: {shown}")


def read_rows(spec: InputSpec) -> Iterator[Row | BadRow]:
    """Every row in input order: a Row to embed, or a BadRow saying why it cannot be."""
    reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records,
              "text": _text_records}[spec.format]
    for line, record in reader(spec):
        yield record if isinstance(record, BadRow) else _to_row(line, record, spec)


def _to_row(line: int, record: dict[str, Any], spec: InputSpec) -> Row | BadRow:
    row_id = normalize_id(record.get(spec.id_field))
    if isinstance(row_id, str) and not _is_unicode(row_id):
        return BadRow(line, f"field '{spec.id_field}' is not valid UTF-8")
    instruction = record.get(spec.instruction_field)
    if instruction is None:
        if spec.instruction is None:
            return BadRow(line, f"missing field '{spec.instruction_field}' (or pass --instruction)", row_id)
        instruction = spec.instruction
    if not isinstance(instruction, str):
        got = type(instruction).__name__
        return BadRow(line, f"field '{spec.instruction_field}' must be a string; got {got}", row_id)
    text = record.get(spec.text_field)
    if text is None:
        return BadRow(line, f"missing field '{spec.text_field}'", row_id)
    if not isinstance(text, str):
        return BadRow(line, f"field '{spec.text_field}' must be a string; got {type(text).__name__}", row_id)
    if not text.strip():
        return BadRow(line, f"empty text in field '{spec.text_field}'", row_id)
    for name, value in ((spec.instruction_field, instruction), (spec.text_field, text)):
        if not _is_unicode(value):
            return BadRow(line, f"field '{name}' is not valid UTF-8 (or holds a lone surrogate)", row_id)
    return Row(line=line, id=row_id, instruction=instruction, text=text)


def normalize_id(value: Any) -> Any:
    """An id the outputs can hold: str/int/float/bool as they are, "" as None, NaN and infinities as their JSON
    text, bytes as UTF-8 text (or ``0x`` + hex when they are not UTF-8), anything else (dates, decimals, lists)
    as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        # JSONL's NaN / Infinity (Python's json reads them): written back as they are, they would make the
        # JSONL outputs and the failures file invalid JSON for every strict reader; their JSON text instead.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or value == "" or isinstance(value, (str, int, float, bool)):
        return None if value == "" else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + raw.hex()
    return str(value)


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # invalid input bytes (read with surrogateescape) or a lone surrogate
        return False
    return True


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    # Binary mode splits on b"\n" only; text mode would also split a record at a raw \r.
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            yield line, (raw[len(BOM):] if line == 1 and raw.startswith(BOM) else raw)


def _jsonl_fields(path: Path) -> list[str] | None:
    """The fields of the first SAMPLE_RECORDS JSON objects (None when none parses: every row is then bad)."""
    fields: dict[str, None] = {}
    seen = 0
    for _, raw in _jsonl_lines(path):
        if seen >= SAMPLE_RECORDS:
            break
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            seen += 1
            fields.update(dict.fromkeys(record))
    return list(fields) if seen else None


def _jsonl_records(spec: InputSpec) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    for line, raw in _jsonl_lines(spec.path):
        if not raw.strip():
            continue  # blank lines hold no row
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line, BadRow(line, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, BadRow(line, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            yield line, BadRow(line, f"expected a JSON object; got {type(record).__name__}")
            continue
        yield line, record


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        _raise_csv_field_limit()
        try:
            header = next(csv.reader(handle), [])
        except csv.Error as exc:
            raise ValueError(f"{path.name}: the header row is not valid CSV ({exc})") from None
    if any(not _is_unicode(name) for name in header):
        raise ValueError(f"{path.name}: the header row (line 1) is not valid UTF-8")
    return header


def _raise_csv_field_limit() -> None:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(min(CSV_FIELD_LIMIT, sys.maxsize))


def _csv_records(spec: InputSpec) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    # surrogateescape: an invalid byte becomes a lone surrogate that _to_row reports with the row's line,
    # instead of a UnicodeDecodeError that would reject the whole file.
    _raise_csv_field_limit()
    with open(spec.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            return
        start = reader.line_num + 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, BadRow(start, f"not valid CSV ({exc})")
                start = reader.line_num + 1
                continue
            # DictReader files the fields past the header's under the key None: an unquoted comma in a
            # text makes them, and embedding the row anyway would embed only the text's first part.
            # Empty ones (a trailing comma) lose nothing.
            extra = record.pop(None, None) or []
            if any(extra):
                columns = len(reader.fieldnames)
                yield start, BadRow(start, f"{columns + len(extra)} fields where the header (line 1) has {columns}: "
                                           "quote a field that holds a comma", normalize_id(record.get(spec.id_field)))
            else:
                yield start, record
            start = reader.line_num + 1


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("Parquet needs pyarrow: pip install 'instructor-serve-client[parquet]'") from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path.name} is not a readable Parquet file: {exc}") from None


def _parquet_records(spec: InputSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    parquet = _parquet_file(spec.path)
    names = parquet.schema_arrow.names
    wanted = [c for c in dict.fromkeys((spec.instruction_field, spec.text_field, spec.id_field)) if c in names]
    line = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        columns = {name: batch.column(name).to_pylist() for name in wanted}
        for index in range(batch.num_rows):
            line += 1
            yield line, {name: values[index] for name, values in columns.items()}


def _text_records(spec: InputSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(spec.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        for line, raw in enumerate(handle, start=1):
            yield line, {spec.text_field: raw.rstrip("\r\n")}
