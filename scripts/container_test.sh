#!/usr/bin/env bash
# Build the container image from this checkout with podman and run it as a user would (pytest -m container).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/container_test.sh [--build-only] [--base IMAGE] [--wheels DIR] [--torch-index URL]
                                 [--tag IMAGE] [--rebuild-base] [-- PYTEST_ARGS...]

Builds docker/Dockerfile with podman, then runs tests/test_container_images.py (pytest -m container)
against the image: the plain configuration (demo-model store mounted read-only, token auth, health
check, production mode, request limits, draining on SIGTERM, restart) and the KServe configuration
(a deploy/kserve/make_storage.py layout at /mnt/models; v1/v2 requests and probes). Prints the time
of each stage and the image size. Needs root (or rootless podman), podman and, for the default base
image, debootstrap: apt-get install -y podman runc debootstrap.

  --build-only       build the image(s), run no test
  --base IMAGE       base image with python3 (default: localhost/debian-python:bookworm, made from
                     Debian packages with debootstrap when missing; e.g. python:3.11-slim-bookworm
                     where a registry of images is reachable)
  --rebuild-base     make the debootstrap base image again even if it exists
  --wheels DIR       a directory of wheels pip may use in the build (e.g. a CPU torch wheel), served
                     on 127.0.0.1 while building; default: $PIP_FIND_LINKS when it is a directory
  --torch-index URL  pip index for torch (default: the Dockerfile's CPU index; with --wheels: pip's
                     default index, the wheels directory taking precedence)
  --tag IMAGE        image name (default: localhost/instructor-serve:test)
  PYTEST_ARGS        passed to pytest after '--', e.g. -- -k kserve -x

Environment: PODMAN_OPTS, podman's global options (default: --runtime runc --cgroup-manager=cgroupfs
when runc is installed: crun cannot set the rlimits on every host, and cgroupfs works without
systemd). Build and run use --ulimit nofile=20000:20000 --ulimit nproc=4096:4096.
USAGE
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_only=false rebuild_base=false
base="" wheels="" torch_index="" torch_index_set=false tag="localhost/instructor-serve:test"
pytest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-only) build_only=true; shift ;;
    --rebuild-base) rebuild_base=true; shift ;;
    --base) base="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --torch-index) torch_index="$2"; torch_index_set=true; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "container_test: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v podman >/dev/null || { echo "container_test: podman is missing: apt-get install -y podman runc debootstrap" >&2; exit 1; }
if [[ -z "${PODMAN_OPTS+set}" ]]; then
  PODMAN_OPTS=""
  command -v runc >/dev/null && PODMAN_OPTS="--runtime runc --cgroup-manager=cgroupfs"
fi
export PODMAN_OPTS
read -r -a podman_opts <<<"$PODMAN_OPTS"
podman() { command podman "${podman_opts[@]}" "$@"; }
limits=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

started=$SECONDS
stage() { echo "container_test: $1 ($((SECONDS - started)) s so far)" >&2; }

# --- Base image: Debian's python3 when no image registry is reachable. ---
if [[ -z "$base" ]]; then
  base="localhost/debian-python:bookworm"
  if $rebuild_base || ! podman image exists "$base"; then
    command -v debootstrap >/dev/null || { echo "container_test: debootstrap is missing (apt-get install -y debootstrap), or pass --base IMAGE" >&2; exit 1; }
    stage "making $base with debootstrap"
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" >/dev/null
    # The certificate authorities this host trusts locally (e.g. a TLS-inspecting proxy's), so that pip and
    # apt inside the build reach what this host reaches.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
      chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
fi

# --- Local wheels (e.g. torch's CPU wheel where its index is unreachable), served on loopback. ---
if [[ -z "$wheels" && -n "${PIP_FIND_LINKS:-}" && -d "${PIP_FIND_LINKS%% *}" ]]; then
  wheels="${PIP_FIND_LINKS%% *}"
fi
build_args=(--build-arg "PYTHON_IMAGE=$base")
server_pid=""
cleanup_server() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; true; }
if [[ -n "$wheels" ]]; then
  [[ -d "$wheels" ]] || { echo "container_test: --wheels $wheels is not a directory" >&2; exit 1; }
  # The address is part of the build's layer cache keys (build arguments are): the first free port of a
  # fixed range keeps it the same from one build to the next, so unchanged layers are reused.
  port="$(python3 -c '
import socket
for port in range(38417, 38447):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break')"
  [[ -n "$port" ]] || { echo "container_test: no free port in 38417-38446 to serve --wheels on" >&2; exit 1; }
  python3 -m http.server --bind 127.0.0.1 "$port" --directory "$wheels" >/dev/null 2>&1 &
  server_pid=$!
  trap cleanup_server EXIT
  build_args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" --build-arg "PIP_TRUSTED_HOST=127.0.0.1")
  $torch_index_set || build_args+=(--build-arg "TORCH_INDEX=")
fi
$torch_index_set && build_args+=(--build-arg "TORCH_INDEX=$torch_index")

# --- The image. --format docker keeps the HEALTHCHECK (OCI images have none). ---
stage "building $tag from docker/Dockerfile"
build_started=$SECONDS
podman build --format docker --network host "${limits[@]}" "${build_args[@]}" \
  -f "$repo/docker/Dockerfile" -t "$tag" "$repo" >&2
cleanup_server
server_pid=""
size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "container_test: built $tag in $((SECONDS - build_started)) s; size $((size / 1000000)) MB" >&2
$build_only && exit 0

# --- Run it as a user would. ---
stage "running tests/test_container_images.py"
venv="${VENV:-$repo/.venv}"
[[ -x "$venv/bin/python" ]] || "$repo/scripts/setup_venv.sh" --test
set +e
CONTAINER_IMAGE="$tag" "$venv/bin/python" -m pytest -m container "$repo/tests/test_container_images.py" -s "${pytest_args[@]}"
rc=$?
set -e
stage "done (pytest exit $rc)"
exit $rc
