#!/usr/bin/env python3
"""Exit 0 when every model TorchServe serves has all its workers READY; else print why and exit 1.

Used as the container HEALTHCHECK and as the Kubernetes readiness/startup probe. It asks TorchServe's
management API (loopback) rather than /ping, which stays "Healthy" while a worker restarts. It reads the
management address and the token setting from TorchServe's config.properties (by default the one
docker/entrypoint.sh started TorchServe with, recorded in ts-config.path), and the management key
from key_file.json (TorchServe writes it into its working directory) when token auth is on.
Standard library only: it runs in any image with Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

IMAGE_CONFIG = Path("/home/model-server/config.properties")
RECORDED_CONFIG = Path("ts-config.path")  # entrypoint.sh writes it into TorchServe's working directory


def default_config() -> Path:
    """The config TorchServe was started with (plain or KServe configuration), else the image's."""
    try:
        recorded = RECORDED_CONFIG.read_text().strip()
    except OSError:
        return IMAGE_CONFIG
    return Path(recorded) if recorded else IMAGE_CONFIG


def read_properties(path: Path) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blank lines skipped)."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def get_json(url: str, token: str | None, timeout: float) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        return json.loads(resp.read())


def check(config: Path, key_file: Path, timeout: float) -> str | None:
    """None when ready, else the reason it is not."""
    props = read_properties(config)
    base = props.get("management_address", "http://127.0.0.1:8081").rstrip("/").replace("0.0.0.0", "127.0.0.1")
    token = None
    if props.get("disable_token_authorization", "false").lower() != "true":
        try:
            token = json.loads(key_file.read_text())["management"]["key"]
        except (OSError, ValueError, KeyError) as error:
            return f"no management key in {key_file} yet ({error})"
    try:
        models = [m["modelName"] for m in get_json(f"{base}/models", token, timeout)["models"]]
        if not models:
            return "TorchServe serves no model: is the model store empty?"
        for name in models:
            workers = get_json(f"{base}/models/{name}", token, timeout)[0]["workers"]
            states = [w["status"] for w in workers]
            if not states or any(state != "READY" for state in states):
                return f"model {name}: workers {states or 'none'}, not all READY"
    except (OSError, ValueError, KeyError, IndexError, urllib.error.URLError) as error:
        return f"TorchServe management API at {base} does not answer as expected ({error})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None,
                        help=f"TorchServe's config.properties (default: the path in {RECORDED_CONFIG}, "
                             f"else {IMAGE_CONFIG})")
    parser.add_argument("--key-file", type=Path, default=Path("key_file.json"),
                        help="TorchServe's key file, relative to its working directory (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds per HTTP call (default: %(default)s)")
    args = parser.parse_args()
    reason = check(args.config or default_config(), args.key_file, args.timeout)
    if reason:
        print(f"not ready: {reason}", file=sys.stderr)
        return 1
    print("ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
