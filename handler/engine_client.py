"""A worker's side of the device engine (handler/engine.py): find it or start it, and embed through it.

``SharedEncoder`` is an ``InstructorEncoder`` that tokenizes in the worker and embeds in the engine, so the
serving adapter does not know the difference. The engine of a (model directory, device, settings) lives at
one Unix socket in a private folder of the temp directory (TorchServe's, for a server started by
scripts/serve.sh): the first worker to find no engine there starts one, under a file lock, and the others
wait for it and connect. A worker whose engine went away fails its pending requests with 503 and starts
(or finds) a new one at its next request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from handler import errors
from handler.encoder import Embeddings, EncodeStats, InstructorEncoder, TokenizedPair
from handler.engine_wire import (
    ENGINE_FOLDER,
    Reply,
    WireError,
    job_parts,
    parse_reply,
    receive_message,
    running_engine,
    send_message,
)
from handler.errors import EngineUnavailable, InternalError, ServiceError
from handler.settings import Precision, Settings

log = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # what makes ``handler`` importable for the engine
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
_RETRY_START_AFTER_S = 10.0  # after a failed start, requests fail fast (503) for this long


@dataclasses.dataclass(frozen=True)
class EngineFiles:
    socket: Path
    lock: Path
    pid: Path
    log: Path


def engine_files(socket_path: Path) -> EngineFiles:
    return EngineFiles(socket_path, socket_path.with_suffix(".lock"), socket_path.with_suffix(".pid"),
                       socket_path.with_suffix(".log"))


def engine_socket(model_dir: Path, device: str, settings: Settings) -> Path:
    """The socket of the engine for these workers: one per model directory, device and settings."""
    key = hashlib.sha256(orjson.dumps([str(Path(model_dir).resolve()), device, settings.as_dict()],
                                      option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / ENGINE_FOLDER
    if len(str(folder / f"{key}.sock")) > _MAX_SOCKET_PATH:
        folder = Path("/tmp") / f"instructor-engines-{os.getuid()}"
    _private_folder(folder)
    return folder / f"{key}.sock"


def _private_folder(folder: Path) -> None:
    """Create ``folder`` for this user only, or refuse one that another user could write into."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EngineUnavailable(f"{folder} must belong to this user and be private (mode 0700) to hold the "
                                "device engine's socket; remove it or set TMPDIR to a private folder")


