#!/usr/bin/env bash
# The test command: lint + the whole suite, a real TorchServe included.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/test.sh [--fast] [PYTEST_ARGS...]

From a fresh clone: creates .venv with everything (scripts/setup_venv.sh --test),
runs ruff, then pytest on tests/ (end-to-end tests start their own TorchServe on
127.0.0.1 with free ports and stop it afterwards).
  --fast        skip tests marked torchserve/slow (unit tests only)
  PYTEST_ARGS   passed to pytest, e.g. -k handler -x
USAGE
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
pytest_args=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --fast) pytest_args+=(-m "not torchserve and not slow") ;;
    *) pytest_args+=("$arg") ;;
  esac
done

"$repo/scripts/setup_venv.sh" --test
py="$repo/.venv/bin/python"
# Lint the folders that exist: git does not keep an empty benchmarks/, and ruff fails on a missing path.
lint=()
for dir in handler tests tools benchmarks scripts client examples deploy docker; do
  [[ -e "$repo/$dir" ]] && lint+=("$dir")
done
"$py" -m ruff check "${lint[@]}"
set +e
"$py" -m pytest "${pytest_args[@]}"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit $rc
