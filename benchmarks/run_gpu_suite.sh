#!/usr/bin/env bash
# The GPU benchmark suite, in two phases that run back to back on one warm device machine.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: benchmarks/run_gpu_suite.sh PHASE [--quick]

PHASE
  inprocess   install the carried wheels (.whl/*.whl -> ~/tssite), write the random-weight models
              (base, large, xl -> /tmp/instructor-bench), run bench_inprocess for large (acceleration
              variants + planner settings), base and xl (each against the seed method)
  torchserve  unpack the carried Java runtime (.jre/jre.tgz -> ~/jre) and run bench_torchserve for large
              (the project's handler and the seed handler); needs the inprocess phase's ~/tssite and models
  all         both (only where wheels and runtime fit in one call)
  e2e         one call: unpack .tsbundle (benchmarks/ts_bundle.py pack) -> ~/tssite + ~/jre, write the large
              model, time the handler in-process (with and without CPU contention), then TorchServe runs:
              A default environment (diagnostics), B OMP_NUM_THREADS=1 (+ batched-tokenize variant),
              C OMP_NUM_THREADS=1 with 2 workers
  final       one short call: unpack .tsbundle, write the large model, one TorchServe run of the project's
              handler (1 worker, OMP_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false) at c=1, 64, 256
  --quick     tiny workloads, to check the script itself (minutes -> seconds)

Figures go to benchmarks/RESULTS.md and benchmarks/results.json, which are copied with the logs to $OUT
(default: ./gpu-out) so they come back from the device machine. Environment: PYTHON (default python3),
SUITE_SHAPES (default "large xl base"), SUITE_TS_SHAPE (default large): smaller shapes to test the script on CPU.
Why two phases: the device call carries at most 64 MiB; the TorchServe wheel (42 MB) and a trimmed Java
runtime (33 MB) do not fit together, and what a call leaves outside the repository survives while the
machine stays warm (30 s).
USAGE
}

phase="${1:-}"
quick=0
[[ "${2:-}" == "--quick" ]] && quick=1
case "$phase" in
  inprocess|torchserve|all|e2e|final) ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-$repo/gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
site="$HOME/tssite"
export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1
log="$out/suite-$phase.log"
exec > >(tee -a "$log") 2>&1

finish() {
  cp benchmarks/RESULTS.md benchmarks/results.json "$out/" 2>/dev/null || true
}
trap finish EXIT

echo "== $(date -u +%FT%TZ) phase $phase on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c 'import torch, transformers, sys; print("torch", torch.__version__, "transformers", transformers.__version__,
  "python", sys.version.split()[0], "cuda", torch.cuda.is_available())'

shapes="${SUITE_SHAPES:-large xl base}"
gen=cpu
"$py" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' && gen=cuda
ts_shape="${SUITE_TS_SHAPE:-large}"
if [[ $quick == 1 ]]; then
  pairs=256; seed_pairs=128; reps=1; lat=5
else
  pairs=4096; seed_pairs=4096; reps=3; lat=200
fi

if [[ "$phase" == inprocess || "$phase" == all ]]; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    echo "installed $(ls .whl | tr '\n' ' ') into $site"
  fi
  for shape in $shapes; do
    [[ -f /tmp/instructor-bench/$shape/config.json ]] ||
      "$py" -m benchmarks.make_bench_model --shape "$shape" --out "/tmp/instructor-bench/$shape" --device "$gen"
  done
  for shape in $shapes; do
    case "$shape" in
      # large: the acceleration levers one by one, then planner settings with the default variant.
      large) extra=(--variants default,hf,fused,compiled
                    --planner 16384:128:128,16384:128:2048,32768:256:1024,65536:512:2048,8192:64:256) ;;
      base) extra=(--variants default,hf --planner 32768:256:1024,65536:512:2048) ;;
      xl) extra=(--seed-pairs $((seed_pairs / 4)) --variants default,hf --planner 32768:256:1024) ;;
    esac
    "$py" -m benchmarks.bench_inprocess --shape "$shape" --pairs $pairs --seed-pairs $seed_pairs --repeats $reps \
      --seed-repeats 1 --latency $lat "${extra[@]}" || echo "bench_inprocess $shape FAILED"
    finish  # copy figures after each shape: a run stopped at the time limit still returns what it measured
  done
fi

if [[ "$phase" == torchserve || "$phase" == all ]]; then
  if [[ ! -d "$site/ts" ]]; then
    echo "no TorchServe in $site: run the inprocess phase (carrying .whl) on this machine first" >&2
    exit 1
  fi
  if [[ ! -x "$HOME/jre/bin/java" ]]; then
    tar xzf .jre/jre.tgz -C "$HOME"
  fi
  export JAVA_HOME="$HOME/jre" PATH="$HOME/jre/bin:$site/bin:$PATH"
  java -version 2>&1 | head -1
  if [[ $quick == 1 ]]; then
    loads="1x1:3,64x1:3"; seed_loads="1x1:3"; bt_loads="64x1:3"
  else
    loads="1x1:8,64x1:8,256x1:10,16x32:8"; seed_loads="1x1:6,64x1:8"; bt_loads="64x1:8,256x1:10"
  fi
  workdir="$(mktemp -d /tmp/ts-bench-XXXX)"
  set +e
  "$py" -m benchmarks.bench_torchserve --shape "$ts_shape" --targets core,core-bt,seed --loads "$loads" \
    --seed-loads "$seed_loads" --target-loads "core-bt=$bt_loads" --batch-size 128 --max-batch-delay 2 \
    --processes 8 --workdir "$workdir"
  rc=$?
  set -e
  cp "$workdir/logs/model_log.log" "$workdir/logs/ts_log.log" "$out/" 2>/dev/null || true
  exit $rc
fi

if [[ "$phase" == e2e ]]; then
  "$py" -m benchmarks.ts_bundle unpack --bundle .tsbundle --home "$HOME"
  export JAVA_HOME="$HOME/jre" PATH="$HOME/jre/bin:$site/bin:$PATH"
  [[ -f /tmp/instructor-bench/$ts_shape/config.json ]] ||
    "$py" -m benchmarks.make_bench_model --shape "$ts_shape" --out "/tmp/instructor-bench/$ts_shape" --device "$gen"
  if [[ $quick == 1 ]]; then
    hb=(--requests 16 --batches 3); la="1x1:3"; lb="1x1:3,64x1:3"; lbt="64x1:3"; lc="64x1:3"
  else
    hb=(--requests 128 --batches 15); la="1x1:5,256x1:8"; lb="1x1:8,64x1:8,256x1:10,16x32:8"
    lbt="64x1:8,256x1:8"; lc="1x1:6,64x1:8,256x1:10,16x32:8"
  fi
  "$py" -m benchmarks.bench_handler --shape "$ts_shape" "${hb[@]}" --busy 0,8 || echo "bench_handler FAILED"
  finish
  common=(--shape "$ts_shape" --batch-size 128 --max-batch-delay 2 --processes 8)
  run_ts() {  # LABEL ARGS...
    local label="$1" workdir rc
    shift
    workdir="$(mktemp -d /tmp/ts-bench-XXXX)"
    echo "== TorchServe run $label: $*"
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --workdir "$workdir" "$@" && rc=0 || rc=$?
    cp "$workdir/logs/ts_log.log" "$out/ts_log_$label.log" 2>/dev/null || true
    finish
    return $rc
  }
  run_ts A --key-suffix _envdefault --targets core --loads "$la" || echo "run A FAILED"
  run_ts B --worker-env OMP_NUM_THREADS=1 --targets core,core-bt --loads "$lb" --target-loads "core-bt=$lbt" ||
    echo "run B FAILED"
  run_ts C --key-suffix _2workers --worker-env OMP_NUM_THREADS=1 --workers 2 --targets core --loads "$lc" ||
    echo "run C FAILED"
fi

if [[ "$phase" == final ]]; then
  "$py" -m benchmarks.ts_bundle unpack --bundle .tsbundle --home "$HOME"
  export JAVA_HOME="$HOME/jre" PATH="$HOME/jre/bin:$site/bin:$PATH"
  [[ -f /tmp/instructor-bench/$ts_shape/config.json ]] ||
    "$py" -m benchmarks.make_bench_model --shape "$ts_shape" --out "/tmp/instructor-bench/$ts_shape" --device "$gen"
  loads="1x1:4,64x1:5,256x1:6"
  [[ $quick == 1 ]] && loads="1x1:2,64x1:2"
  workdir="$(mktemp -d /tmp/ts-bench-XXXX)"
  # Single-pair requests: tokenizing one text through the rayon pool costs thread wake-ups on this VM, and a
  # GPU worker needs no intra-op CPU threads.
  "$py" -m benchmarks.bench_torchserve --shape "$ts_shape" --batch-size 128 --max-batch-delay 2 --processes 8 \
    --warmup 1 --workdir "$workdir" --worker-env OMP_NUM_THREADS=1 --worker-env TOKENIZERS_PARALLELISM=false \
    --targets core --loads "$loads" || echo "bench_torchserve FAILED"
  cp "$workdir/logs/ts_log.log" "$out/ts_log_final.log" 2>/dev/null || true
fi
