#!/usr/bin/env bash
# Container entry point: start TorchServe in production mode (models of the store loaded at start, model API
# off, token auth on) and stop it gracefully on SIGTERM.
#
#   entrypoint.sh [--kserve] [TORCHSERVE ARGS...]
#
# Without --kserve: TorchServe alone, with /home/model-server/config.properties unless --ts-config is given.
# With --kserve: TorchServe from the KServe storage layout (the args name it: --ts-config=/mnt/models/...),
# then KServe's TorchServe wrapper (the model server on port 8080) in front of it.
#
# Environment: DRAIN_DELAY_S (5), CUDA_MPS (0), TMPDIR (/home/model-server/tmp), KSERVE_WRAPPER (the wrapper's
# __main__.py in the image), KSERVE_PYTHON (python).
# On SIGTERM (docker stop, pod deletion): wait DRAIN_DELAY_S (default 5) so that load balancers stop sending
# new requests, stop the wrapper (it finishes the requests in flight), then stop TorchServe and wait for it.
# CUDA_MPS=1 (0 = off): the workers share the GPU under CUDA MPS, as `serve.sh --mps` on a host. The entry point
# starts `nvidia-cuda-mps-control -d` before TorchServe with CUDA_MPS_PIPE_DIRECTORY=$TMPDIR/mps-pipe and
# CUDA_MPS_LOG_DIRECTORY=$TMPDIR/mps-log (TorchServe and its workers inherit both), and sends it `quit` once
# TorchServe has stopped. The container needs the GPU to itself and nvidia-cuda-mps-control on PATH: the NVIDIA
# container toolkit mounts it when NVIDIA_DRIVER_CAPABILITIES includes compute and utility (the images set both).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

# Checked before anything starts: a bad value would otherwise surface only at SIGTERM, where `sleep` fails and
# the graceful stop is skipped.
drain_delay="${DRAIN_DELAY_S:-5}"
if [[ ! "$drain_delay" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "entrypoint: DRAIN_DELAY_S must be a number of seconds >= 0 (e.g. 5 or 2.5), not '$drain_delay'" >&2
  exit 2
fi
mps_control=nvidia-cuda-mps-control
case "${CUDA_MPS:-0}" in
  0) mps=false ;;
  1) mps=true ;;
  *)
    echo "entrypoint: CUDA_MPS must be 1 (the workers share the GPU under CUDA MPS) or 0 / unset (off)," \
      "not '${CUDA_MPS}'" >&2
    exit 2
    ;;
esac
if $mps && ! command -v "$mps_control" >/dev/null 2>&1; then
  echo "entrypoint: CUDA_MPS=1 needs $mps_control on PATH, and it is not there. The NVIDIA container toolkit" \
    "mounts it from the driver when NVIDIA_DRIVER_CAPABILITIES includes compute and utility (the images set" \
    "compute,utility) and the container has a GPU; otherwise start with CUDA_MPS=0." >&2
  exit 1
fi

kserve=false
if [[ "${1:-}" == "--kserve" ]]; then
  kserve=true
  shift
fi
args=("$@")
if [[ ! " ${args[*]} " =~ " --ts-config" ]]; then
  args+=(--ts-config /home/model-server/config.properties)
fi
if [[ -f /home/model-server/log4j2.xml && ! " ${args[*]} " =~ " --log-config" ]]; then
  args+=(--log-config /home/model-server/log4j2.xml)  # the quiet logging of this project (no per-request echo)
fi
ts_config=""
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --ts-config=*) ts_config="${args[$i]#--ts-config=}" ;;
    --ts-config) ts_config="${args[$((i + 1))]}" ;;
  esac
done
if [[ ! -f "$ts_config" ]]; then
  echo "entrypoint: TorchServe config $ts_config not found; mount it (KServe: storageUri with config/config.properties)" >&2
  exit 1
fi

# The image's HEALTHCHECK (readiness.py without --config) reads the config TorchServe runs with from here, so it
# is right in the plain and in the KServe configuration alike.
printf '%s\n' "$(cd "$(dirname "$ts_config")" && pwd)/$(basename "$ts_config")" >ts-config.path 2>/dev/null \
  || echo "entrypoint: cannot write ts-config.path in $(pwd); readiness.py needs --config" >&2

export TMPDIR="${TMPDIR:-/home/model-server/tmp}"
mkdir -p "$TMPDIR"
wrapper_pid=""
mps_started=false

# After TorchServe has stopped, on every way out of this script (the EXIT trap): `quit` to the MPS daemon.
stop_mps() {
  if $mps_started; then
    mps_started=false
    echo quit | "$mps_control" \
      || echo "entrypoint: $mps_control did not take 'quit'; its log: $CUDA_MPS_LOG_DIRECTORY" >&2
  fi
}
trap stop_mps EXIT

stop_all() {
  echo "entrypoint: SIGTERM: draining for ${drain_delay}s, then stopping" >&2
  sleep "$drain_delay"
  if [[ -n "$wrapper_pid" ]]; then
    kill -TERM "$wrapper_pid" 2>/dev/null || true
    wait "$wrapper_pid" 2>/dev/null || true
  fi
  torchserve --stop --foreground || true
  exit 0
}
trap stop_all TERM INT

if $mps; then
  # Short paths: the daemon's Unix sockets live in the pipe directory, and their paths allow ~100 bytes.
  export CUDA_MPS_PIPE_DIRECTORY="$TMPDIR/mps-pipe" CUDA_MPS_LOG_DIRECTORY="$TMPDIR/mps-log"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  mps_started=true  # before it runs: a SIGTERM while it starts still ends with `quit`
  if ! "$mps_control" -d </dev/null; then
    mps_started=false
    echo "entrypoint: $mps_control -d failed; its log: $CUDA_MPS_LOG_DIRECTORY" >&2
    exit 1
  fi
  echo "entrypoint: CUDA MPS control daemon started (pipes in $CUDA_MPS_PIPE_DIRECTORY)" >&2
fi

# --ncs: no snapshot of a previous run is restored; the config's model_snapshot / load_models decide.
torchserve --start --ncs "${args[@]}"
ts_pid=""
for _ in $(seq 1 100); do
  ts_pid="$(cat "$TMPDIR/.model_server.pid" 2>/dev/null || true)"
  [[ -n "$ts_pid" ]] && break
  sleep 0.1
done
if [[ -z "$ts_pid" ]]; then
  echo "entrypoint: TorchServe did not start; see logs/ in $(pwd)" >&2
  exit 1
fi

if $kserve; then
  # The wrapper reads inference/management addresses and model names from the same config.properties.
  CONFIG_PATH="$ts_config" "${KSERVE_PYTHON:-python}" "${KSERVE_WRAPPER:-/home/model-server/kserve_wrapper/__main__.py}" &
  wrapper_pid=$!
fi

# Stay in the foreground while TorchServe (and the wrapper) live; `wait` returns early on a signal.
while kill -0 "$ts_pid" 2>/dev/null; do
  if [[ -n "$wrapper_pid" ]] && ! kill -0 "$wrapper_pid" 2>/dev/null; then
    echo "entrypoint: the KServe wrapper exited; stopping TorchServe" >&2
    torchserve --stop --foreground || true
    exit 1
  fi
  sleep 2 &
  wait $! || true
done
echo "entrypoint: TorchServe exited" >&2
exit 1
