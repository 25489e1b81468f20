"""--workers auto: one worker on CPU; on GPUs, as many per GPU as the cores feed, at most four."""

from __future__ import annotations

import pytest

from scripts.torchserve_ctl import CtlError, auto_workers, visible_gpus, worker_count


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
