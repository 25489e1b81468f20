#!/usr/bin/env bash
# Register a model from the model store (or scale an already registered one) and wait for READY workers.
# All logic lives in scripts/torchserve_ctl.py (standard library only); this wrapper picks a Python.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
py="$venv/bin/python"
[[ -x "$py" ]] || py="python3"  # the registration needs nothing beyond the standard library
exec "$py" "$repo/scripts/torchserve_ctl.py" register "$@"
