#!/usr/bin/env bash
# Stop TorchServe completely: the Java frontend AND its Python workers, waiting until they are gone.
# All logic lives in scripts/torchserve_ctl.py (standard library only); this wrapper picks a Python.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

exec "$(any_python)" "$ctl" stop "$@"
