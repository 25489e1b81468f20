"""``instructor-embed``: embed a JSONL / CSV / Parquet / text file with a served INSTRUCTOR model.

Rows go out in requests of --batch-size pairs, --concurrency at a time, spread over every --url; each
finished request is stored at once under ``<output>.parts/`` so that ``--resume`` continues an
interrupted run (Ctrl-C, crash, kill -9) without embedding a stored row again. The output holds the
embedded rows in input order with their line number and id.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from instructor_client.auth import TOKEN_ENV
from instructor_client.batching import MAX_PAIRS_PER_REQUEST, MAX_REQUEST_BYTES, encode_pair, plan_requests
from instructor_client.bulk.readers import FORMATS, BadRow, InputSpec, Row, detect_format, file_sha256, read_rows
from instructor_client.bulk.runner import RunResult, embed_ranges
from instructor_client.bulk.store import PartsStore, ResumeError, missing_ranges, parts_dir_for
from instructor_client.bulk.writers import OUTPUT_FORMATS, output_format, write_output
from instructor_client.client import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    InstructorClient,
)
from instructor_client.progress import progress_bar

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_LISTED = 20  # rows listed per kind of problem; the rest are counted

EPILOG = f"""\
input formats (by file name, or --input-format):
  .jsonl   one JSON object per line: {{"instruction": ..., "text": ..., "id": ...}} (id optional)
  .csv     a header row naming the same columns
  .parquet the same columns
  .txt     one text per line, all with --instruction
  A row without an instruction takes --instruction. Bad rows (missing field, empty text, broken JSON)
  are listed with their line numbers and skipped, or stop the run before anything is sent with --strict.

output formats (by file name): {', '.join(OUTPUT_FORMATS)}
  .parquet columns line, id, vector (fixed-size list of float32)
  .jsonl   {{"line": ..., "id": ..., "vector": [...]}} per row
  .npy     float32 matrix (rows x dim) plus OUTPUT.ids.jsonl with {{"line": ..., "id": ...}} per row

