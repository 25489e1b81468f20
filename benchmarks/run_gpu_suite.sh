#!/usr/bin/env bash
# The GPU benchmark suite: the commands behind every GPU figure in benchmarks/RESULTS.md, in phases that each
# fit a 10-minute run on one GPU host.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: benchmarks/run_gpu_suite.sh PHASE [--quick]

PHASE
  inprocess  the encoder core in-process (large: core vs InstructorEmbedding 1.0.1's encode) and the
             handler's per-pair breakdown (bench_handler)
  xl         the encoder core in-process, xl
  served     large through TorchServe: the noop ceiling (1 and auto workers), the handler at 1, 2 and auto
             workers, then the 64-pair load with base64 responses
  baseline   large through TorchServe: InstructorEmbedding 1.0.1's encode, one request at a time
  twogpu     large through TorchServe on every visible GPU vs GPU 0 only, same loads, auto workers
  auto       large through TorchServe at the recommended settings only (auto workers): the noop ceiling, the
             handler with JSON and raw float32 replies (a shorter 'served')
  engine     large through TorchServe, auto workers: the shared device engine (engine=shared) against each
             worker its own model (engine=worker, the default), then the bulk command against the shared engine
  engine-profile
             the shared engine under single-pair load (c=256, auto workers), its device loop sampled with
             py-spy (needs py-spy on PATH): where the engine's one thread spends its time
  tuning     large through TorchServe, auto workers: the recommended settings, then 512-pair stage chunks, then
             maxBatchDelay 2 ms (the earlier recommendation)
  bulk       instructor-embed with its defaults on 100,000 workload pairs against served large (bench_bulk)
  mps        the recommended settings with the workers under CUDA MPS against without, served loads then the
             bulk command (needs nvidia-cuda-mps-control on PATH)
  --quick    tiny workloads and the base shape, to check the script itself (on CPU too)

TorchServe and Java: from the running Python environment if it has them, else unpacked from .tsbundle
(python -m benchmarks.ts_bundle pack, for GPU hosts without internet; see benchmarks/README.md).
Figures go to benchmarks/RESULTS.md and benchmarks/results.json, copied with the log to $OUT
(default: ./gpu-out). Environment: PYTHON (default python3).
USAGE
}

phase="${1:-}"
quick=0
[[ "${2:-}" == "--quick" ]] && quick=1
case "$phase" in
  inprocess|xl|served|baseline|twogpu|auto|engine|engine-profile|tuning|bulk|mps) ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="${OUT:-$repo/gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
exec > >(tee -a "$out/suite-$phase.log") 2>&1
finish() { cp benchmarks/RESULTS.md benchmarks/results.json "$out/" 2>/dev/null || true; }
trap finish EXIT

if ! "$py" -c 'import ts' 2>/dev/null; then
  [[ -d .tsbundle ]] || { echo "no TorchServe in $py and no .tsbundle: see benchmarks/README.md" >&2; exit 1; }
  "$py" -m benchmarks.ts_bundle unpack --bundle .tsbundle --home "$HOME"
  export PYTHONPATH="$HOME/tssite${PYTHONPATH:+:$PYTHONPATH}" JAVA_HOME="$HOME/jre" PATH="$HOME/jre/bin:$PATH"
fi
echo "== $(date -u +%FT%TZ) phase $phase on $(hostname), $(nproc) CPUs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c 'import torch, transformers, sys; print("torch", torch.__version__, "transformers", transformers.__version__,
  "python", sys.version.split()[0], "cuda", torch.cuda.is_available())'

shape=large; pairs=4096; base_pairs=1024; reps=3; lat=200; hb=20
loads="1x1:5,256x1:6,512x1:6,16x64:6"; engine_loads="256x1:6,16x64:6"; base_loads="1x1:4,64x1:5"; compare_loads="1x1:5,256x1:6,512x1:8,16x64:6"
delay_loads="1x1:5,256x1:6"; bulk_pairs=100000
if [[ $quick == 1 ]]; then
  shape=base; pairs=64; base_pairs=16; reps=1; lat=3; hb=2
  loads="1x1:2,4x8:2"; engine_loads="4x8:2"; base_loads="1x1:2"; compare_loads="4x1:2"; delay_loads="1x1:2"
  bulk_pairs=300
fi
common=(--shape "$shape" --batch-size 128 --max-batch-delay 1 --warmup 2)

