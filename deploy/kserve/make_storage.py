#!/usr/bin/env python3
"""Turn a .mar built by ``scripts/build_archive.sh --format mar`` into KServe's TorchServe storageUri layout.

    OUT/config/config.properties   TorchServe's configuration, production mode (see below)
    OUT/config/metrics.yaml        the handler's metric declarations (config/metrics.yaml of this repository)
    OUT/model-store/NAME.mar       the archive, copied

Upload OUT to the bucket/volume an InferenceService's ``storageUri`` points at; KServe's storage initializer
puts it at /mnt/models in the pod. The configuration is "production mode": the model is loaded at start-up
from ``model_snapshot`` (name, archive, workers, batching), the model API is OFF (nothing can be registered
or unregistered at run time), environment variables cannot change the configuration (so a runtime's
TS_SERVICE_ENVELOPE cannot switch an envelope on: the handler speaks KServe v1/v2 itself), and every
TorchServe API listens on the pod's loopback only, except metrics for Prometheus.

Token auth is OFF by default: the KServe wrapper of the TorchServe image (the model server on port 8080
that proxies to TorchServe) sends no Authorization header, so it could not call a token-protected
TorchServe. TorchServe therefore listens on 127.0.0.1 only, reachable from inside the pod alone.
``--token-auth on`` keeps TorchServe's token auth (for a pod without the wrapper, or for tests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the launcher renders the configuration
    sys.path.insert(0, str(REPO))

from scripts.launcher.config import OVERLAY_DIR, render_config  # noqa: E402 - needs the path above
from scripts.launcher.errors import CtlError  # noqa: E402
from scripts.launcher.memory import Capacity  # noqa: E402
from scripts.launcher.names import check_model_name  # noqa: E402
from scripts.launcher.workers import at_least_one  # noqa: E402
from scripts.model_archive.spec import DEFAULT_SPEC  # noqa: E402 - the archive builder's defaults

METRICS_CONFIG = REPO / "config" / "metrics.yaml"
KSERVE_OVERLAY = OVERLAY_DIR / "kserve.properties"
KSERVE_MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri contents


class LayoutError(Exception):
    """A problem the user can fix; the message says how."""


def read_archive(mar: Path) -> dict[str, Any]:
    """Name, version and the model-config.yaml settings of a .mar (a zip with MAR-INF/MANIFEST.json)."""
    import yaml

    if not mar.is_file():
        raise LayoutError(f"{mar} is not a file; build one with: scripts/build_archive.sh --format mar --model ...")
    if not zipfile.is_zipfile(mar):
        raise LayoutError(f"{mar} is not a .mar (zip) archive; build one with scripts/build_archive.sh --format mar")
    with zipfile.ZipFile(mar) as archive:
        try:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        except KeyError:
            raise LayoutError(f"{mar} has no MAR-INF/MANIFEST.json: not a TorchServe archive") from None
        model = manifest.get("model", {})
        config_name = model.get("configFile")
        config = yaml.safe_load(archive.read(config_name)) if config_name else {}
    return {"name": model.get("modelName") or mar.stem, "version": str(model.get("modelVersion") or "1.0"),
            "config": config or {}}


def model_snapshot(name: str, version: str, mar_name: str, settings: dict[str, int]) -> dict[str, Any]:
    """TorchServe's model_snapshot: the models it registers at start-up, with their workers and batching."""
    entry = {"defaultVersion": True, "marName": mar_name, **settings}
    return {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: entry}}}


def layout_overrides(args: argparse.Namespace, name: str, version: str, mar_name: str,
                     settings: dict[str, int]) -> dict[str, str]:
    """The keys this layout sets on top of config.properties + config/kserve.properties."""
    mount = args.mount_path.rstrip("/")
    snapshot = json.dumps(model_snapshot(name, version, mar_name, settings), separators=(",", ":"))
    overrides = {
        "inference_address": args.inference_address,
        "management_address": args.management_address,
        "metrics_address": args.metrics_address,
        "grpc_inference_port": str(args.grpc_inference_port),
        "grpc_management_port": str(args.grpc_management_port),
        "disable_token_authorization": "true" if args.token_auth == "off" else "false",
        "model_store": f"{mount}/model-store",
        "model_snapshot": snapshot,
        "default_workers_per_model": str(settings["minWorkers"]),
        "default_response_timeout": str(settings["responseTimeout"]),
        "default_startup_timeout": str(settings["startupTimeout"]),
        "job_queue_size": str(args.job_queue_size),
        "metrics_config": f"{mount}/config/metrics.yaml",
    }
    if args.java_heap:
        overrides["vmargs"] = f"-Xmx{args.java_heap} -XX:MaxDirectMemorySize=1g"
    return overrides