token: --token, --key-file (TorchServe's key_file.json), or ${TOKEN_ENV}.
exit status: 0 all rows embedded; 1 some rows failed or the run stopped (failing rows are listed;
  --resume retries only what is missing); 2 usage error, or bad rows with --strict; 130 interrupted.

examples:
  instructor-embed --input docs.jsonl --output docs.parquet --key-file key_file.json
  instructor-embed --input titles.txt --instruction "Represent the Science title:" --output titles.npy
  instructor-embed --input docs.jsonl --output docs.parquet --resume          # after an interruption
  instructor-embed --url http://10.0.0.5:8080 --url http://10.0.0.6:8080 --token K1 --token K2 ...
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except for flags and options without one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructor-embed", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--input", "-i", required=True, type=Path, help="file to embed (required)")
    parser.add_argument("--output", "-o", required=True, type=Path,
                        help=f"where the vectors go: {', '.join(OUTPUT_FORMATS)} (required)")
    parser.add_argument("--url", action="append", default=None,
                        help=f"server base URL; repeat to spread requests over servers (default: {DEFAULT_URL})")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name on the server (/predictions/MODEL)")
    parser.add_argument("--token", action="append", default=None,
                        help="inference token; once for all servers or once per --url")
    parser.add_argument("--key-file", action="append", default=None, type=Path,
                        help="TorchServe key_file.json to read the inference key from; once or once per --url")
    parser.add_argument("--input-format", choices=("auto", *FORMATS), default="auto",
                        help="input format; auto = from the file name")
    parser.add_argument("--instruction", default=None,
                        help="instruction for text lines and for rows without one ('' = none)")
    parser.add_argument("--text-field", default="text", help="field/column holding the text")
    parser.add_argument("--instruction-field", default="instruction", help="field/column holding the instruction")
    parser.add_argument("--id-field", default="id", help="field/column holding the row id (optional)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"pairs per request (1..{MAX_PAIRS_PER_REQUEST}, the server's max_pairs_per_request)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per request")
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                        help="retries per request on 503/507/connection errors (backoff with jitter)")
    parser.add_argument("--no-truncate", action="store_true",
                        help="fail rows longer than the model's max_seq_length instead of truncating them")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the same input")
    parser.add_argument("--overwrite", action="store_true", help="replace the output and any interrupted run")
    parser.add_argument("--strict", action="store_true", help="stop before sending anything if a row is bad")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (pairs/s, ETA); default: when stderr is a terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``instructor-embed`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, ResumeError) as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    out_format = output_format(args.output)
    if not args.input.is_file():
        raise FileNotFoundError(f"--input {args.input} does not exist")
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    fmt = detect_format(args.input) if args.input_format == "auto" else args.input_format
    spec = InputSpec(path=args.input, format=fmt, instruction=args.instruction, text_field=args.text_field,
                     instruction_field=args.instruction_field, id_field=args.id_field)
    rows, bad = read_rows(spec)
    _list_bad_rows(bad, fmt)
    if bad and args.strict:
        _say(f"--strict: {len(bad)} bad row(s); nothing was sent")
        return EXIT_USAGE
    if not rows:
        _say(f"no row to embed in {args.input}: check --input-format, --text-field and --instruction-field")
        return EXIT_FAILED

    store = PartsStore(args.output)
    if args.output.exists() and not store.dir.exists() and not args.overwrite:
        if args.resume:
            _say(f"{args.output} is complete (no interrupted run in {store.dir.name}); nothing to do")
            return EXIT_OK
        raise ValueError(f"{args.output} exists: pass --overwrite to replace it")
    manifest = {"version": 1, "input_sha256": file_sha256(args.input), "input_format": fmt,
                "instruction": args.instruction, "fields": [args.instruction_field, args.text_field, args.id_field],
                "model": args.model, "truncate": not args.no_truncate, "rows": len(rows)}
    store.open(manifest, resume=args.resume, overwrite=args.overwrite)

    encoded = [encode_pair((row.instruction, row.text), index) for index, row in enumerate(rows)]
    done = store.done()
    already = sum(end - start for start, end in done)
    ranges = [(gap_start + start, gap_start + end)
              for gap_start, gap_end in missing_ranges(len(rows), done)
              for start, end in plan_requests(encoded[gap_start:gap_end], args.batch_size, MAX_REQUEST_BYTES)]

    client = InstructorClient(args.url or DEFAULT_URL, args.model, token=_one_or_many(args.token),
                              key_file=_one_or_many(args.key_file), timeout=args.timeout,
                              max_retries=args.max_retries, batch_size=args.batch_size,
                              concurrency=args.concurrency, truncate=not args.no_truncate)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    started = time.monotonic()
    try:
        with client, progress_bar(len(rows), show, initial=already) as bar:
            result = embed_ranges(client, encoded, ranges, store.write, args.concurrency, bar.update)
    except KeyboardInterrupt:
        _say(f"interrupted: finished requests are stored in {store.dir}; run again with --resume to continue")
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started

    written = None if result.fatal else _assemble(store, rows, args.output)
    _summary(args, fmt, rows, bad, already, result, elapsed, written, out_format)
    if result.fatal or result.failed:
        return EXIT_FAILED
    store.remove()
    return EXIT_OK


def _assemble(store: PartsStore, rows: list[Row], output: Path) -> tuple[int, int]:
    vectors, present = store.load(len(rows))
    keep = np.flatnonzero(present)
    matrix = vectors[keep] if vectors is not None else np.zeros((0, 0), dtype=np.float32)
    write_output(output, [rows[i].line for i in keep], [rows[i].id for i in keep], matrix)
    return matrix.shape[0], (matrix.shape[1] if matrix.ndim == 2 else 0)


def _summary(args: argparse.Namespace, fmt: str, rows: list[Row], bad: list[BadRow], already: int,
             result: RunResult, elapsed: float, written: tuple[int, int] | None, out_format: str) -> None:
    rate = result.embedded / elapsed if elapsed > 0 else 0.0
    lines = [
        "instructor-embed summary",
        f"  input     {args.input} ({fmt}): {len(rows) + len(bad)} rows, {len(bad)} bad row(s) skipped",
        f"  embedded  {result.embedded} pairs in {elapsed:.1f} s ({rate:.1f} pairs/s)"
        + (f", {already} stored by an earlier run" if already else ""),
        "  tokens    not reported by the server",
        f"  failed    {len(result.failed)} row(s)",
    ]
    if written is not None:
        lines.append(f"  output    {args.output} ({out_format}): {written[0]} rows x {written[1]} float32")
    _say("\n".join(lines))
    if result.failed:
        _say("failed rows:")
        for index in sorted(result.failed)[:MAX_LISTED]:
            row = rows[index]
            _say(f"  {_where(fmt, row.line)}{'' if row.id is None else f' (id {row.id!r})'}: {result.failed[index]}")
        if len(result.failed) > MAX_LISTED:
            _say(f"  ... and {len(result.failed) - MAX_LISTED} more")
    if result.fatal:
        _say(f"stopped: {result.fatal}\nfinished requests are stored in {parts_dir_for(args.output)}; "
             "run again with --resume to continue")
    elif result.failed:
        _say("the output holds the other rows; fix the failed rows and run again with --resume to retry only them")


def _list_bad_rows(bad: list[BadRow], fmt: str) -> None:
    if not bad:
        return
    _say(f"{len(bad)} bad row(s):")
    for row in bad[:MAX_LISTED]:
        _say(f"  {_where(fmt, row.line)}: {row.problem}")
    if len(bad) > MAX_LISTED:
        _say(f"  ... and {len(bad) - MAX_LISTED} more")


def _where(fmt: str, line: int) -> str:
    return f"row {line}" if fmt == "parquet" else f"line {line}"


def _one_or_many(values: list[Any] | None) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
