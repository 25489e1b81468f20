"""One TorchServe per GPU behind nginx: the plan (which GPU, which ports), nginx's configuration, its process.

Why: TorchServe 0.12 hands each dynamic batch to whichever worker polls first, across all GPUs of a model,
so one TorchServe over several GPUs leaves some of them idle. One TorchServe per GPU, each pinned with
CUDA_VISIBLE_DEVICES, gets its own queue and batches; nginx (from the distribution, started and stopped here,
never a home-made proxy) spreads requests over them with least_conn.

Kept: auth (clients use ONE key, checked by nginx; each backend keeps TorchServe's token auth, so its
management API still needs its own management key; nginx relays a request to backend i through a Unix
socket in its own folder, mode 0700, that adds backend i's inference key), limits (client_max_body_size =
max_request_size, a cap on connections) and metrics (each backend's metrics port, scraped one by one).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.launcher.config import PORT_NAMES, port_overrides
from scripts.launcher.errors import CtlError

NGINX = "nginx"
# Connections nginx accepts at once: the queue's worth per backend (job_queue_size) plus headroom; more is a
# flood that would only wait (docs/reliability.md).
CONNECTIONS_PER_BACKEND = 512
PORTS_PER_BACKEND = len(PORT_NAMES)
UNAUTHORIZED = json.dumps({"code": 401, "type": "Unauthorized",
                           "message": "Token Authorization failed: send Authorization: Bearer <key>"})


@dataclass(frozen=True)
class Backend:
    """One TorchServe of the plan: its GPU, its five loopback ports, its temp directory (pid file)."""

    gpu: str  # a CUDA_VISIBLE_DEVICES entry: an index or a GPU UUID
    ports: dict[str, int]
    tmpdir: Path

    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.gpu}

    def overrides(self) -> dict[str, str]:
        """Its configuration on top of the base: its ports (loopback)."""
        return port_overrides(self.ports)

    @property
    def inference(self) -> str:
        return f"127.0.0.1:{self.ports['inference']}"



def plan_backends(device_ids: Sequence[str], first_port: int, root: Path) -> list[Backend]:
    """One backend per visible GPU, ports ``first_port`` + 5 x i onwards, temp directories under ``root``."""
    if not device_ids:
        raise CtlError("One TorchServe per GPU needs GPUs: CUDA_VISIBLE_DEVICES / nvidia-smi list none.")
    backends = []
    for i, gpu in enumerate(device_ids):
        base = first_port + PORTS_PER_BACKEND * i
        ports = {name: base + k for k, name in enumerate(PORT_NAMES)}
        backends.append(Backend(gpu=str(gpu), ports=ports, tmpdir=Path(root) / f"gpu{i}"))
    return backends


def new_key() -> str:
    """The one inference key nginx checks (TorchServe's keys are 8-character tokens; this is longer)."""
    return secrets.token_urlsafe(24)


def _relay(i: int, backend: Backend, socket: str, key: str | None, timeout: int) -> str:
    """The server on a Unix socket that forwards to backend ``i`` with that backend's own inference key."""
    auth = "" if key is None else f'\n            proxy_set_header Authorization "Bearer {key}";'
    return f"""
    upstream backend_{i} {{
        server {backend.inference};
        keepalive 16;
    }}
    server {{
        listen {socket};
        location / {{
            proxy_pass http://backend_{i};
            proxy_http_version 1.1;
            proxy_set_header Connection "";{auth}
            proxy_read_timeout {timeout}s;
        }}
    }}"""


def _user() -> str:
    """As root, nginx's workers would become "nobody" and could not reach the relay sockets in the 0700
    folder: they run as the user that runs the backends (only root when everything already runs as root)."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n"


def render_nginx(backends: Sequence[Backend], listen: str, prefix: Path, props: Mapping[str, str],
                 key: str | None, backend_keys: Sequence[str | None] | None = None) -> str:
    """nginx.conf for the inference API of ``backends`` on ``listen`` (HOST:PORT); files under ``prefix``.

    ``props`` (the backends' rendered configuration) gives the body limit and the response timeout; ``key``
    is what clients send (None: no check); ``backend_keys`` the backends' own inference keys, in order.
    """
    body = int(props.get("max_request_size", 6553500))
    too_large = json.dumps({"code": 413, "type": "RequestTooLarge",
                            "message": f"the body exceeds max_request_size ({body} bytes): split the request"})
    timeout = int(props.get("default_response_timeout", 120))
    keys = list(backend_keys) if backend_keys is not None else [None] * len(backends)
    sockets = [f"unix:{prefix}/relay{i}.sock" for i in range(len(backends))]
    upstream = "\n".join(f"        server {socket} max_fails=0;" for socket in sockets)
    relays = "".join(_relay(i, b, sockets[i], k, timeout)
                     for i, (b, k) in enumerate(zip(backends, keys, strict=True)))
    auth = "" if key is None else f"""
        # One key for clients; the client's header is replaced by the backend's own key in its relay.
        # /ping stays open as in TorchServe.
        if ($authorized = 0) {{
            return 401 '{UNAUTHORIZED}';
        }}"""
    key_map = "" if key is None else f"""
    map $http_authorization $authorized {{
        default 0;
        "Bearer {key}" 1;
    }}"""
    return f"""# GENERATED by scripts/launcher/balancer.py: one TorchServe per GPU behind nginx. Do not edit.
{_user()}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {CONNECTIONS_PER_BACKEND * len(backends) * 4 + 64};
}}
http {{
    access_log off;  # TorchServe's access_log.log has every request
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/json;
    # TorchServe's own limit, refused by nginx first with the same status.
    client_max_body_size {body};
    client_body_buffer_size {body};
    limit_conn_zone $server_name zone=connections:1m;{key_map}
    upstream torchserve_inference {{
        least_conn;  # the backend with the fewest requests in flight: GPUs kept evenly busy
{upstream}
        keepalive {16 * len(backends)};
    }}
    server {{
        listen {listen};
        limit_conn connections {CONNECTIONS_PER_BACKEND * len(backends)};
        limit_conn_status 503;
        error_page 413 = @too_large;
        location = /ping {{
            proxy_pass http://torchserve_inference;
        }}
        location / {{{auth}
            proxy_pass http://torchserve_inference;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_read_timeout {timeout}s;
            proxy_next_upstream error;
        }}
        location @too_large {{
            return 413 '{too_large}';
        }}
    }}{relays}
}}
"""


def nginx_binary() -> str:
    found = shutil.which(NGINX) or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        raise CtlError("One TorchServe per GPU needs nginx (apt-get install nginx): it is not installed.")
    return found


def write_config(text: str, prefix: Path) -> Path:
    """Write nginx.conf (mode 0600: it holds the key) and the folders it names under ``prefix``."""
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o700)  # the relay sockets in it add the backends' keys: this user only
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(text)
    return conf


def _nginx(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([nginx_binary(), "-c", str(conf), "-p", str(conf.parent), *args],
                          capture_output=True, text=True, timeout=60)


def check_config(conf: Path) -> None:
    """``nginx -t``: refuse a configuration nginx would not run, with nginx's message."""
    proc = _nginx(conf, "-t")
    if proc.returncode != 0:
        raise CtlError(f"nginx -t refused {conf}: {proc.stderr.strip()}")


def start_nginx(conf: Path) -> None:
    check_config(conf)
    proc = _nginx(conf)
    if proc.returncode != 0:
        raise CtlError(f"nginx did not start: {proc.stderr.strip()} (log: {conf.parent / 'error.log'})")


def stop_nginx(conf: Path) -> bool:
    """``nginx -s quit`` (finishes requests in flight); False if it was not running."""
    if not (conf.parent / "nginx.pid").exists():
        return False
    proc = _nginx(conf, "-s", "quit")
    if proc.returncode != 0:
        raise CtlError(f"nginx -s quit failed: {proc.stderr.strip()}")
    return True
