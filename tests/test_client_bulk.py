"""instructor-embed (the real console script, a real process) against the stand-in server over real HTTP: what
a user's file and a server's refusals do to a bulk run, without TorchServe (test_client_cli.py runs the CLI
against TorchServe). Each test is a case that once crashed, wedged the run, lost ids or mixed models."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.stand_in_server import Behaviour, basis, stand_in_server, vector_of
from instructor_client import AsyncInstructorClient, InstructorClient

CLI = str(Path(sys.executable).parent / "instructor-embed")
INSTRUCTION = "Represent the document:"
EXIT_ROWS = 3


def embed_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--url", url, "--model", "m", *args], capture_output=True, text=True, timeout=120)


def records(n: int) -> list[dict[str, object]]:
    return [{"id": f"doc-{i}", "instruction": INSTRUCTION, "text": f"row {i} " + "word " * (i % 7)} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def expected(rows: list[dict[str, object]], seed: int = 0) -> np.ndarray:
    table = basis(384, seed)
    return np.stack([vector_of(table, str(r["instruction"]), str(r["text"])) for r in rows])


def read_parquet(path: Path) -> tuple[list[int], list[object], np.ndarray]:
    table = pq.read_table(path)
    return (table.column("line").to_pylist(), table.column("id").to_pylist(),
            np.array(table.column("vector").to_pylist(), dtype=np.float32))


def test_a_refused_row_is_recorded_every_other_row_is_written_and_resume_retries_only_it(tmp_path):
    data = records(300)
    data[137]["text"] = "y" * 30_000  # over the stand-in's max_chars: 413 naming the pair, as the handler does
    source = write_jsonl(tmp_path / "in.jsonl", data)
    output = tmp_path / "out.parquet"
    with stand_in_server(Behaviour(max_chars=20_000)) as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(output))
    assert proc.returncode == EXIT_ROWS, proc.stderr
    assert "line 138 (id 'doc-137'): 413 PayloadTooLarge" in proc.stderr
    failures = [json.loads(line) for line in (tmp_path / "out.parquet.failures.jsonl").read_text().splitlines()]
    got = [(f["line"], f["id"], f["status"], f["type"]) for f in failures]
    assert got == [(138, "doc-137", 413, "PayloadTooLarge")]
    lines, ids, vectors = read_parquet(output)
    kept = [r for i, r in enumerate(data) if i != 137]
    assert ids == [r["id"] for r in kept] and 138 not in lines
    np.testing.assert_array_equal(vectors, expected(kept))

    with stand_in_server(Behaviour(max_chars=50_000)) as url:  # the server's limit was raised
        resumed = embed_cli(url, "-i", str(source), "-o", str(output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "embedded  1 pairs" in resumed.stderr and "299 stored by an earlier run" in resumed.stderr
    lines, ids, vectors = read_parquet(output)
    assert ids == [r["id"] for r in data] and lines == list(range(1, 301))
    np.testing.assert_array_equal(vectors, expected(data))
    assert not (tmp_path / "out.parquet.failures.jsonl").exists() and not (tmp_path / "out.parquet.parts").exists()


def test_a_csv_field_over_131072_characters_is_one_refused_row_not_a_crash(tmp_path):
    data = records(20)
    data[5]["text"] = "z" * 200_000
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "instruction", "text"])
        writer.writeheader()
        writer.writerows(data)
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.npy"))
    assert proc.returncode == EXIT_ROWS, proc.stderr
    assert "Traceback" not in proc.stderr and "line 7 (id 'doc-5'): 413" in proc.stderr
    assert np.load(tmp_path / "out.npy").shape == (19, 384)


def test_a_utf8_bom_keeps_the_first_column_and_the_first_row(tmp_path):
    data = records(10)
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8"
        writer = csv.DictWriter(handle, fieldnames=["id", "instruction", "text"])
        writer.writeheader()
        writer.writerows(data)
    (tmp_path / "in.jsonl").write_bytes(b"\xef\xbb\xbf" + write_jsonl(tmp_path / "x.jsonl", data).read_bytes())
    with stand_in_server() as url:
        for name in ("in.csv", "in.jsonl"):
            proc = embed_cli(url, "-i", str(tmp_path / name), "-o", str(tmp_path / f"{name}.parquet"))
            assert proc.returncode == 0, proc.stderr
            _, ids, vectors = read_parquet(tmp_path / f"{name}.parquet")
            assert ids == [r["id"] for r in data], name
            np.testing.assert_array_equal(vectors, expected(data))


def test_a_mistyped_field_is_refused_with_the_columns_found(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(5))
    pq.write_table(pa.table({k: [str(r[k]) for r in records(5)] for k in ("id", "instruction", "text")}),
                   tmp_path / "in.parquet")
    with stand_in_server() as url:
        for path in (source, tmp_path / "in.parquet"):
            proc = embed_cli(url, "-i", str(path), "-o", str(tmp_path / "out.npy"), "--id-field", "ID")
            assert proc.returncode == 2, proc.stderr
            assert "no " in proc.stderr and "'ID' (--id-field); found: 'id', 'instruction', 'text'" in proc.stderr
            proc = embed_cli(url, "-i", str(path), "-o", str(tmp_path / "out.npy"), "--text-field", "body")
            assert proc.returncode == 2 and "'body' (--text-field)" in proc.stderr, proc.stderr
        assert not (tmp_path / "out.npy").exists()


def test_a_raw_carriage_return_inside_a_jsonl_record_does_not_split_it(tmp_path):
    data = records(6)
    lines = [json.dumps(r) for r in data]
    lines[2] = lines[2].replace(", ", ",\r ", 1)  # JSON whitespace: still one record on one line
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.parquet"))
    assert proc.returncode == 0, proc.stderr
    got_lines, ids, _ = read_parquet(tmp_path / "out.parquet")
    assert got_lines == [1, 2, 3, 4, 5, 6] and ids == [r["id"] for r in data]


def test_invalid_utf8_is_a_bad_row_with_its_line_number(tmp_path):
    rows = [b"id,instruction,text", b"a,x,fine", b"b,x,caf\xe9 au lait", b"c,x,also fine"]
    (tmp_path / "in.csv").write_bytes(b"\n".join(rows) + b"\n")
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "ok", "instruction": "x"}\n'
                                        b'{"text": "caf\xe9", "instruction": "x"}\n')
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.jsonl"))
        assert proc.returncode == EXIT_ROWS and "line 3: field 'text' is not valid UTF-8" in proc.stderr, proc.stderr
        assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ["a", "c"]
        failures = (tmp_path / "out.jsonl.failures.jsonl").read_text()
        assert json.loads(failures)["line"] == 3 and json.loads(failures)["status"] is None
        proc = embed_cli(url, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "j.jsonl"))
        assert proc.returncode == EXIT_ROWS and "line 2: not valid UTF-8" in proc.stderr, proc.stderr


def test_binary_and_other_id_types_in_parquet_are_written_and_resumed(tmp_path):
    data = records(40)
    table = pa.table({"id": pa.array([str(r["id"]).encode() for r in data[:-1]] + [b"\xff\x00"], type=pa.binary()),
                      "instruction": [r["instruction"] for r in data], "text": [r["text"] for r in data]})
    pq.write_table(table, tmp_path / "in.parquet")
    with stand_in_server(Behaviour(fail_after=3)) as url:  # the run stops after 2 requests (+ the probe)
        stopped = embed_cli(url, "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet"),
                            "--batch-size", "8", "--concurrency", "1")
    assert stopped.returncode == 1 and "stopped: 500" in stopped.stderr, stopped.stderr
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.parquet"), "--resume")
    assert proc.returncode == 0, proc.stderr
    _, ids, vectors = read_parquet(tmp_path / "out.parquet")
    assert ids == [r["id"] for r in data[:-1]] + ["0xff00"]  # UTF-8 as text; other bytes as hex
    np.testing.assert_array_equal(vectors, expected(data))


def test_duplicate_parquet_columns_are_refused_by_name(tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["x"])], names=["text", "text", "id"])
    pq.write_table(table, tmp_path / "in.parquet")
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.npy"), "--instruction", "")
    assert proc.returncode == 2 and "'text' appear more than once" in proc.stderr, proc.stderr


def test_a_symlinked_parts_folder_survives_overwrite_and_completion(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(30))
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    (elsewhere / "unrelated.txt").write_text("kept")
    (tmp_path / "out.npy.parts").symlink_to(elsewhere, target_is_directory=True)
    with stand_in_server() as url:
        for extra in ([], ["--overwrite"]):
            proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "out.npy"), *extra)
            assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out.npy").shape == (30, 384)
    assert (tmp_path / "out.npy.parts").is_symlink() and [p.name for p in elsewhere.iterdir()] == ["unrelated.txt"]


def test_resume_refuses_another_model_served_under_the_same_name(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(100))
    output = tmp_path / "out.parquet"
    with stand_in_server(Behaviour(fail_after=3)) as url:
        stopped = embed_cli(url, "-i", str(source), "-o", str(output), "--batch-size", "10", "--concurrency", "1")
    assert stopped.returncode == 1, stopped.stderr
    port = url.rsplit(":", 1)[1]
    with stand_in_server(Behaviour(seed=1), port=int(port)) as same_url:  # same URL and name, other "model"
        refused = embed_cli(same_url, "-i", str(source), "-o", str(output), "--resume")
    assert refused.returncode == 2 and "another model" in refused.stderr and "--overwrite" in refused.stderr
    assert not output.exists()
    with stand_in_server() as moved_url:  # the same model at another address: the probe vouches for it
        resumed = embed_cli(moved_url, "-i", str(source), "-o", str(output), "--resume")
    assert resumed.returncode == 0 and "20 stored by an earlier run" in resumed.stderr, resumed.stderr
    assert f"the interrupted run used --url {url}" in resumed.stderr
    np.testing.assert_array_equal(read_parquet(output)[2], expected(records(100)))


def test_tokens_are_summed_when_the_server_reports_them_and_said_missing_when_not(tmp_path):
    data = records(50)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    want = sum(len(f"{r['instruction']} {r['text']}".split()) + 1 for r in data)
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "a.npy"))
        with InstructorClient(url, "m") as client:
            vectors = client.embed([(str(r["instruction"]), str(r["text"])) for r in data], batch_size=7)
    assert proc.returncode == 0 and f"tokens    {want:,} (" in proc.stderr, proc.stderr
    assert vectors.tokens == want
    np.testing.assert_array_equal(np.asarray(vectors, dtype=np.float32), expected(data))
    with stand_in_server(Behaviour(tokens=False)) as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "b.npy"))
        with InstructorClient(url, "m") as client:
            assert client.embed([("a", "b")]).tokens is None
    assert proc.returncode == 0 and "tokens    not reported by the server" in proc.stderr


def test_auto_concurrency_backs_off_a_full_queue_and_embeds_everything(tmp_path):
    data = records(1500)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    behaviour = Behaviour(capacity=2, latency=0.01)
    with stand_in_server(behaviour) as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "out.npy"), "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    assert behaviour.counters["503"] > 0  # the queue did fill (4 in flight at the start): the run went through it
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected(data))


def test_auto_concurrency_grows_while_more_requests_in_flight_bring_more_throughput(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(3000))
    behaviour = Behaviour(latency=0.05)  # latency-bound: twice the requests in flight, twice the pairs/s
    with stand_in_server(behaviour) as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "out.npy"), "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    print(proc.stderr, behaviour.counters)
    assert behaviour.counters["max_in_flight"] > 4  # grew past the starting 4


def test_requests_refused_as_too_large_as_a_whole_make_the_next_ones_smaller(tmp_path):
    data = records(5000)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    behaviour = Behaviour(max_request_pairs=20)  # a server whose per-request token budget is small
    with stand_in_server(behaviour) as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "out.npy"), "--concurrency", "2")
    assert proc.returncode == 0, proc.stderr
    assert "refused 256-pair requests as too large: 16 pairs each" in proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected(data))
    # Halving every one of the 20 requests of 256 pairs down to 16 would take 15 refusals each (300).
    assert behaviour.counters["413"] < 100, behaviour.counters


def test_a_server_that_predates_encoding_format_gets_json_numbers_instead(tmp_path):
    data = records(30)
    pairs = [(str(r["instruction"]), str(r["text"])) for r in data]
    with stand_in_server(Behaviour(knows_encoding_format=False)) as url, InstructorClient(url, "m") as client:
        vectors = client.embed(pairs, batch_size=8)
        assert client.encoding == "float"
        proc = embed_cli(url, "-i", str(write_jsonl(tmp_path / "in.jsonl", data)), "-o", str(tmp_path / "out.npy"))
    np.testing.assert_array_equal(np.asarray(vectors, dtype=np.float32), expected(data))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected(data))


def test_the_client_splits_a_request_refused_as_too_large_as_a_whole():
    data = records(300)
    pairs = [(str(r["instruction"]), str(r["text"])) for r in data]

    async def embed_async(url: str) -> list[list[float]]:
        async with AsyncInstructorClient(url, "m") as client:
            return await client.embed(pairs)

    with stand_in_server(Behaviour(max_request_pairs=30)) as url:
        with InstructorClient(url, "m") as client:
            one_request = client.embed(pairs[:200], batch_size=200)  # the single-request path too
            several = client.embed(pairs)
        from_async = asyncio.run(embed_async(url))
    np.testing.assert_array_equal(np.asarray(one_request, dtype=np.float32), expected(data[:200]))
    for got in (several, from_async):
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected(data))


def test_a_full_batch_is_retried_soon_without_spending_retries_or_halving_the_requests_in_flight():
    data = records(400)
    pairs = [(str(r["instruction"]), str(r["text"])) for r in data]
    behaviour = Behaviour(batch_full=12)  # 12 x "this batch already carries its tokens; retry"
    with stand_in_server(behaviour) as url, InstructorClient(url, "m", max_retries=1) as client:
        vectors = client.embed(pairs, batch_size=16)
        assert client.limit.limit >= 4  # the start: a full batch is a busy server, not an overloaded one
    np.testing.assert_array_equal(np.asarray(vectors, dtype=np.float32), expected(data))
    assert behaviour.counters["requests"] == 12 + 25 and client.retries == 0


def test_an_output_that_is_the_input_is_refused_and_the_input_survives_overwrite(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(3))
    sidecar_named = write_jsonl(tmp_path / "out.ids.jsonl", records(3))  # what an .npy output writes beside it
    before = source.read_bytes()
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "." / "in.jsonl"), "--overwrite")
        assert proc.returncode == 2, proc.stderr
        assert "--output is the input file" in proc.stderr and "Traceback" not in proc.stderr
        proc = embed_cli(url, "-i", str(sidecar_named), "-o", str(tmp_path / "out.npy"), "--overwrite")
        assert proc.returncode == 2 and "out.ids.jsonl, which the run writes beside --output" in proc.stderr, \
            proc.stderr
    assert source.read_bytes() == before and sidecar_named.read_bytes() == before
    assert not (tmp_path / "out.npy").exists()


def test_a_csv_row_with_more_fields_than_the_header_is_a_bad_row_not_a_cut_text(tmp_path):
    # Row 3 has an unquoted comma in its text: embedding its first part alone would be a silently wrong vector.
    # Row 4 ends in a comma (an empty extra field): nothing is lost, it is embedded.
    lines = ["id,instruction,text", f"a,{INSTRUCTION},first", f"b,{INSTRUCTION},cut, here", f"c,{INSTRUCTION},last,"]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.parquet"))
    assert proc.returncode == EXIT_ROWS, proc.stderr
    assert "line 3: 4 fields where the header (line 1) has 3: quote a field that holds a comma" in proc.stderr
    failures = [json.loads(line) for line in (tmp_path / "out.parquet.failures.jsonl").read_text().splitlines()]
    assert [(f["line"], f["id"], f["type"]) for f in failures] == [(3, "b", "BadRow")]
    got_lines, ids, vectors = read_parquet(tmp_path / "out.parquet")
    assert got_lines == [2, 4] and ids == ["a", "c"]
    kept = [{"instruction": INSTRUCTION, "text": "first"}, {"instruction": INSTRUCTION, "text": "last"}]
    np.testing.assert_array_equal(vectors, expected(kept))


def test_a_url_without_http_or_a_timeout_of_0_is_a_usage_error_at_once(tmp_path):
    # Before, each was a transport error retried with backoff, then "cannot reach" (exit 1) after seconds,
    # or httpx's "Timeout value out of range" naming no option.
    source = write_jsonl(tmp_path / "in.jsonl", records(2))
    with stand_in_server() as url:
        host = url.split("://", 1)[1]
        for args, message in ((["--url", host], f"url '{host}' must start with http:// or https://"),
                              (["--url", url, "--timeout", "0"], "timeout must be a number of seconds > 0"),
                              (["--url", url, "--timeout", "-5"], "timeout must be a number of seconds > 0"),
                              (["--url", url, "--max-retries", "-1"], "max_retries must be an integer >= 0")):
            proc = subprocess.run([CLI, *args, "--model", "m", "-i", str(source), "-o", str(tmp_path / "o.npy")],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "o.npy").exists()


def _strict_json(line: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_nan_and_infinity_ids_leave_every_output_file_valid_json(tmp_path):
    # Python's json reads NaN / Infinity in a JSONL input; written back as they are, the outputs were not JSON.
    lines = [f'{{"id": {token}, "instruction": "{INSTRUCTION}", "text": "row {i}"}}'
             for i, token in enumerate(("NaN", "Infinity", "-Infinity", "7"))]
    lines.append('{"id": NaN, "instruction": "x"}')  # a bad row: its id goes to the failures file
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with stand_in_server() as url:
        for output in ("out.jsonl", "out.npy"):
            proc = embed_cli(url, "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / output))
            assert proc.returncode == EXIT_ROWS, proc.stderr
    written = {name: [_strict_json(line) for line in (tmp_path / name).read_text().splitlines()]
               for name in ("out.jsonl", "out.ids.jsonl", "out.npy.failures.jsonl")}
    assert [row["id"] for row in written["out.jsonl"]] == ["NaN", "Infinity", "-Infinity", 7]
    assert [row["id"] for row in written["out.ids.jsonl"]] == ["NaN", "Infinity", "-Infinity", 7]
    assert [(row["line"], row["id"]) for row in written["out.npy.failures.jsonl"]] == [(5, "NaN")]
    kept = [{"instruction": INSTRUCTION, "text": f"row {i}"} for i in range(4)]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected(kept))


def test_a_parts_folder_of_the_previous_row_numbering_is_not_resumed(tmp_path):
    # Version 2 parts folders number the good rows as the reader did before CSV rows with extra fields became
    # bad rows: resuming one could file stored vectors under other rows.
    data = records(40)
    data[7]["text"] = "y" * 30_000  # refused by the server: the parts folder stays for --resume
    source = write_jsonl(tmp_path / "in.jsonl", data)
    output = tmp_path / "out.parquet"
    with stand_in_server(Behaviour(max_chars=20_000)) as url:
        assert embed_cli(url, "-i", str(source), "-o", str(output)).returncode == EXIT_ROWS
        manifest_path = tmp_path / "out.parquet.parts" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["version"] = 2
        manifest_path.write_text(json.dumps(manifest))
        resumed = embed_cli(url, "-i", str(source), "-o", str(output), "--resume")
    assert resumed.returncode == 2, resumed.stderr
    assert "version: 2 then, 3 now" in resumed.stderr and "--overwrite" in resumed.stderr


def test_an_output_under_a_file_is_a_usage_error_not_a_traceback(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", records(2))
    (tmp_path / "afile").write_text("not a folder")
    with stand_in_server() as url:
        proc = embed_cli(url, "-i", str(source), "-o", str(tmp_path / "afile" / "out.npy"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot create its folder" in proc.stderr
