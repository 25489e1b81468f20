"""The instructor-embed CLI and the RAG example against a real TorchServe (one for the module) serving a
tiny INSTRUCTOR model and the demo model: every input and output format, bad rows, --strict, failed rows,
and --resume after the process was really killed (SIGKILL) in the middle of a run."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.served_vectors import assert_same
from tests.served_vectors import served as served_vectors
from tests.torchserve_harness import REPO, TorchServe, build_with_script, register_with_script, running_torchserve

pytestmark = pytest.mark.torchserve

NAME = "tiny"
CLI = str(Path(sys.executable).parent / "instructor-embed")
INSTRUCTIONS = ["Represent the Science title:", "Represent the document for retrieval: ", ""]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_with_script(str(tiny_models["tiny-instructor-gated"]), NAME, store, "--batch-size", "8")
    build_with_script("demo", "demo", store)
    with running_torchserve(store) as ts:
        register_with_script(ts, NAME, "--workers", "1")
        register_with_script(ts, "demo", "--workers", "1")
        yield ts


def embed_cli(ts: TorchServe, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--url", ts.inference_url, "--model", NAME, "--key-file", str(ts.key_file), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def served(ts: TorchServe, pairs) -> np.ndarray:
    return served_vectors(ts, NAME, pairs)



def rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"doc-{i}", "instruction": INSTRUCTIONS[i % 3], "text": f"row {i} " + "token " * (i % 23)}
            for i in range(n)]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def read_parquet(path: Path) -> tuple[list[int], list[object], np.ndarray]:
    table = pq.read_table(path)
    return (table.column("line").to_pylist(), table.column("id").to_pylist(),
            np.array(table.column("vector").to_pylist(), dtype=np.float32))


def test_help_lists_every_option_with_its_default():
    out = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for text in ("--resume", "--strict", "--concurrency", "(default: 256)", "(default: auto)", "failures.jsonl",
                 "(default: demo)", ".parquet", ".npy"):
        assert text in out


def test_jsonl_to_parquet_keeps_input_order_and_ids_and_skips_bad_rows_by_line(server, tmp_path):
    good = rows(120)
    records: list[object] = [*good[:10], {"id": "no-text", "instruction": "x"}, *good[10:50],
                             {"id": "empty", "instruction": "x", "text": "   "}, "{broken json", *good[50:],
                             {"id": "no-instruction", "text": "t"}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    proc = embed_cli(server, "--input", str(source), "--output", str(tmp_path / "out.parquet"),
                     "--batch-size", "16", "--concurrency", "3")
    assert proc.returncode == 3, proc.stderr  # rows were not embedded: said by the exit status too
    for expected in ("line 11: missing field 'text'", "line 52: empty text", "line 53: not valid JSON",
                     "line 124: missing field 'instruction'", "4 bad row(s) skipped", "embedded  120 pairs"):
        assert expected in proc.stderr, proc.stderr
    lines, ids, vectors = read_parquet(tmp_path / "out.parquet")
    assert ids == [r["id"] for r in good]
    assert lines == [*range(1, 11), *range(12, 52), *range(54, 124)]
    assert_same(vectors, served(server, [(r["instruction"], r["text"]) for r in good]))
    assert not (tmp_path / "out.parquet.parts").exists()  # a complete run leaves no progress files


def test_strict_refuses_bad_rows_before_sending_anything(server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [*rows(5), {"id": "x", "instruction": "", "text": ""}])
    proc = embed_cli(server, "--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--strict")
    assert proc.returncode == 2, proc.stderr
    assert "line 6: empty text" in proc.stderr and "nothing was sent" in proc.stderr
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.parts").exists()


def test_csv_parquet_and_text_inputs_to_npy_and_jsonl_outputs(server, tmp_path):
    data = rows(40)
    want = served(server, [(r["instruction"], r["text"]) for r in data])
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "instruction", "text"])
        writer.writeheader()
        writer.writerows(data)
    proc = embed_cli(server, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.npy"))
    assert proc.returncode == 0, proc.stderr
    assert_same(np.load(tmp_path / "out.npy"), want)
    sidecar = [json.loads(line) for line in (tmp_path / "out.ids.jsonl").read_text().splitlines()]
    assert sidecar == [{"line": i + 2, "id": r["id"]} for i, r in enumerate(data)]  # line 1 is the header

    pq.write_table(pa.table({k: [r[k] for r in data] for k in ("id", "instruction", "text")}), tmp_path / "in.parquet")
    proc = embed_cli(server, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(o["line"], o["id"]) for o in out] == [(i + 1, r["id"]) for i, r in enumerate(data)]
    assert_same([o["vector"] for o in out], want)

    texts = [str(r["text"]) for r in data[:20]]
    (tmp_path / "in.txt").write_text("\n".join([*texts[:7], "", *texts[7:]]) + "\n", encoding="utf-8")
    proc = embed_cli(server, "--input", str(tmp_path / "in.txt"), "--instruction", INSTRUCTIONS[0],
                     "--output", str(tmp_path / "text.parquet"))
    assert proc.returncode == 3, proc.stderr
    assert "line 8: empty text" in proc.stderr
    lines, ids, vectors = read_parquet(tmp_path / "text.parquet")
    assert lines == [*range(1, 8), *range(9, 22)] and ids == [None] * 20
    assert_same(vectors, served(server, [(INSTRUCTIONS[0], t) for t in texts]))


def test_a_row_the_server_refuses_is_listed_and_the_others_are_written(server, tmp_path):
    data = rows(50)
    data[33]["text"] = "y" * 20001  # over max_chars_per_text: the server answers 413 for its request
    source = write_jsonl(tmp_path / "in.jsonl", data)
    proc = embed_cli(server, "--input", str(source), "--output", str(tmp_path / "out.parquet"), "--batch-size", "16")
    assert proc.returncode == 3, proc.stderr
    assert "failed    1 row(s)" in proc.stderr
    assert "line 34 (id 'doc-33'): 413 PayloadTooLarge" in proc.stderr, proc.stderr
    lines, ids, vectors = read_parquet(tmp_path / "out.parquet")
    kept = [r for i, r in enumerate(data) if i != 33]
    assert ids == [r["id"] for r in kept] and 34 not in lines
    assert_same(vectors, served(server, [(r["instruction"], r["text"]) for r in kept]))


def test_a_pair_with_nothing_to_embed_is_recorded_and_does_not_wedge_the_run_or_its_resume(server, tmp_path,
                                                                                         reference_fixture):
    data = rows(200)
    bad = reference_fixture["cases"]["rejected_pairs"][0]  # the instruction covers the whole joined text
    data[77] = {"id": "nothing", "instruction": bad["instruction"], "text": bad["text"]}
    source = write_jsonl(tmp_path / "in.jsonl", data)
    output = tmp_path / "out.parquet"
    for extra in ([], ["--resume"]):  # the resume retries the row, records it again, and ends as well
        proc = embed_cli(server, "--input", str(source), "--output", str(output), *extra)
        assert proc.returncode == 3, proc.stderr
        assert "line 78 (id 'nothing'): 422 NothingToEmbed" in proc.stderr
        failures = [json.loads(x) for x in (tmp_path / "out.parquet.failures.jsonl").read_text().splitlines()]
        got = [(f["line"], f["id"], f["status"], f["type"]) for f in failures]
        assert got == [(78, "nothing", 422, "NothingToEmbed")]
        lines, ids, vectors = read_parquet(output)
        kept = [r for i, r in enumerate(data) if i != 77]
        assert ids == [r["id"] for r in kept] and 78 not in lines
    assert "embedded  1" not in proc.stderr and "199 stored by an earlier run" in proc.stderr
    assert_same(vectors, served(server, [(r["instruction"], r["text"]) for r in kept]))


def test_an_unknown_model_stops_the_run_instead_of_failing_row_by_row(server, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", rows(30))
    proc = embed_cli(server, "--input", str(source), "--output", str(tmp_path / "out.npy"), "--model", "nope",
                     "--batch-size", "10", "--concurrency", "1")
    assert proc.returncode == 1, proc.stderr
    assert "stopped: 404" in proc.stderr and "--resume" in proc.stderr
    assert "failed    0 row(s)" in proc.stderr and not (tmp_path / "out.npy").exists()


def test_resume_after_kill_9_embeds_each_row_exactly_once(server, tmp_path):
    data = rows(800)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    output = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    args = [CLI, "--url", server.inference_url, "--model", NAME, "--key-file", str(server.key_file),
            "--input", str(source), "--output", str(output)]
    run = subprocess.Popen([*args, "--batch-size", "4", "--concurrency", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(parts.glob("vectors-*.npy"))) < 5 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed: make it longer"
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    run.stderr.close()
    assert run.returncode == -signal.SIGKILL and not output.exists()
    stored = sum(int(p.name[18:27]) - int(p.name[8:17]) for p in parts.glob("vectors-*.npy"))
    assert 0 < stored < len(data)

    again = subprocess.run([*args, "--batch-size", "32", "--concurrency", "2"], capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # an interrupted run is never silently redone
    resumed = subprocess.run([*args, "--batch-size", "32", "--concurrency", "2", "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    counts = re.search(r"embedded  (\d+) pairs .*, (\d+) stored by an earlier run", resumed.stderr)
    assert counts, resumed.stderr
    embedded, earlier = int(counts.group(1)), int(counts.group(2))
    assert embedded + earlier == len(data) and earlier >= stored

    fresh = subprocess.run([*args[:-1], str(tmp_path / "fresh.parquet"), "--batch-size", "32"],
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    lines, ids, vectors = read_parquet(output)
    assert lines == list(range(1, len(data) + 1)) and ids == [r["id"] for r in data]
    assert_same(vectors, read_parquet(tmp_path / "fresh.parquet")[2])
    assert not parts.exists()


def test_the_rag_example_indexes_into_qdrant_and_finds_the_right_documents(server, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "rag" / "rag.py"), "--url", server.inference_url,
                           "--model", "demo", "--key-file", str(server.key_file),
                           "--qdrant-path", str(tmp_path / "qdrant"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "indexed 300 documents (384-d)" in proc.stderr
    results = json.loads(proc.stdout)
    print(json.dumps(results, indent=1))  # shown on failure
    top_topics = {question: hits[0]["topic"] for question, hits in results.items()}
    assert top_topics == {
        "How long should bread dough rise before baking?": "bread",
        "What causes the tides in the ocean?": "tides",
        "How do I find which commit introduced a bug?": "git",
        "Which birds live near the equator but cannot fly?": "penguins",
    }
    assert all(len(hits) == 3 for hits in results.values())
