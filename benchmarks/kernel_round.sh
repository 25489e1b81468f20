#!/usr/bin/env bash
# One GPU call for the encoder-speed work: the padded forward as before vs packed micro-batches, with the ceilings,
# a per-kernel profile and SDPA's attention kernels (profile_encoder), then the figures of record with packing
# from 16 rows (bench_inprocess, large, 64-pair dynamic batches included).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "Usage: benchmarks/kernel_round.sh [VARIANTS]   (default variants: before,packed; OUT=folder for logs;" \
    "PYTHON=python3)"
  exit 0
fi
out="${OUT:-./gpu-out}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader || true
variants="${1:-before,packed}"
"$py" -m benchmarks.profile_encoder --shape large --repeats 2 --variants "$variants" --profile before \
  --out "$out" 2>&1 | tee "$out/profile.log" || echo "profile_encoder FAILED"
"$py" -m benchmarks.bench_inprocess --shape large --pairs 4096 --seed-pairs 512 --repeats 3 --seed-repeats 1 \
  --latency 50 --dynamic-batch 64 --pack-min-rows 16 2>&1 | tee "$out/bench.log" || echo "bench_inprocess FAILED"
cp benchmarks/RESULTS.md benchmarks/results.json "$out/" 2>/dev/null || true
