"""What TorchServe's logs say when something failed: one tail reader, three views of it.

TorchServe writes the launcher's output to torchserve_stdout.log (this package redirects it there), the
frontend's to ts_log.log and the workers' (handler tracebacks) to model_log.log, all in its log directory.
"""

from __future__ import annotations

from pathlib import Path

STDOUT_LOG = "torchserve_stdout.log"
FRONTEND_LOG = "ts_log.log"
WORKER_LOG = "model_log.log"
# Enough for the last few hundred lines without reading a multi-GB log.
TAIL_BYTES = 65536
BIND_FAILURES = ("Failed to bind", "Address already in use", "BindException")


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (none if it does not exist)."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return f.read().decode("utf-8", "replace").splitlines()[-lines:]


def worker_errors(log_dir: Path) -> str:
    """The distinct error lines at the end of model_log.log, where a worker's traceback lands."""
    log = log_dir / WORKER_LOG
    if not log.is_file():
        return f"See {WORKER_LOG} in TorchServe's log directory (default: <its working dir>/logs)."
    lines = tail(log, 300)
    # A worker's traceback ends in the handler's exception and is repeated by the worker loop:
    # show the distinct error lines, most recent last.
    errors = [line.split(" MODEL_LOG - ", 1)[-1] for line in lines if "Error" in line or "Exception" in line]
    shown = list(dict.fromkeys(errors))[-6:] or lines[-10:]
    return f"From {log}:\n  " + "\n  ".join(line[:300] for line in shown)


def start_failure(log_dir: Path) -> str:
    """Why a start failed: the launcher's last lines and the frontend's errors, with a hint when a port is taken."""
    lines = tail(log_dir / STDOUT_LOG, 15)
    lines += [line for line in tail(log_dir / FRONTEND_LOG, 300)
              if "ERROR" in line or "Exception" in line or "Failed to bind" in line][-10:]
    shown = "\n  ".join(lines) or "(no log lines)"
    hint = ""
    if any(marker in line for line in lines for marker in BIND_FAILURES):
        hint = "\n  A port is taken by another program: choose others (TS_*_PORT variables, or port overrides)."
    return f"From {log_dir}:\n  {shown}{hint}"


def recent(log_dir: Path, lines: int = 40) -> str:
    """The last lines of the launcher's, the frontend's and the workers' logs, each under its path."""
    out = []
    for name in (STDOUT_LOG, FRONTEND_LOG, WORKER_LOG):
        path = log_dir / name
        if path.is_file():
            out.append(f"--- {path}\n" + "\n".join(tail(path, lines)))
    return "\n".join(out)
