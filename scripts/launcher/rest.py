"""TorchServe's keys (key_file.json) and one HTTP call to its APIs (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.launcher.errors import CtlError, ServerDown


@dataclass(frozen=True)
class Keys:
    """The tokens TorchServe writes to key_file.json (None: token auth is off / no key file)."""

    inference: str | None = None
    management: str | None = None
    api: str | None = None


def read_keys(key_file: Path) -> Keys:
    """Read key_file.json; a missing file gives empty keys (TorchServe may run without token auth)."""
    try:
        data = json.loads(key_file.read_text())
    except FileNotFoundError:
        return Keys()
    except (OSError, ValueError) as e:
        raise CtlError(f"Cannot read {key_file}: {e}") from None
    return Keys(
        inference=data.get("inference", {}).get("key"),
        management=data.get("management", {}).get("key"),
        api=data.get("API", {}).get("key"),
    )


@dataclass(frozen=True)
class Response:
    """An HTTP answer: the status and the body, parsed as JSON when it is JSON, else text."""

    status: int
    body: Any

    def message(self) -> str:
        """TorchServe's error text (its JSON ``message``/``status``), else the body as text."""
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body.get("status") or self.body)
        return str(self.body).strip()


def request(method: str, url: str, token: str | None, timeout: float, body: bytes | None = None,
            content_type: str | None = None) -> Response:
    """One HTTP call; HTTP errors are returned as responses, an unreachable server raises ServerDown."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except OSError as e:  # URLError included
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, TimeoutError):
            raise TimeoutError(f"{method} {url} timed out after {timeout:.0f} s") from None
        raise ServerDown(f"TorchServe does not answer at {url} ({reason}).") from None
    text = raw.decode("utf-8", "replace")
    try:
        return Response(status, json.loads(text))
    except ValueError:
        return Response(status, text)
