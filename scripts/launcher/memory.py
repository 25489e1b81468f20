"""The frontend's memory, derived from the configured limits and the workers and batch size it serves.

Why these terms (TorchServe 0.12's frontend):
  * A queued request is a heap copy of its body (<= max_request_size); at most job_queue_size of them wait.
  * A dynamic batch taken by a worker leaves the queue but stays on the heap until answered: each worker
    holds up to batch_size bodies, so workers x batch_size more.
  * A worker's reply is held once while it is decoded (<= max_response_size each, one per worker).
  * The server itself: ~256 MiB.
  * Direct (Netty) memory holds bodies still arriving: job_queue_size maximal bodies at once. More concurrent
    uploads than that is a connection flood, capped by the reverse proxy in front (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MIB = 1024 * 1024
SERVER_OVERHEAD_MIB = 256
# TorchServe 0.12's own defaults, used when the configuration leaves a limit unset.
TS_DEFAULTS = {"job_queue_size": 100, "max_request_size": 6553500, "max_response_size": 6553500}


@dataclass(frozen=True)
class Capacity:
    """What the frontend must hold in flight: all workers of all models, each with a full dynamic batch."""

    workers: int
    batch_size: int


# The largest configuration this repository recommends (8 workers of batch 128 on one GPU, the top of
# --workers auto's range): what a rendered file is sized for when the launcher is not told the real one.
RECOMMENDED_MAX = Capacity(workers=8, batch_size=128)


def _limit(props: Mapping[str, str], key: str) -> int:
    return int(props.get(key, TS_DEFAULTS[key]))


def heap_bytes(props: Mapping[str, str], capacity: Capacity) -> int:
    """The heap the frontend needs at worst under these limits (see the module docstring)."""
    body = _limit(props, "max_request_size")
    queued = _limit(props, "job_queue_size") * body
    in_batches = capacity.workers * capacity.batch_size * body
    replies = capacity.workers * _limit(props, "max_response_size")
    return queued + in_batches + replies + SERVER_OVERHEAD_MIB * MIB


def direct_bytes(props: Mapping[str, str]) -> int:
    """Netty direct memory for bodies still arriving: one queue's worth of maximal bodies."""
    return _limit(props, "job_queue_size") * _limit(props, "max_request_size")


def _round_up_mib(n: int, step_mib: int = 256) -> int:
    step = step_mib * MIB
    return -(-n // step) * step // MIB


def vmargs(props: Mapping[str, str], capacity: Capacity | None = None) -> str:
    """The JVM flags for these limits and this capacity (default: RECOMMENDED_MAX), rounded up to 256 MiB."""
    capacity = capacity or RECOMMENDED_MAX
    return (f"-Xmx{_round_up_mib(heap_bytes(props, capacity))}m "
            f"-XX:MaxDirectMemorySize={_round_up_mib(direct_bytes(props))}m")
