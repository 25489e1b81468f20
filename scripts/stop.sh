#!/usr/bin/env bash
# Stop TorchServe completely: the Java frontend AND its Python workers, waiting until they are gone.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/stop.sh [--timeout S]

Stops the TorchServe of this temp directory (pid file: $TMPDIR/.model_server.pid, else
/tmp/.model_server.pid) and waits until the Java process and its model workers have exited.
`torchserve --stop` returns before Java exits; this script does not.
  --timeout S   seconds to wait for a clean shutdown before SIGKILL (default: 60)
Also removes the pid file and TorchServe's key_file.json (its keys die with the server).
USAGE
}

timeout_s=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --timeout) timeout_s="${2:?--timeout needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "stop.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

pid_file="$(ts_pid_file)"
pid="$(ts_running_pid)"
if [[ -z "$pid" ]]; then
  [[ -f "$pid_file" ]] && rm -f "$pid_file"
  echo "TorchServe is not running (no live TorchServe in $pid_file)."
  exit 0
fi

workdir="$(readlink "/proc/$pid/cwd" || true)"
workers="$(pgrep -P "$pid" || true)"
start=$SECONDS
kill -TERM "$pid" 2>/dev/null || true
while kill -0 "$pid" 2>/dev/null && (( SECONDS - start < timeout_s )); do
  sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
  echo "stop.sh: TorchServe (pid $pid) still running after ${timeout_s} s: sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
fi
# Workers normally exit with the frontend; make sure none is left holding a model in memory.
for w in $workers; do
  if kill -0 "$w" 2>/dev/null; then
    kill -TERM "$w" 2>/dev/null || true
    sleep 1
    kill -KILL "$w" 2>/dev/null || true
  fi
done
rm -f "$pid_file"
[[ -n "$workdir" ]] && rm -f "$workdir/key_file.json"
echo "TorchServe (pid $pid) stopped after $(( SECONDS - start )) s."
