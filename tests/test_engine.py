"""The device engine shared by a model's workers (handler/engine.py, handler/engine_client.py).

On CPU with the tiny INSTRUCTOR models: the same vectors as a worker's own encoder, one engine for all the
workers of a model, a killed engine answered with 503 and replaced, a job the engine cannot embed failing
alone, and through a real TorchServe with two workers: exact vectors, a killed engine, nothing left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from handler.encoder import InstructorEncoder, TokenizedPair
from handler.engine_client import _PACKAGE_ROOT, SharedEncoder, engine_command, engine_files, engine_socket
from handler.engine_wire import WireError, job_parts, parse_job, parse_reply, reply_parts
from handler.errors import EngineUnavailable, InternalError
from handler.settings import EngineMode, Settings
from tests.torchserve_harness import served_models

INSTRUCTION = "Represent the Science title:"
PAIRS = [(INSTRUCTION, f"sentence number {i} " + "word " * (i % 23)) for i in range(70)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _wait_gone(pid: int, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_jobs_and_replies_cross_the_wire_intact():
    message = bytearray(b"".join(job_parts(7, [[5, 6, 7], [8]], [1, 0])))
    job = parse_job(message)
    assert (job.job_id, job.lengths.tolist(), job.pool_starts.tolist(), job.ids.tolist()) == (7, [3, 1], [1, 0],
                                                                                              [5, 6, 7, 8])
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    reply = parse_reply(bytearray(b"".join(bytes(p) for p in reply_parts(7, {"stats": {"items": 2}}, vectors))), 3)
    assert reply.job_id == 7 and reply.header == {"stats": {"items": 2}}
    np.testing.assert_array_equal(reply.vectors, vectors)
    error = parse_reply(bytearray(b"".join(bytes(p) for p in reply_parts(8, {"error": {"status": 500}}))), 3)
    assert error.vectors is None and error.header["error"]["status"] == 500


@pytest.mark.parametrize("broken", [b"\x01\x00", b"".join(job_parts(1, [[5, 6]], [0]))[:-4],
                                    b"".join(job_parts(1, [[5, 6]], [0])) + b"\x00\x00\x00\x00"])
def test_a_malformed_job_is_a_wire_error(broken):
    with pytest.raises(WireError):
        parse_job(bytearray(broken))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Engines of these tests live in their own temp dir (as each TorchServe's do in its TMPDIR)."""
    folder = tmp_path / "t"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    yield folder
    for pid_file in (folder / "instructor-engines").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_workers_share_one_engine_and_get_their_own_encoders_vectors(tiny_models, private_tmp):
    model = tiny_models["tiny-instructor-relu"]
    settings = Settings(engine=EngineMode.SHARED)
    own = InstructorEncoder(model, settings, "cpu").encode(PAIRS).vectors
    first, second = SharedEncoder(model, settings, "cpu"), SharedEncoder(model, settings, "cpu")
    assert first._connection.engine_pid == second._connection.engine_pid
    with ThreadPoolExecutor(4) as pool:  # both workers at once: their jobs merge in the engine
        a, b = pool.map(lambda enc: enc.encode(PAIRS, chunk_pairs=16).vectors, [first, second])
    assert np.abs(a - own).max() <= 1e-5 and np.abs(b - own).max() <= 1e-5
    assert first.dimension == own.shape[1]
    files = engine_files(engine_socket(model, "cpu", settings))
    assert files.socket.stat().st_mode & 0o777 == 0o600  # only this user's processes may connect
    assert (files.socket.parent.stat().st_mode & 0o777) == 0o700
    pid = first._connection.engine_pid
    first.close(), second.close()
    assert _wait_gone(pid), "the engine did not exit after its last worker left"
    assert not files.socket.exists() and not files.pid.exists()


def test_jobs_in_flight_when_the_engine_dies_get_503_and_the_next_request_gets_a_new_engine(tiny_models,
                                                                                           private_tmp):
    model = tiny_models["tiny-instructor-relu"]
    encoder = SharedEncoder(model, Settings(engine=EngineMode.SHARED), "cpu")
    items = encoder.tokenize(PAIRS[:3])
    before = encoder.embed(items).vectors
    pid = encoder._connection.engine_pid
    os.kill(pid, signal.SIGSTOP)  # the job below is sent, never answered
    pending = encoder.launch(items)
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    with pytest.raises(EngineUnavailable):
        pending.result()
    after = encoder.embed(items).vectors  # a new engine, started by this request
    assert encoder._connection.engine_pid != pid
    assert np.abs(after - before).max() <= 1e-6
    encoder.close()


