"""TorchServe's configuration: one base file, overlays on top, everything rendered by render_config().

Every configuration this repository ships is rendered here from the repository's ``config.properties``
plus overlay files in ``config/`` (``production.properties``, ``docker.properties``, ``kserve.properties``)
plus per-run overrides (ports, model store, a model snapshot). The frontend's memory (``vmargs``) is not
written by hand: frontend_memory() derives it from the limits of the rendered file and the workers and batch
size it must hold (memory.py).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from scripts.launcher.errors import CtlError
from scripts.launcher.memory import Capacity, vmargs

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO_ROOT / "config.properties"
OVERLAY_DIR = REPO_ROOT / "config"

PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
# Environment variable -> (config key, value template). Addresses stay on loopback.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TS_INFERENCE_PORT": ("inference_address", "http://127.0.0.1:{}"),
    "TS_MANAGEMENT_PORT": ("management_address", "http://127.0.0.1:{}"),
    "TS_METRICS_PORT": ("metrics_address", "http://127.0.0.1:{}"),
    "TS_GRPC_INFERENCE_PORT": ("grpc_inference_port", "{}"),
    "TS_GRPC_MANAGEMENT_PORT": ("grpc_management_port", "{}"),
    "TS_MODEL_STORE": ("model_store", "{}"),
}
# Keys holding paths: made absolute (against the base file's folder) so the rendered file works anywhere.
PATH_KEYS = ("model_store", "metrics_config", "workflow_store")
DEFAULT_ADDRESSES = {
    "inference": "http://127.0.0.1:8080",
    "management": "http://127.0.0.1:8081",
    "metrics": "http://127.0.0.1:8082",
}
# A key TorchServe reads: lower-case words joined by '_' (and the few dotted ones); a value is one line.
KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java .properties file the simple way TorchServe's launcher does (key=value lines)."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def read_overlays(paths: Sequence[Path]) -> dict[str, str]:
    """The keys of several overlay files, later files winning (e.g. config/production.properties)."""
    out: dict[str, str] = {}
    for path in paths:
        if not Path(path).is_file():
            raise CtlError(f"No overlay file {path}.")
        out.update(read_properties(Path(path)))
    return out


def env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The config overrides requested through TS_*_PORT / TS_MODEL_STORE environment variables."""
    out = {}
    for var, (key, template) in ENV_OVERRIDES.items():
        value = env.get(var, "").strip()
        if value:
            if var.endswith("_PORT") and not value.isdigit():
                raise CtlError(f"{var}={value!r} is not a port number.")
            out[key] = template.format(value)
    return out


def port_overrides(ports: Mapping[str, int] | Sequence[int]) -> dict[str, str]:
    """Config overrides that put the five APIs on these loopback ports.

    ``ports`` maps the names of PORT_NAMES to ports, or lists five ports in that order.
    """
    if not isinstance(ports, Mapping):
        ports = dict(zip(PORT_NAMES, ports, strict=True))
    return {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
    }


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_override(key: str, value: str) -> None:
    """Refuse what would inject lines or keys into the rendered file (a newline in a model name, say)."""
    if not KEY_PATTERN.match(key):
        raise CtlError(f"{key!r} is not a config.properties key.")
    if any(c in value for c in "\r\n\x00"):
        raise CtlError(f"The value of {key} holds a line break: one line per key.")


def render_config(
    overrides: Mapping[str, str] | None = None,
    base: Path = BASE_CONFIG,
    base_dir: Path | None = None,
    *,
    overlays: Sequence[Path] = (),
    capacity: Capacity | None = None,
    header: str | None = None,
) -> tuple[str, dict[str, str]]:
    """Return (text, properties) of ``base`` + ``overlays`` + ``overrides``, path keys made absolute.

    Relative paths resolve against ``base_dir`` (default: the folder of ``base``). Comments and order
    of ``base`` are kept; overridden keys are replaced in place, new ones appended. Unless ``vmargs`` is
    overridden, it is computed from the rendered limits and ``capacity`` (the workers and batch size the
    frontend must hold; default: the largest recommended configuration, memory.RECOMMENDED_MAX).
    """
    base_dir = base.parent if base_dir is None else base_dir
    lines = base.read_text().splitlines()
    props = read_properties(base)
    explicit = {**read_overlays(overlays), **(overrides or {})}
    for key, value in explicit.items():
        check_override(key, str(value))
    props.update({k: str(v) for k, v in explicit.items()})
    for key in PATH_KEYS:
        if key in props and not Path(props[key]).is_absolute() and "://" not in props[key]:
            props[key] = str((base_dir / props[key]).resolve())
    if "vmargs" not in explicit:
        props["vmargs"] = vmargs(props, capacity)
    out, done = [], set()
    for line in lines:
        key, sep, _ = line.partition("=")
        key = key.strip()
        if sep and not key.startswith(("#", "!")) and key in props:
            out.append(f"{key}={props[key]}")
            done.add(key)
        else:
            out.append(line)
    extra = [f"{k}={v}" for k, v in props.items() if k not in done]
    sources = " + ".join([base.name, *(Path(o).name for o in overlays)])
    top = header or f"# GENERATED from {sources} by scripts/launcher (render_config): edit those, not this file."
    return top.rstrip("\n") + "\n" + "\n".join(out + extra) + "\n", props


def effective_config(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The properties TorchServe runs with when started by scripts/serve.sh in this environment."""
    return render_config(env_overrides(os.environ if env is None else env))[1]


def base_url(props: Mapping[str, str], api: str) -> str:
    """Base URL of the ``inference``/``management``/``metrics`` API for these properties."""
    return props.get(f"{api}_address", DEFAULT_ADDRESSES[api]).rstrip("/")
