#!/usr/bin/env bash
# Rebuild tests/reference/fixture.json: InstructorEmbedding 1.0.1's own vectors for the tiny test models.
# CI never runs this (the fixture is committed); run it when cases.py or tests/tiny_models.py change.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tests/reference/build_reference.sh [--modern-python PY] [--venv DIR] [--fresh] [--out FILE]

1. Creates the reference environment DIR (default: tests/reference/.venv-ref) with the reference stack:
   torch==2.13.0, InstructorEmbedding==1.0.1 and
   sentence-transformers==2.2.2 (--no-deps), then transformers<5, huggingface_hub<0.26 and the
   packages ST 2.2.2 imports. An existing DIR built from the same pins is reused (--fresh rebuilds it).
2. Builds the tiny models twice, with the modern stack (PY) and with the reference stack, checks that
   every file's sha256 is the same and that each stack loads them (tests/tiny_models.py --verify).
3. Runs tests/reference/run_reference.py in the reference environment on the modern build, which
   writes FILE (default: tests/reference/fixture.json).

  --modern-python PY  the project's Python (default: $MODERN_PYTHON, else <repo>/.venv/bin/python;
                      scripts/setup_venv.sh --test makes it)
  --venv DIR          the throwaway reference venv (default: tests/reference/.venv-ref, git-ignored)
  --fresh             delete and recreate the reference venv first
  --out FILE          where the fixture goes (default: tests/reference/fixture.json)
  PYTHON=python3.11   the interpreter the reference venv is made from (default: python3)
Needs the package registry (pip); nothing else from the network.
USAGE
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
modern="${MODERN_PYTHON:-$repo/.venv/bin/python}"
venv="$here/.venv-ref"
out="$here/fixture.json"
fresh=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --modern-python) modern="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build_reference.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ ! -x "$modern" ]]; then
  echo "build_reference.sh: no modern Python at '$modern'." >&2
  echo "  Run scripts/setup_venv.sh --test, or pass --modern-python /path/to/venv/bin/python." >&2
  exit 1
fi
start=$SECONDS

# --- 1. the reference environment ------------------------------------------------------------------
# The three pip steps are the ones of the notes, verbatim: ST 2.2.2's declared dependencies would pull
# torchvision and an unpinned transformers, so it goes in with --no-deps and its imports follow.
# pip then prints "ERROR: ... sentence-transformers 2.2.2 requires torchvision": expected and harmless
# (INSTRUCTOR never imports it).
pins=(
  "torch==2.13.0"
  "--no-deps InstructorEmbedding==1.0.1 sentence-transformers==2.2.2"
  "torch==2.13.0 transformers<5 huggingface_hub<0.26 tqdm numpy scikit-learn scipy nltk sentencepiece protobuf pillow"
)
want="$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"
stamp="$venv/.reference-stamp"
if [[ $fresh -eq 1 || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  python="${PYTHON:-python3}"
  echo "build_reference.sh: creating the reference venv in $venv (about 2 minutes) ..."
  rm -rf "$venv"
  "$python" -m venv "$venv"
  for spec in "${pins[@]}"; do
    # shellcheck disable=SC2086  # each entry is a list of pip arguments
    "$venv/bin/python" -m pip install -q $spec
  done
  echo "$want" > "$stamp"
else
  echo "build_reference.sh: reusing the reference venv in $venv (--fresh rebuilds it)"
fi
ref="$venv/bin/python"

# --- 2. the tiny models, built by both stacks ------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "build_reference.sh: building the tiny models with $modern ..."
"$modern" "$repo/tests/tiny_models.py" "$work/modern" --verify
echo "build_reference.sh: building them again with the reference stack ..."
"$ref" "$repo/tests/tiny_models.py" "$work/ref" --verify
if ! diff -u "$work/modern/SHA256SUMS" "$work/ref/SHA256SUMS"; then
  echo "build_reference.sh: the two stacks built different files (see the diff above): the fixture" >&2
  echo "  would not describe what CI builds. Make tests/tiny_models.py independent of the difference." >&2
  exit 1
fi
(cd "$work/modern" && sha256sum --quiet -c SHA256SUMS)
echo "build_reference.sh: both stacks built byte-identical files ($(wc -l < "$work/modern/SHA256SUMS") files)"

# --- 3. the fixture --------------------------------------------------------------------------------
"$ref" "$here/run_reference.py" --models "$work/modern" --out "$out"
echo "build_reference.sh: done in $((SECONDS - start)) s; review and commit $out"
