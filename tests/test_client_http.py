"""The client's retry rules and its package, without TorchServe.

TorchServe never sends Retry-After and cannot be made to answer a chosen status on demand, so the retry
rules run against a small scripted HTTP server on loopback that answers a given sequence of statuses.
The package test builds the wheel and checks what a user installs: no torch, the extras, the console script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from instructor_client import InstructorClient, ServerError, ServiceUnavailableError
from instructor_client.errors import item_index_in_message
from instructor_client.retry import parse_retry_after

REPO = Path(__file__).resolve().parents[1]
VECTOR = [0.5, 0.75]  # exact in float32: the client reads vectors as float32


@contextmanager
def scripted_server(answers: list[tuple[int, dict[str, str], object]]) -> Iterator[tuple[list[float], str]]:
    """Answers each POST with the next (status, headers, body), then 200 with one vector per pair.

    Yields (arrival times of the requests, base URL)."""
    arrivals: list[float] = []
    script = iter(answers)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrivals.append(time.monotonic())
            pairs = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"]
            status, headers, body = next(script, (200, {}, None))
            data = json.dumps([VECTOR] * len(pairs) if body is None else body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield arrivals, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_503_507_and_worker_died_are_retried_and_retry_after_is_honoured():
    died = {"code": 500, "type": "InternalServerException", "message": "Worker died."}
    answers = [(503, {"Retry-After": "1"}, {"code": 503, "message": "full"}), (507, {}, died), (500, {}, died)]
    with scripted_server(answers) as (arrivals, url), InstructorClient(url, "m", token="t") as client:
        assert client.embed([("i", "a"), ("i", "b")]) == [VECTOR, VECTOR]
    assert client.retries == 3 and len(arrivals) == 4
    assert arrivals[1] - arrivals[0] >= 0.95  # waited as Retry-After said, not the 0.25-0.5 s first backoff


def test_a_handler_error_is_not_retried_and_retries_end():
    handler_error = {"code": 500, "type": "InternalError", "message": "request id 7: unexpected"}
    with scripted_server([(500, {}, handler_error)]) as (arrivals, url), \
            InstructorClient(url, "m", token="t") as client, pytest.raises(ServerError) as caught:
        client.embed_one("i", "a")
    assert len(arrivals) == 1 and caught.value.type == "InternalError"
    full = [(503, {"Retry-After": "0"}, {"code": 503, "message": "full"})] * 3
    with scripted_server(full) as (arrivals, url), InstructorClient(url, "m", token="t", max_retries=2) as client, \
            pytest.raises(ServiceUnavailableError):
        client.embed_one("i", "a")
    assert len(arrivals) == 3  # the first try and max_retries=2 retries


def test_server_messages_name_items_the_way_the_handler_writes_them():
    assert item_index_in_message("inputs[3][1] (sentence) must be a string; got null") == 3
    assert item_index_in_message("inputs[12] must be [instruction, sentence]; got a list of 1") == 12
    assert item_index_in_message("pair 5 has 600 tokens, more than max_seq_length 512") == 5
    assert item_index_in_message("'inputs' has 300 items; the limit is 256 per request") is None
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_the_wheel_needs_no_torch_and_declares_the_extras_and_the_console_script(tmp_path):
    # Built from a copy: an in-tree build would leave build/ in the checkout.
    source = tmp_path / "src"
    shutil.copytree(REPO / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("instructor_serve_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "torch" in r.lower()], requires
    for extra in ("langchain", "llama-index", "parquet"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "instructor-embed = instructor_client.cli:main" in entry_points
    assert "instructor_client/bulk/store.py" in names
    probe = "import sys, instructor_client, instructor_client.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
