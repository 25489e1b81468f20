"""``instructor-embed``: embed a JSONL / CSV / Parquet / text file with a served INSTRUCTOR model.

Rows are read as a stream and go out in requests of up to --batch-size pairs, with as many requests in
flight as the server keeps up with (--concurrency auto) spread over every --url; each finished request
is stored at once under ``<output>.parts/`` so that ``--resume`` continues an interrupted run (Ctrl-C,
crash, kill -9) without embedding a stored row again. The output holds the embedded rows in input order
with their line number and id; rows that were not embedded are listed in ``<output>.failures.jsonl``.
Memory stays bounded whatever the input's size: only the requests in flight and one stored chunk at a
time are held.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from instructor_client.auth import TOKEN_ENV
from instructor_client.batching import MAX_PAIRS_PER_REQUEST, MAX_REQUEST_BYTES
from instructor_client.bulk.jobs import JobSource
from instructor_client.bulk.probe import check_probe, probe_vector
from instructor_client.bulk.readers import FORMATS, BadRow, InputSpec, check_input, detect_format, read_rows, scan_file
from instructor_client.bulk.runner import MAX_KEPT, Failure, Job, RunResult, embed_jobs
from instructor_client.bulk.sizing import RequestSize
from instructor_client.bulk.store import PartsStore, ResumeError
from instructor_client.bulk.writers import OUTPUT_FORMATS, ids_path, output_format, write_output
from instructor_client.client import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    InstructorClient,
)
from instructor_client.concurrency import make_limit
from instructor_client.errors import InstructorServeError
from instructor_client.progress import progress_bar
from instructor_client.transport import Batch

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROWS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MANIFEST_VERSION = 3

EPILOG = f"""\
input formats (by file name, or --input-format):
  .jsonl   one JSON object per line: {{"instruction": ..., "text": ..., "id": ...}} (id optional)
  .csv     a header row naming the same columns (a UTF-8 byte order mark is fine)
  .parquet the same columns
  .txt     one text per line, all with --instruction
  A row without an instruction takes --instruction. A field named by --text-field, --instruction-field
  or --id-field that the input does not have is refused before anything is sent, with the columns found.
  Bad rows (missing field, empty text, broken JSON, invalid UTF-8, a CSV row with more fields than the
  header) are listed with their line numbers and skipped, or stop the run before anything is sent with
  --strict.

output formats (by file name): {', '.join(OUTPUT_FORMATS)}
  .parquet columns line, id, vector (fixed-size list of float32)
  .jsonl   {{"line": ..., "id": ..., "vector": [...]}} per row
  .npy     float32 matrix (rows x dim) plus OUTPUT.ids.jsonl with {{"line": ..., "id": ...}} per row
  OUTPUT.failures.jsonl  every row not embedded: {{"line", "id", "status", "type", "message"}}
  (status is null for a bad input row); absent when every row was embedded.

