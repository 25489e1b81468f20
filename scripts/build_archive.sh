#!/usr/bin/env bash
# Package a model + the handler into a TorchServe archive (a folder, or a .mar with --format mar).
# All logic lives in scripts/build_model_archive.py (testable); this wrapper picks the venv's Python.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

python="$(venv_python build_archive.sh "$@")"
exec "$python" "$repo/scripts/build_model_archive.py" "$@"
