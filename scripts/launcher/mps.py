"""CUDA MPS (Multi-Process Service) for the workers of one TorchServe: started before it, stopped after it.

Several worker processes on one GPU time-slice it; under MPS their kernels overlap (measured: +11-17% pairs/s
with 4 workers of instructor-large, docs/serving.md). The daemon is per user and per pipe directory: this
launcher gives it folders of its own (CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY) and passes the same
variables to TorchServe, whose workers find the daemon through them. The GPU's compute mode stays Default.
A state file next to TorchServe's pid file remembers the pipe directory, so ``stop`` ends the daemon too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scripts.launcher.errors import CtlError

CONTROL = "nvidia-cuda-mps-control"
STATE_FILE_NAME = ".mps_pipe_dir"  # beside TorchServe's pid file, in its temp directory


@dataclass(frozen=True)
class Mps:
    """One MPS control daemon: where its pipes and logs live."""

    pipe_dir: Path
    log_dir: Path

    def env(self) -> dict[str, str]:
        """The variables the daemon and its clients (TorchServe's workers) need."""
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def start_command(self) -> list[str]:
        return [CONTROL, "-d"]

    def stop_command(self) -> list[str]:
        """Run with ``quit`` on stdin (``echo quit | nvidia-cuda-mps-control``)."""
        return [CONTROL]


def for_server(tmpdir: Path, log_dir: Path) -> Mps:
    """The daemon of the TorchServe of ``tmpdir`` (a short pipe path: Unix sockets allow ~100 bytes)."""
    return Mps(pipe_dir=Path(tmpdir) / "mps-pipe", log_dir=Path(log_dir) / "mps")


def control_binary(env: Mapping[str, str] | None = None) -> str:
    """The path of nvidia-cuda-mps-control, or a CtlError that says what MPS needs."""
    env = os.environ if env is None else env
    found = shutil.which(CONTROL, path=env.get("PATH"))
    if found is None:
        raise CtlError(
            f"--mps needs {CONTROL} (part of the NVIDIA driver's utilities) on PATH, and a GPU. It is not "
            "here: install the driver's utilities, or start without --mps."
        )
    return found


def _run(mps: Mps, command: list[str], binary: str, stdin: str | None, env: Mapping[str, str]) -> None:
    proc = subprocess.run([binary, *command[1:]], input=stdin, capture_output=True, text=True, timeout=60,
                          env={**env, **mps.env()})
    if proc.returncode != 0:
        raise CtlError(f"{' '.join(command)} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
                       f" (logs: {mps.log_dir})")


def start(mps: Mps, state_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Start the daemon (``nvidia-cuda-mps-control -d``); returns the variables TorchServe must get."""
    env = dict(os.environ if env is None else env)
    binary = control_binary(env)
    mps.pipe_dir.mkdir(parents=True, exist_ok=True)
    mps.log_dir.mkdir(parents=True, exist_ok=True)
    _run(mps, mps.start_command(), binary, None, env)
    Path(state_dir, STATE_FILE_NAME).write_text(f"{mps.pipe_dir}\n{mps.log_dir}\n")
    return mps.env()


def started(state_dir: Path) -> Mps | None:
    """The daemon started for the TorchServe of ``state_dir``, if any."""
    try:
        pipe, log = Path(state_dir, STATE_FILE_NAME).read_text().split("\n")[:2]
    except (OSError, ValueError):
        return None
    return Mps(Path(pipe), Path(log))


def stop(state_dir: Path, env: Mapping[str, str] | None = None) -> bool:
    """``echo quit | nvidia-cuda-mps-control`` for the daemon of ``state_dir``; False if none was started."""
    mps = started(state_dir)
    if mps is None:
        return False
    env = dict(os.environ if env is None else env)
    try:
        _run(mps, mps.stop_command(), control_binary(env), "quit\n", env)
    finally:
        Path(state_dir, STATE_FILE_NAME).unlink(missing_ok=True)
    return True
