"""TorchServe's processes, read from Linux /proc: its pid file, whether it runs, stopping it with its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

PID_FILE_NAME = ".model_server.pid"  # TorchServe's launcher keeps it in its temp directory
JAVA_MAIN_CLASS = "org.pytorch.serve.ModelServer"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """The PIDs of every process below ``pid`` (TorchServe's Python workers and their children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_file(tmpdir: Path | None = None) -> Path:
    """TorchServe's pid file: one TorchServe per temp directory ($TMPDIR, $TEMP, $TMP, else /tmp)."""
    return Path(tmpdir or tempfile.gettempdir()) / PID_FILE_NAME


def running_pid(tmpdir: Path | None = None) -> int | None:
    """The PID of the TorchServe frontend (Java) of this temp directory, or None if none runs."""
    try:
        pid = int(pid_file(tmpdir).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if is_torchserve(pid) else None


def is_torchserve(pid: int) -> bool:
    """Whether ``pid`` is a live TorchServe frontend (not a process that got its recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return JAVA_MAIN_CLASS.encode() in cmdline and process_alive(pid)


def process_cwd(pid: int) -> Path | None:
    """The working directory of ``pid``: where TorchServe wrote its key_file.json."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def stop_process_tree(pid: int, timeout: float = 60.0) -> float:
    """SIGTERM ``pid``, SIGKILL it after ``timeout`` s, then end any of its workers left; returns seconds.

    Waits until every process is gone (``torchserve --stop`` returns before Java exits).
    """
    started = time.monotonic()
    workers = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while process_alive(pid) and time.monotonic() - started < timeout:
        time.sleep(0.2)
    if process_alive(pid):
        print(f"TorchServe (pid {pid}) still runs after {timeout:.0f} s: sending SIGKILL", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Workers normally exit with the frontend; make sure none is left holding a model in memory.
    end_processes(workers, term_grace=2.0, kill_grace=5.0)
    # Exited processes stay zombies until their parent (often init) reaps them: give it a moment so
    # that "stopped" means gone from the process table.
    deadline = time.monotonic() + 3.0
    while any(Path(f"/proc/{p}").exists() for p in (pid, *workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.monotonic() - started



def end_processes(pids: list[int], term_grace: float, kill_grace: float) -> None:
    """SIGTERM those of ``pids`` still alive, SIGKILL any left after ``term_grace`` s; wait up to ``kill_grace``."""
    left = [p for p in pids if process_alive(p)]
    for sig, grace in ((signal.SIGTERM, term_grace), (signal.SIGKILL, kill_grace)):
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + grace
        while (left := [p for p in left if process_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop_engines(tmpdir: Path, grace: float = 5.0) -> list[int]:
    """End the device engines (handler/engine.py) of the server of ``tmpdir`` that are still running: they
    exit by themselves a few seconds after their last worker, but "stopped" means gone. Returns their pids."""
    try:
        from handler.engine_wire import ENGINE_FOLDER, running_engine
    except ImportError:  # a launcher without the handler package next to it serves no engine
        return []
    engines = [pid for path in (Path(tmpdir) / ENGINE_FOLDER).glob("*.pid")
               if (pid := running_engine(path)) is not None]
    end_processes(engines, term_grace=grace, kill_grace=grace)
    return engines