token: --token, --key-file (TorchServe's key_file.json), or ${TOKEN_ENV}.
exit status:
  0  every row embedded
  1  the run stopped (server unreachable, token refused, unknown model, ...): finished requests are
     stored; --resume continues
  2  usage error, an input or --resume that does not fit (the message says why), or bad rows with --strict
  3  the run finished but some rows were not embedded: bad input rows, or rows the server refused
     (too long, nothing to embed, ...); the output holds every other row, OUTPUT.failures.jsonl the
     rest; --resume retries only the refused rows
  130 interrupted (Ctrl-C)

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
    parser.add_argument("--id-field", default=None,
                        help="field/column holding the row id (default: id, optional; a name given here must exist)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"pairs per request (1..{MAX_PAIRS_PER_REQUEST}, the server's max_pairs_per_request)")
    parser.add_argument("--concurrency", type=_concurrency, default=DEFAULT_CONCURRENCY,
                        help="requests in flight: a number, or auto (grown while throughput grows, halved on 503)")
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


def _concurrency(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 1; got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 1; got {value!r}")
    return number


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``instructor-embed`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, IsADirectoryError, ResumeError) as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except OSError as exc:  # disk full, permissions: said in one line, not as a traceback
        _say(f"error: {exc}\nfinished requests stay stored; --resume continues once the cause is fixed")
        return EXIT_FAILED


class _Failures:
    """``<output>.failures.jsonl``, written as rows fail (a temporary name until the run ends)."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".failures.jsonl")
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        # Open for the whole run (rows fail as they come); finish() closes it.
        self._handle: TextIO = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.bad: list[BadRow] = []  # the first MAX_KEPT, for the summary
        self.count = 0

    def add_bad(self, row: BadRow) -> None:
        if len(self.bad) < MAX_KEPT:
            self.bad.append(row)
        self._write({"line": row.line, "id": row.id, "status": None, "type": "BadRow", "message": row.problem})

    def add_refused(self, failure: Failure) -> None:
        self._write({"line": failure.line, "id": failure.id, "status": failure.status, "type": failure.type,
                     "message": failure.message})

    def _write(self, record: dict[str, Any]) -> None:
        self.count += 1
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def finish(self) -> Path | None:
        """Publish the file when a row failed (removing a stale one otherwise); its path or None."""
        self._handle.close()
        if self.count:
            os.replace(self._tmp, self.path)
            return self.path
        self._tmp.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        return None


def _run(args: argparse.Namespace) -> int:
    output_format(args.output)
    if args.output.is_dir():
        raise ValueError(f"--output {args.output} is a directory: name the file to write")
    if not args.input.is_file():
        raise FileNotFoundError(f"--input {args.input} does not exist or is not a file")
    _refuse_writing_over_the_input(args.input, args.output)
    # The output's folder holds the parts folder too: known unusable before the probe, not after it.
    folder = args.output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--output {args.output}: cannot create its folder {folder} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {args.output}: cannot write in its folder {folder}")
    make_limit(args.concurrency)
    fmt = detect_format(args.input) if args.input_format == "auto" else args.input_format
    spec = InputSpec(path=args.input, format=fmt, instruction=args.instruction, text_field=args.text_field,
                     instruction_field=args.instruction_field, id_field=args.id_field or "id",
                     id_field_given=args.id_field is not None)
    check_input(spec)
    if args.strict:
        bad = [row for row in read_rows(spec) if isinstance(row, BadRow)]
        if bad:
            _list_bad_rows(bad, len(bad), fmt)
            _say(f"--strict: {len(bad)} bad row(s); nothing was sent")
            return EXIT_USAGE
    sha256, newlines = scan_file(args.input)

    store = PartsStore(args.output)
    if args.output.exists() and not store.has_run() and not args.overwrite:
        if args.resume:
            _say(f"{args.output} is complete (no interrupted run in {store.dir.name}); nothing to do")
            return EXIT_OK
        raise ValueError(f"{args.output} exists: pass --overwrite to replace it")
    urls = args.url or [DEFAULT_URL]
    client = InstructorClient(urls, args.model, token=_one_or_many(args.token),
                              key_file=_one_or_many(args.key_file), timeout=args.timeout,
                              max_retries=args.max_retries, batch_size=args.batch_size,
                              concurrency=args.concurrency, truncate=not args.no_truncate)
    with client:
        try:
            probe = probe_vector(client)
        except InstructorServeError as error:
            _say(f"stopped: {error}\nnothing was sent but the probe request; fix the server or the options "
                 "and run again (--resume continues an interrupted run)\n  failed    0 row(s)")
            return EXIT_FAILED
        # Version 3: CSV rows with more fields than the header became bad rows, which renumbers the good rows
        # that stored chunks are keyed by; a parts folder of version 2 must not be resumed with this reader.
        manifest = {"version": MANIFEST_VERSION, "input_sha256": sha256, "input_format": fmt,
                    "instruction": args.instruction,
                    "fields": [args.instruction_field, args.text_field, spec.id_field], "model": args.model,
                    "urls": urls, "truncate": not args.no_truncate, "probe": probe}
        # The URL is not compared strictly: a server that moved still serves the same model if the probe
        # vector says so; the probe, not the address, is what the vectors come from.
        found = store.open(manifest, resume=args.resume, overwrite=args.overwrite, loose=("probe", "urls"))
        check_probe(found.get("probe"), probe, "Pass --overwrite to start again with the model served now.")
        if found.get("urls", urls) != urls:
            _say(f"note: the interrupted run used --url {' '.join(found['urls'])}; its model answers the probe "
                 "pair with the same vector here, so the run continues")
        return _embed(args, client, spec, store, newlines, len(probe))


def _refuse_writing_over_the_input(source: Path, output: Path) -> None:
    """ValueError when a file the run writes is the input: with --overwrite it would be replaced (and lost)
    before the user notices, and without it the message would only say "exists"."""
    written = [output, output.with_name(output.name + ".failures.jsonl")]
    if output_format(output) == "npy":
        written.append(ids_path(output))
    for path in written:
        if path.exists() and os.path.samefile(path, source):
            what = "--output" if path == output else f"{path.name}, which the run writes beside --output,"
            raise ValueError(f"{what} is the input file {source}: name another output file")


def _embed(args: argparse.Namespace, client: InstructorClient, spec: InputSpec, store: PartsStore,
           newlines: int, dim: int) -> int:
    failures = _Failures(args.output)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    estimate = newlines - (1 if spec.format == "csv" else 0) if spec.format != "parquet" else None
    started = time.monotonic()
    try:
        with progress_bar(_total_rows(spec, estimate), show) as bar:
            size = RequestSize(client.batch_size)
            source = JobSource(read_rows(spec), store.done(), size, MAX_REQUEST_BYTES,
                               on_bad=failures.add_bad, on_stored=bar.update)

            def keep(job: Job, batch: Batch) -> None:
                store.write(job.start, job.end, job.rows, batch.vectors)

            result = embed_jobs(client, iter(source), client.limit, size, keep, failures.add_refused, bar.update)
    except KeyboardInterrupt:
        failures.finish()
        _say(f"interrupted: finished requests are stored in {store.dir}; run again with --resume to continue")
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started

    written = None
    if result.fatal is None:
        rows, stored_dim = store.shape()
        write_output(args.output, store.chunks, rows, stored_dim or dim)
        written = (rows, stored_dim or dim)
    failures_file = failures.finish()
    mode = "adapted to the server" if args.concurrency == "auto" else "fixed by --concurrency"
    in_flight = f"{client.limit.limit} at the end ({mode}), {client.retries} retried"
    if size.pairs < size.limit:
        in_flight += f"; the server refused {size.limit}-pair requests as too large: {size.pairs} pairs each at the end"
    _summary(args, spec.format, source, result, elapsed, written, failures_file, failures, in_flight)
    if result.fatal is not None:
        return EXIT_FAILED
    if result.failed == 0:
        store.remove()  # complete: bad input rows cannot be retried without changing the input
    return EXIT_ROWS if result.failed or source.bad else EXIT_OK


def _total_rows(spec: InputSpec, estimate: int | None) -> int | None:
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(spec.path).metadata.num_rows)
    return estimate


def _summary(args: argparse.Namespace, fmt: str, source: JobSource, result: RunResult, elapsed: float,
             written: tuple[int, int] | None, failures_file: Path | None, failures: _Failures,
             in_flight: str) -> None:
    rate = result.embedded / elapsed if elapsed > 0 else 0.0
    lines = [
        "instructor-embed summary",
        f"  input     {args.input} ({fmt}): {source.good + source.bad} rows"
        + ("" if source.finished else " read so far") + f", {source.bad} bad row(s) skipped",
        f"  embedded  {result.embedded} pairs in {elapsed:.1f} s ({rate:.1f} pairs/s)"
        + (f", {source.already} stored by an earlier run" if source.already else ""),
        f"  tokens    {result.tokens.describe(result.embedded)}",
        f"  requests  up to {args.batch_size} pairs each; in flight: {in_flight}",
        f"  failed    {result.failed} row(s) refused by the server",
    ]
    if written is not None:
        lines.append(f"  output    {args.output}: {written[0]} rows x {written[1]} float32")
    if failures_file is not None:
        lines.append(f"  failures  {failures_file}: {failures.count} row(s) not embedded, with the reason")
    _say("\n".join(lines))
    _list_bad_rows(failures.bad, source.bad, fmt)
    if result.failed:
        _say("failed rows:")
        for failure in result.first_failures:
            where = _where(fmt, failure.line) + ("" if failure.id is None else f" (id {failure.id!r})")
            _say(f"  {where}: {failure.status} {failure.type}: {failure.message}")
        if result.failed > len(result.first_failures):
            _say(f"  ... and {result.failed - len(result.first_failures)} more (see {failures_file})")
    if result.fatal:
        _say(f"stopped: {result.fatal}\nfinished requests are stored in {PartsStore(args.output).dir}; "
             "run again with --resume to continue")
    elif result.failed:
        _say("the output holds every other row; run again with --resume to retry only the refused rows")


def _list_bad_rows(bad: list[BadRow], count: int, fmt: str) -> None:
    if not count:
        return
    _say(f"{count} bad row(s):")
    for row in bad[:MAX_KEPT]:
        _say(f"  {_where(fmt, row.line)}: {row.problem}")
    if count > MAX_KEPT:
        _say(f"  ... and {count - MAX_KEPT} more")


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
