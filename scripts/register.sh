#!/usr/bin/env bash
# Register a model from the model store (or scale an already registered one) and wait for READY workers.
# All logic lives in scripts/torchserve_ctl.py (standard library only); this wrapper picks a Python.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

exec "$(any_python)" "$ctl" register "$@"