def render_layout_config(args: argparse.Namespace, name: str, version: str, mar_name: str,
                         settings: dict[str, int]) -> str:
    """The config.properties text: the repository's base + the KServe overlay + this layout's keys, the
    frontend's memory sized for this model's workers and batch size (the launcher's render_config)."""
    header = (f"# GENERATED by deploy/kserve/make_storage.py for model '{name}' from config.properties + "
              "config/kserve.properties (render_config).")
    try:
        text, _ = render_config(layout_overrides(args, name, version, mar_name, settings),
                                overlays=(KSERVE_OVERLAY,), header=header,
                                capacity=Capacity(settings["maxWorkers"], settings["batchSize"]))
    except CtlError as e:
        raise LayoutError(str(e)) from None
    return text


def build_layout(args: argparse.Namespace) -> Path:
    """Write the layout into args.out; return the config.properties path."""
    info = read_archive(args.archive)
    try:  # the name becomes a file name and a config line: refuse '/', '..' and line breaks
        name = check_model_name(info["name"] if args.name is None else args.name)
        version = check_model_name(info["version"], "model version")
    except CtlError as e:
        raise LayoutError(f"{e} Pass --name NAME." if args.name is None else str(e)) from None
    config = info["config"]
    settings = {
        "minWorkers": args.workers or int(config.get("minWorkers", DEFAULT_SPEC.workers)),
        "maxWorkers": args.workers or int(config.get("maxWorkers", config.get("minWorkers", DEFAULT_SPEC.workers))),
        "batchSize": args.batch_size or int(config.get("batchSize", DEFAULT_SPEC.batch_size)),
        "maxBatchDelay": args.max_batch_delay if args.max_batch_delay is not None
        else int(config.get("maxBatchDelay", DEFAULT_SPEC.max_batch_delay_ms)),
        "responseTimeout": int(config.get("responseTimeout", DEFAULT_SPEC.response_timeout_s)),
        "startupTimeout": int(config.get("startupTimeout", DEFAULT_SPEC.startup_timeout_s)),
    }
    settings["maxWorkers"] = max(settings["maxWorkers"], settings["minWorkers"])
    out = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        raise LayoutError(f"{out} exists and is not empty; pass --force to overwrite or choose another --out")
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "model-store").mkdir(parents=True, exist_ok=True)
    mar_name = f"{name}.mar"
    shutil.copyfile(args.archive, out / "model-store" / mar_name)
    shutil.copyfile(METRICS_CONFIG, out / "config" / "metrics.yaml")
    config_path = out / "config" / "config.properties"
    config_path.write_text(render_layout_config(args, name, version, mar_name, settings))
    return config_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy/kserve/make_storage.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  scripts/build_archive.sh --model hkunlp/instructor-large --format mar --store model_store\n"
               "  deploy/kserve/make_storage.py --archive model_store/instructor-large.mar --out kserve-storage\n"
               "  gsutil -m cp -r kserve-storage/* gs://BUCKET/instructor-large/   # or aws s3 cp, or a PVC",
    )
    d = " (default: %(default)s)"
    parser.add_argument("--archive", type=Path, required=True, help="the .mar built by build_archive.sh --format mar")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the layout into")
    parser.add_argument("--name", help="model name served (default: the archive's)")
    parser.add_argument("--workers", type=at_least_one,
                        help="workers per pod; on GPU one per GPU (default: the archive's)")
    parser.add_argument("--batch-size", type=at_least_one,
                        help="TorchServe dynamic batch size (default: the archive's)")
    parser.add_argument("--max-batch-delay", type=at_least_one, metavar="MS",
                        help="ms to fill a batch, >= 1: TorchServe reads 0 as unset (default: the archive's)")
    parser.add_argument("--token-auth", choices=("off", "on"), default="off",
                        help="TorchServe token auth; off because the KServe wrapper cannot send a token" + d)
    parser.add_argument("--mount-path", default=KSERVE_MOUNT, help="where the layout is mounted in the pod" + d)
    parser.add_argument("--inference-address", default="http://127.0.0.1:8085", help="TorchServe inference" + d)
    parser.add_argument("--management-address", default="http://127.0.0.1:8086", help="TorchServe management" + d)
    parser.add_argument("--metrics-address", default="http://0.0.0.0:8082", help="Prometheus metrics" + d)
    parser.add_argument("--grpc-inference-port", type=int, default=7070, help="loopback gRPC inference" + d)
    parser.add_argument("--grpc-management-port", type=int, default=7071, help="loopback gRPC management" + d)
    parser.add_argument("--job-queue-size", type=int, default=512, help="requests queued per model" + d)
    parser.add_argument("--java-heap", help="frontend JVM -Xmx, e.g. 4g (default: computed from the limits "
                                              "and workers x batch size)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    args = parser.parse_args(argv)
    for flag in ("workers", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.inference_address == args.management_address and args.token_auth == "on":
        # TorchServe checks the inference key before the management key on a shared port.
        parser.error("with --token-auth on, inference and management need different addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config_path = build_layout(args)
    except LayoutError as error:
        print(f"make_storage: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/ (config: {config_path}); upload its contents to your storageUri")
    return 0


if __name__ == "__main__":
    sys.exit(main())