class start_lock:
    """An exclusive lock on a file, held while an engine starts or stops; reusable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def __enter__(self) -> start_lock:
        self._file = open(self.path, "a+b")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


class EngineConnection:
    """One worker's connection: jobs go out from any thread, a reader thread hands replies to their futures."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        hello = orjson.loads(bytes(receive_message(sock)))
        self.dimension: int = int(hello["dimension"])
        self.precision = Precision(hello["precision"])
        self.engine_pid: int = int(hello["pid"])
        sock.settimeout(None)
        self._futures: dict[int, Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.alive = True
        threading.Thread(target=self._read, name="engine-replies", daemon=True).start()

    def submit(self, items: Sequence[TokenizedPair]) -> Future[Reply]:
        future: Future[Reply] = Future()
        with self._lock:
            if not self.alive:
                raise EngineUnavailable("the device engine went away; retry")
            job_id = next(self._ids)
            self._futures[job_id] = future
            try:
                send_message(self.sock, *job_parts(job_id, [item.input_ids for item in items],
                                                   [item.pool_start for item in items]))
            except OSError:
                self._futures.pop(job_id, None)
                self.alive = False
                raise EngineUnavailable("the device engine went away; retry") from None
        return future

    def _read(self) -> None:
        try:
            while True:
                reply = parse_reply(receive_message(self.sock), self.dimension)
                with self._lock:
                    future = self._futures.pop(reply.job_id, None)
                if future is not None:
                    future.set_result(reply)
        except (OSError, WireError, ValueError) as error:
            with self._lock:
                self.alive = False
                waiting, self._futures = self._futures, {}
            if waiting:
                log.error("lost the device engine (pid %d) with %d jobs waiting: %s", self.engine_pid,
                          len(waiting), error)
            for future in waiting.values():
                future.set_exception(EngineUnavailable("the device engine went away while embedding this "
                                                       "request; retry"))

    def close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(path: Path, timeout_s: float = 10.0) -> EngineConnection | None:
    """The engine listening at ``path``, or None if none is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        return EngineConnection(sock)
    except (OSError, WireError):
        sock.close()
        return None


def connect_or_start(model_dir: Path, device: str, settings: Settings, start_timeout_s: float) -> EngineConnection:
    """Connect to the engine of these workers, starting it first if there is none."""
    path = engine_socket(model_dir, device, settings)
    files = engine_files(path)
    connection = connect(path)
    if connection is not None:
        return connection
    with start_lock(files.lock):  # one worker starts it; the others wait here, then find it
        connection = connect(path)
        if connection is not None:
            return connection
        loading = running_engine(files.pid)  # pid file written before the model loads
        if loading is not None:  # started by a worker that died meanwhile (e.g. killed at responseTimeout)
            return _wait_for(files, lambda: None if running_engine(files.pid) == loading else "exited",
                             start_timeout_s)
        return _start(model_dir, device, settings, files, start_timeout_s)


def engine_command(model_dir: Path, device: str, settings: Settings, socket_path: Path) -> list[str]:
    """The command line of the engine for these workers (run it with ``cwd=_PACKAGE_ROOT``)."""
    return [sys.executable, "-m", "handler.engine", "--model-dir", str(model_dir), "--device", device,
            "--socket", str(socket_path), "--settings", orjson.dumps(settings.as_dict()).decode()]


def _start(model_dir: Path, device: str, settings: Settings, files: EngineFiles,
           timeout_s: float) -> EngineConnection:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    command = engine_command(model_dir, device, settings, files.socket)
    log.info("starting the device engine for %s on %s (log: %s)", model_dir, device, files.log)
    with open(files.log, "ab") as log_file:
        # Its own session: the engine outlives the worker that started it (the other workers use it too) and
        # exits by itself once no worker is connected.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env, cwd=_PACKAGE_ROOT, start_new_session=True)
    try:
        return _wait_for(files, lambda: None if process.poll() is None else f"exited with status {process.returncode}",
                         timeout_s)
    except EngineUnavailable:
        if process.poll() is None:
            process.kill()
        raise


def _wait_for(files: EngineFiles, failed: Callable[[], str | None], timeout_s: float) -> EngineConnection:
    """Connect once the engine listens; ``failed()`` says why it never will (None: still starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        connection = connect(files.socket)
        if connection is not None:
            return connection
        reason = failed()
        if reason is not None:
            raise EngineUnavailable(f"the device engine {reason} while starting; its log ({files.log}) ends "
                                    f"with:\n{_tail(files.log)}")
        time.sleep(0.1)
    raise EngineUnavailable(f"the device engine did not start in {timeout_s:.0f} s; its log ({files.log}) ends "
                            f"with:\n{_tail(files.log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RemotePending:
    """A job sent to the engine; ``result()`` waits for its vectors (as ``PendingEmbeddings`` does)."""

    def __init__(self, items: list[TokenizedPair], future: Future[Reply] | None, dimension: int,
                 started: float) -> None:
        self._items, self._future, self._dimension, self._started = items, future, dimension, started

    def result(self) -> Embeddings:
        if self._future is None:
            return Embeddings(np.empty((0, self._dimension), np.float32), [], EncodeStats())
        reply = self._future.result()
        if "error" in reply.header:
            raise _service_error(reply.header["error"])
        vectors = reply.vectors
        if vectors is None or vectors.shape[0] != len(self._items):
            raise InternalError(f"the device engine answered {0 if vectors is None else vectors.shape[0]} "
                                f"vectors for {len(self._items)} pairs")
        stats = EncodeStats(**reply.header["stats"])
        stats.seconds = time.perf_counter() - self._started
        return Embeddings(vectors, self._items, stats)


def _service_error(body: dict[str, Any]) -> ServiceError:
    """The engine's error as the same error type here, so the request gets the same status."""
    kind = getattr(errors, str(body.get("type")), None)
    message = str(body.get("message", "the device engine failed"))
    if isinstance(kind, type) and issubclass(kind, ServiceError) and kind.status == body.get("status"):
        return kind(message)
    return InternalError(message)


class SharedEncoder(InstructorEncoder):
    """Tokenizes here, embeds in the device engine shared by every worker of this model on this device."""

    def __init__(self, model_dir: str | Path, settings: Settings, device: str,
                 start_timeout_s: float = 600.0) -> None:
        self._prepare(model_dir, settings, device)
        self._model_dir, self._start_timeout_s = Path(model_dir), start_timeout_s
        self._connection = connect_or_start(self._model_dir, device, settings, start_timeout_s)
        self._failed_start_at = -float("inf")
        self.dimension = self._connection.dimension
        self.precision = self._connection.precision
        log.info("embedding through the device engine (pid %d) on %s", self._connection.engine_pid, device)

    @property
    def vocabulary_size(self) -> int:  # the engine checks token ids against its model
        raise NotImplementedError

    def launch(self, items: Sequence[TokenizedPair]) -> RemotePending:  # type: ignore[override]
        started = time.perf_counter()
        items = list(items)
        if not items:
            return RemotePending(items, None, self.dimension, started)
        return RemotePending(items, self._connected().submit(items), self.dimension, started)

    def _connected(self) -> EngineConnection:
        if self._connection.alive:
            return self._connection
        if time.monotonic() - self._failed_start_at < _RETRY_START_AFTER_S:
            raise EngineUnavailable("the device engine is restarting; retry")
        self._connection.close()
        try:
            self._connection = connect_or_start(self._model_dir, str(self.device), self.settings,
                                                self._start_timeout_s)
        except EngineUnavailable:
            self._failed_start_at = time.monotonic()
            raise
        return self._connection

    def close(self) -> None:
        self._connection.close()


def make_encoder(model_dir: str | Path, settings: Settings, device: str, shared: bool,
                 start_timeout_s: float = 600.0) -> InstructorEncoder:
    """The worker's encoder: through the shared device engine, or its own model in this process."""
    if shared:
        return SharedEncoder(model_dir, settings, device, start_timeout_s)
    return InstructorEncoder(model_dir, settings, torch.device(device))
