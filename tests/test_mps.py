"""CUDA MPS as an option of the launcher: the daemon's commands and folders, and a clear refusal without it.

No GPU here: a stand-in nvidia-cuda-mps-control on PATH records how it is called (arguments, stdin and the
MPS variables), which is all the launcher decides.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from scripts.launcher import CtlError, mps
from tests.torchserve_harness import run_script

RECORDER = """#!/usr/bin/env python3
import json, os, sys
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["MPS_RECORD"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "stdin": stdin,
                        "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
                        "log": os.environ.get("CUDA_MPS_LOG_DIRECTORY")}) + "\\n")
"""


@pytest.fixture
def fake_control(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / mps.CONTROL
    tool.write_text(RECORDER)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MPS_RECORD": str(tmp_path / "calls.jsonl")}


def test_start_runs_the_daemon_with_private_folders_and_stop_sends_quit(tmp_path, fake_control):
    daemon = mps.for_server(tmp_path / "tmp", tmp_path / "logs")
    env = mps.start(daemon, tmp_path, fake_control)
    assert env == {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "tmp" / "mps-pipe"),
                   "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "logs" / "mps")}
    assert Path(env["CUDA_MPS_PIPE_DIRECTORY"]).is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    assert mps.started(tmp_path) == daemon
    assert mps.stop(tmp_path, fake_control) is True
    assert mps.stop(tmp_path, fake_control) is False  # once: the state file is gone
    calls = [json.loads(line) for line in Path(fake_control["MPS_RECORD"]).read_text().splitlines()]
    assert [c["argv"] for c in calls] == [["-d"], []]
    assert calls[1]["stdin"] == "quit\n"
    assert all((c["pipe"], c["log"]) == (env["CUDA_MPS_PIPE_DIRECTORY"], env["CUDA_MPS_LOG_DIRECTORY"])
               for c in calls)


def test_without_the_control_binary_mps_is_refused_with_what_it_needs(tmp_path):
    with pytest.raises(CtlError, match="nvidia-cuda-mps-control"):
        mps.control_binary({"PATH": str(tmp_path)})


def test_stop_sh_ends_a_daemon_left_by_a_server_that_is_gone(tmp_path, fake_control):
    mps.start(mps.for_server(tmp_path, tmp_path / "logs"), tmp_path, fake_control)
    proc = run_script("stop.sh", env={**fake_control, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert mps.started(tmp_path) is None
    assert '"stdin": "quit\\n"' in Path(fake_control["MPS_RECORD"]).read_text()


def test_serve_sh_offers_mps():
    proc = run_script("serve.sh", "--help")
    assert "--mps" in proc.stdout and "nvidia-cuda-mps-control" in proc.stdout
