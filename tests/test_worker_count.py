"""--workers auto: one worker on CPU; on GPUs, as many per GPU as the cores feed, at most four."""

from __future__ import annotations

import pytest

from scripts.launcher import CtlError, auto_workers, gpu_assignment, visible_gpus, worker_count
from scripts.launcher.workers import WORKERS_PER_GPU


@pytest.mark.parametrize(("gpus", "cores", "workers"), [
    (0, 64, 1),    # CPU: one worker uses every core
    (1, 16, 4),    # one GPU, 16 cores: the measured sweet spot
    (1, 8, 2),     # fewer cores: fewer workers, each still fed by 4 cores
    (1, 2, 1),     # never zero
    (2, 32, 8),
    (8, 128, 32),
])
def test_auto_picks_workers_per_gpu_from_the_cores(gpus, cores, workers):
    assert auto_workers(gpus, cores) == workers


def test_the_gpus_torchserve_will_use_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == 0


def test_a_worker_count_is_a_number_or_auto():
    assert worker_count("3") == 3 and worker_count(2) == 2
    assert worker_count("auto") == auto_workers()
    with pytest.raises(CtlError, match="must be a number or auto"):
        worker_count("many")


@pytest.mark.parametrize("gpus", range(1, 9))
def test_auto_workers_are_spread_evenly_over_1_to_8_visible_gpus(gpus):
    """TorchServe hands GPUs out round-robin: auto's count (a multiple of the GPUs) gives each the same."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(7 - i) for i in range(gpus))}  # any ids, any order
    assert visible_gpus(env) == gpus
    workers = auto_workers(visible_gpus(env), cores=128)
    per_gpu = [gpu_assignment(workers, gpus).count(g) for g in range(gpus)]
    assert len(set(per_gpu)) == 1 and per_gpu[0] == min(WORKERS_PER_GPU, 128 // (4 * gpus)), per_gpu


def test_cuda_stops_at_the_first_hidden_device():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == 2


def test_the_per_gpu_count_is_one_named_setting():
    assert auto_workers(1, 64, per_gpu=8) == 8 and auto_workers(2, 64, per_gpu=8) == 16
    assert auto_workers(1, 64) == WORKERS_PER_GPU
