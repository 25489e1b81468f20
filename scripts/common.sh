# shellcheck shell=bash
# Shared by serve.sh and stop.sh (sourced, not run): where things are and whether TorchServe runs.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
py="$venv/bin/python"

# Any Python answers this; the venv's is the one TorchServe's launcher runs under.
any_python() {
  if [[ -x "$py" ]]; then echo "$py"; else echo "python3"; fi
}

# TorchServe's launcher keeps the Java PID in tempfile.gettempdir()/.model_server.pid
# ($TMPDIR, $TEMP, $TMP, else /tmp): one TorchServe per temp directory.
ts_pid_file() {
  "$(any_python)" -c 'import os, tempfile; print(os.path.join(tempfile.gettempdir(), ".model_server.pid"))'
}

# Prints the PID of the running TorchServe frontend (Java), or nothing.
ts_running_pid() {
  local pid_file pid
  pid_file="$(ts_pid_file)"
  [[ -f "$pid_file" ]] || return 0
  pid="$(head -n1 "$pid_file" | tr -dc '0-9')"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'org.pytorch.serve.ModelServer'; then
    echo "$pid"
  fi
}