case "$phase" in
  inprocess)
    "$py" -m benchmarks.bench_inprocess --shape "$shape" --pairs $pairs --seed-pairs $base_pairs --repeats $reps \
      --seed-repeats 1 --latency $lat --variants default,padded,fused --dynamic-batch 64 || echo "bench_inprocess $shape FAILED"
    finish
    "$py" -m benchmarks.bench_handler --shape "$shape" --repeats $hb || echo "bench_handler FAILED"
    ;;
  xl)
    "$py" -m benchmarks.bench_inprocess --shape xl --pairs $pairs --seed-pairs 512 --repeats $reps \
      --seed-repeats 1 --latency $lat || echo "bench_inprocess xl FAILED"
    ;;
  served)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets noop --workers 1,auto --loads "$loads" ||
      echo "bench_torchserve noop FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers 1,2,auto --loads "$loads" ||
      echo "bench_torchserve FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "16x64:8" \
      --encoding base64 --key-suffix _base64 || echo "bench_torchserve base64 FAILED"
    ;;
  auto)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets noop,core --workers auto --loads "$loads" ||
      echo "bench_torchserve auto FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "16x64:6" \
      --encoding raw --key-suffix _raw || echo "bench_torchserve raw FAILED"
    ;;
  engine)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "$loads" \
      --setting engine=shared --key-suffix _engine_shared || echo "bench_torchserve engine=shared FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "$engine_loads" \
      --setting engine=worker --key-suffix _engine_worker || echo "bench_torchserve engine=worker FAILED"
    finish
    INSTRUCTOR_ENGINE=shared "$py" -m benchmarks.bench_bulk --shape "$shape" --label "${shape}_engine_shared" \
      --pairs $bulk_pairs || echo "bench_bulk FAILED"
    ;;
  engine-profile)
    command -v py-spy >/dev/null || { echo "engine-profile needs py-spy on PATH (pip install py-spy)" >&2; exit 1; }
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "256x1:40" \
      --setting engine=shared --key-suffix _engine_profile > "$out/engine-profile-load.log" 2>&1 &
    load=$!
    until grep -q "READY" "$out/engine-profile-load.log" 2>/dev/null; do
      kill -0 $load 2>/dev/null || { echo "the load ended before the model was ready"; cat "$out/engine-profile-load.log"; exit 1; }
      sleep 1
    done
    sleep 10  # warm-up requests and the first seconds of load
    engine=$(pgrep -f "handler.engine" | head -1)
    py-spy dump --pid "$engine" > "$out/engine-dump.txt" 2>&1 || true
    py-spy record --pid "$engine" --duration 12 --rate 250 --threads --format raw --output "$out/engine-profile.txt" \
      --nonblocking 2>&1 | tail -3 || true
    py-spy record --pid "$engine" --duration 6 --rate 250 --gil --format raw --output "$out/engine-profile-gil.txt" \
      --nonblocking 2>&1 | tail -3 || true
    wait $load || echo "bench_torchserve engine-profile FAILED"
    grep -E "pairs/s|GPU memory" "$out/engine-profile-load.log"
    cp "${TMPDIR:-/tmp}"/ts-bench-*/tmp/instructor-engines/*.log "$out/" 2>/dev/null || true
    ;;
  tuning)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets noop,core --workers auto --loads "$engine_loads,1x1:5" ||
      echo "bench_torchserve recommended FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "$engine_loads,1x1:5" \
      --setting stage_chunk_pairs=512 --key-suffix _chunk512 || echo "bench_torchserve chunk512 FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --max-batch-delay 2 --targets core --workers auto \
      --loads "$delay_loads" --key-suffix _delay2 || echo "bench_torchserve delay2 FAILED"
    ;;
  bulk)
    "$py" -m benchmarks.bench_bulk --shape "$shape" --pairs $bulk_pairs || echo "bench_bulk FAILED"
    ;;
  mps)
    command -v nvidia-cuda-mps-control >/dev/null || { echo "mps needs nvidia-cuda-mps-control on PATH" >&2; exit 1; }
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "$loads" \
      --mps --key-suffix _mps || echo "bench_torchserve mps FAILED"
    finish
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets core --workers auto --loads "$loads" \
      --key-suffix _nomps || echo "bench_torchserve no mps FAILED"
    finish
    "$py" -m benchmarks.bench_bulk --shape "$shape" --pairs $bulk_pairs --mps --label "${shape}_mps" ||
      echo "bench_bulk mps FAILED"
    finish
    "$py" -m benchmarks.bench_bulk --shape "$shape" --pairs $bulk_pairs --label "${shape}_nomps" ||
      echo "bench_bulk no mps FAILED"
    ;;
  baseline)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets baseline --baseline-loads "$base_loads" ||
      echo "bench_torchserve baseline FAILED"
    ;;
  twogpu)
    "$py" -m benchmarks.bench_torchserve "${common[@]}" --targets noop,core --workers auto --compare-gpus \
      --loads "$compare_loads" || echo "bench_torchserve --compare-gpus FAILED"
    ;;
esac
