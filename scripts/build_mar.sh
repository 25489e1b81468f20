#!/usr/bin/env bash
# Package a model + the handler into a TorchServe archive in the model store.
# All logic lives in scripts/build_model_archive.py (testable); this wrapper picks the venv's Python.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
  case "${1:-}" in
    -h|--help) py="python3" ;;  # --help works before the venv exists
    *) echo "build_mar.sh: no Python environment at $venv: run scripts/setup_venv.sh first (or set VENV=DIR)" >&2
       exit 1 ;;
  esac
fi
exec "$py" "$repo/scripts/build_model_archive.py" "$@"
