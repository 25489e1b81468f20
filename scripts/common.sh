# shellcheck shell=bash
# Sourced (not run) by the scripts: where the repository and its Python environment are.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
py="$venv/bin/python"
ctl="$repo/scripts/torchserve_ctl.py"

# Any Python runs scripts/torchserve_ctl.py (standard library only); prefer the venv's.
any_python() {
  if [[ -x "$py" ]]; then echo "$py"; else echo "python3"; fi
}

# The venv's Python, for what needs the packages; without a venv only --help works (with python3).
# Usage: venv_python SCRIPT_NAME "$@"
venv_python() {
  local script="$1"; shift
  if [[ -x "$py" ]]; then echo "$py"; return 0; fi
  case "${1:-}" in
    -h|--help) echo "python3" ;;
    *) echo "$script: no Python environment at $venv: run scripts/setup_venv.sh first (or set VENV=DIR)" >&2
       return 1 ;;
  esac
}
