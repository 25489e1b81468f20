"""How many workers ``--workers auto`` starts, and which GPU each worker of a TorchServe gets.

The policy is one function, auto_workers(), and its two numbers are named settings below: set them from
GPU measurements (benchmarks/NOTES.md), nowhere else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Mapping

from scripts.launcher.errors import CtlError

# Workers per GPU that "auto" starts at most. Measured on one H100/H200 (large, benchmarks/NOTES.md): one
# worker's Python path (parsing, tokenizing, TorchServe's protocol) cannot keep the GPU busy; four do.
WORKERS_PER_GPU = 4
# CPU cores one GPU worker keeps busy: its main thread plus its tokenizer threads at full load.
CORES_PER_GPU_WORKER = 4


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs TorchServe will use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists (0 without one)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return len(visible_device_ids(env["CUDA_VISIBLE_DEVICES"]))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def visible_device_ids(value: str) -> list[str]:
    """The devices a CUDA_VISIBLE_DEVICES value names, in order; CUDA stops at the first invalid entry."""
    ids = []
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break  # "-1" or an empty entry hides this device and every later one
        ids.append(item)
    return ids


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(gpus: int | None = None, cores: int | None = None, per_gpu: int = WORKERS_PER_GPU,
                 cores_per_worker: int = CORES_PER_GPU_WORKER) -> int:
    """Workers for "--workers auto": 1 on CPU (one worker uses every core); on GPUs, per GPU as many as the
    cores feed (``cores_per_worker`` each), 1 to ``per_gpu``. Each worker holds a model copy."""
    gpus = visible_gpus() if gpus is None else gpus
    if gpus <= 0:
        return 1
    cores = usable_cores() if cores is None else cores
    return gpus * max(1, min(per_gpu, cores // (cores_per_worker * gpus)))


def gpu_assignment(workers: int, gpus: int) -> list[int]:
    """The GPU (an index into the visible devices) of each worker, in start order: TorchServe 0.12 hands
    GPUs out round-robin per model (WorkLoadManager), so a count that is a multiple of ``gpus`` is even."""
    return [i % gpus for i in range(workers)] if gpus > 0 else [-1] * workers


def worker_count(value: str | int) -> int:
    """A --workers value: a count >= 0, or "auto" (auto_workers())."""
    if isinstance(value, int):
        return value
    if value.strip().lower() == "auto":
        return auto_workers()
    try:
        return int(value)
    except ValueError:
        raise CtlError(f"--workers must be a number or auto, not {value!r}.") from None


def workers_arg(value: str) -> int:
    """argparse type for --workers: a count or auto; a bad value is a usage error that says what to give."""
    try:
        return worker_count(value)
    except CtlError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def describe_auto() -> str:
    """--help text for auto, from the settings above."""
    return (f"auto: 1 on CPU; on GPUs up to {WORKERS_PER_GPU} per GPU, {CORES_PER_GPU_WORKER} CPU cores each")


def at_least_one(text: str) -> int:
    """An integer >= 1 (argparse type): batch sizes and delays (TorchServe reads a delay of 0 as unset)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
