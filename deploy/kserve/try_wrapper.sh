#!/usr/bin/env bash
# Run the KServe image's data path without a container: KServe's TorchServe wrapper (pytorch/serve's
# kubernetes/kserve/kserve_wrapper, the model server on :8080) in front of TorchServe started by
# docker/entrypoint.sh --kserve from a layout of make_storage.py (default flags: token off, loopback).
#
#   deploy/kserve/try_wrapper.sh --layout kserve-storage [--protocol v1|v2] [--serve-src DIR] [--env DIR]
#
# --layout DIR     a layout written by make_storage.py with its default addresses; its mount path must be
#                  where it is (make_storage.py --mount-path "$PWD/kserve-storage")
# --protocol P     PROTOCOL_VERSION of the wrapper (default: v1)
# --serve-src DIR  a pytorch/serve v0.12.0 source tree (default: downloaded from GitHub)
# --env DIR        Python environment for the wrapper, created with kserve[storage]==0.13.0 if missing
#                  (default: .kserve-wrapper-env; it is separate: kserve 0.13 pins protobuf < 4 and pulls ray)
#
# The wrapper's ports (HTTP 8080, gRPC 8081) are fixed: they must be free. Stop with Ctrl-C (SIGTERM drains).
# Then, e.g.: curl -s localhost:8080/v1/models/NAME:predict -d '{"instances": [["Represent:", "text"]]}'
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
layout="" protocol="v1" serve_src="" env_dir="$repo/.kserve-wrapper-env"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --layout) layout="$2"; shift 2 ;;
    --protocol) protocol="$2"; shift 2 ;;
    --serve-src) serve_src="$2"; shift 2 ;;
    --env) env_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "try_wrapper: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$layout" ]] && layout="$(cd "$layout" && pwd)"
config="$layout/config/config.properties"
[[ -f "$config" ]] || { echo "try_wrapper: no $config; write one with deploy/kserve/make_storage.py" >&2; exit 1; }
venv="${VENV:-$repo/.venv}"
[[ -x "$venv/bin/torchserve" ]] || { echo "try_wrapper: no TorchServe in $venv: run scripts/setup_venv.sh" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -z "$serve_src" ]]; then
  serve_src="$work/serve"
  mkdir -p "$serve_src"
  curl -fsSL https://github.com/pytorch/serve/archive/refs/tags/v0.12.0.tar.gz | tar -xz -C "$serve_src" --strip-components=1
fi
if [[ ! -x "$env_dir/bin/python" ]]; then
  python3 -m venv "$env_dir"
  "$env_dir/bin/pip" install --only-binary=:all: "kserve[storage]==0.13.0" requests
  "$env_dir/bin/pip" install --only-binary=:all: --no-deps "grpcio-tools==1.62.3"
fi
wrapper="$work/kserve_wrapper"
mkdir -p "$wrapper"
cp "$serve_src"/kubernetes/kserve/kserve_wrapper/*.py "$serve_src"/frontend/server/src/main/resources/proto/*.proto "$wrapper/"
site="$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# google/rpc/status.proto comes with googleapis-common-protos (a kserve dependency).
"$env_dir/bin/python" -m grpc_tools.protoc -I "$site" --proto_path="$wrapper" --python_out="$wrapper" \
  --grpc_python_out="$wrapper" "$wrapper/inference.proto" "$wrapper/management.proto"

mkdir -p "$work/tmp"
cd "$work"
PATH="$venv/bin:$PATH" TMPDIR="$work/tmp" PROTOCOL_VERSION="$protocol" MODEL_LOAD_DELAY=2 \
  KSERVE_PYTHON="$env_dir/bin/python" KSERVE_WRAPPER="$wrapper/__main__.py" \
  "$repo/docker/entrypoint.sh" --kserve --model-store="$layout/model-store" --ts-config="$config" \
  --log-config "$repo/config/log4j2.xml"