def test_a_job_the_engine_cannot_embed_fails_alone(tiny_models, private_tmp):
    model = tiny_models["tiny-instructor-relu"]
    encoder = SharedEncoder(model, Settings(engine=EngineMode.SHARED), "cpu")
    good = encoder.tokenize(PAIRS[:2])
    bad = [TokenizedPair([10**9, 1], 0, False)]  # a token id no vocabulary has: must never reach the model
    pending_bad, pending_good = encoder.launch(bad), encoder.launch(good)
    with pytest.raises(InternalError, match="token id"):
        pending_bad.result()
    assert pending_good.result().vectors.shape == (2, encoder.dimension)
    # A peer that breaks the format loses its connection, and only its own.
    path = engine_socket(model, "cpu", encoder.settings)
    rogue = socket.socket(socket.AF_UNIX)
    rogue.connect(str(path))
    rogue.sendall(b"\xff\xff\xff\x7f" + b"x" * 16)
    rogue.settimeout(10)
    with contextlib.suppress(ConnectionResetError):  # the engine closes it, unread bytes left: a reset
        while rogue.recv(65536):
            pass
    rogue.close()
    assert encoder.embed(good).vectors.shape == (2, encoder.dimension)
    encoder.close()



@pytest.mark.torchserve
def test_two_torchserve_workers_embed_through_one_engine(tmp_path_factory, tiny_models, reference_fixture):
    name = "shared"
    model = (tiny_models["tiny-instructor-gated"], ("--batch-size", "8", "--max-batch-delay", "20",
                                                    "--engine", "shared"))
    expected = reference_fixture["models"]["tiny-instructor-gated"]["encode"]["pairs"]
    cases = [c for c in reference_fixture["cases"]["pairs"] if expected[c["id"]]["pooled_tokens"] > 0]
    want = np.array([expected[case["id"]]["vector"] for case in cases])
    with served_models(tmp_path_factory.mktemp("store"), {name: model}) as ts:
        assert ts.call("PUT", f"/models/{name}?min_worker=2&max_worker=2&synchronous=true",
                       api="management").status == 200
        info = ts.describe(name)
        assert [w["status"] for w in info["workers"]] == ["READY", "READY"]
        engines = list((ts.tmpdir / "instructor-engines").glob("*.pid"))
        assert len(engines) == 1, "one engine for both workers"
        pid = int(engines[0].read_text())

        def embed(case):
            return ts.call("POST", f"/predictions/{name}", {"inputs": [case["instruction"], case["text"]]})

        with ThreadPoolExecutor(max_workers=16) as pool:
            replies = list(pool.map(embed, cases * 3))
        assert [r.status for r in replies] == [200] * len(replies)
        assert np.abs(np.array([r.body for r in replies]) - np.concatenate([want] * 3)).max() <= 1e-5

        os.kill(pid, signal.SIGKILL)  # the engine dies: requests get 200 or a retryable 503, never a mix-up
        statuses = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ThreadPoolExecutor(max_workers=8) as pool:
                batch = list(pool.map(embed, cases))
            statuses += [r.status for r in batch]
            ok = [r.status == 200 for r in batch]
            for r, case_vector in zip(batch, want, strict=True):
                if r.status == 200:
                    assert np.abs(np.array(r.body) - case_vector).max() <= 1e-5
                else:
                    assert r.status == 503 and r.body["type"] == "EngineUnavailable", r
            if all(ok) and (503 in statuses or len(statuses) > 4 * len(cases)):
                break
        assert set(statuses) <= {200, 503} and statuses[-len(cases):] == [200] * len(cases)
        new_pid = int(next((ts.tmpdir / "instructor-engines").glob("*.pid")).read_text())
        assert new_pid != pid
    assert _wait_gone(new_pid, 2), "scripts/stop.sh (the launcher's stop) left the engine running"


def test_a_worker_waits_for_an_engine_still_loading_instead_of_starting_another(tiny_models, private_tmp):
    """An engine whose starting worker died (TorchServe kills a worker at responseTimeout) is found by its pid
    file, written before the model loads: the next worker waits for it."""
    model = tiny_models["tiny-instructor-relu"]
    settings = Settings(engine=EngineMode.SHARED)
    path = engine_socket(model, "cpu", settings)
    engine = subprocess.Popen(engine_command(model, "cpu", settings, path), cwd=_PACKAGE_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not engine_files(path).pid.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        encoder = SharedEncoder(model, settings, "cpu")  # the engine is still loading its model here
        assert encoder._connection.engine_pid == engine.pid
        encoder.close()
    finally:
        engine.kill()
        engine.wait()
