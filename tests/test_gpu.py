"""GPU workers (``gpus_per_worker``) on a local Ray that declares a GPU this machine need not have.

Ray hands out the declared GPU as a resource and sets each actor's
``CUDA_VISIBLE_DEVICES``; TensorFlow (the CPU build here) sees no GPU, so the
forward pass runs on the CPU and the effects must equal a CPU run's bit for bit.
"""

import math

import numpy as np
import pytest

from rnnimp import reference, sensitivity_importance, validation
from rnnimp.errors import InvalidParameterError
from rnnimp.options import Execution

from jobtools import call_job, run_job

RUN = dict(n_repeats=3, random_state=5, batch_size=32, shard_size=64)


@pytest.mark.parametrize("share", [0.25, 0.5, 1, 2.0])
def test_gpu_shares_ray_can_grant_are_accepted(share):
    assert validation.gpu_share("gpus_per_worker", share) == share
    assert Execution(gpus_per_worker=share).check().gpus_per_worker == share


@pytest.mark.parametrize("share", [0, -0.5, 1.5, math.nan, math.inf, True, "half"])
def test_other_gpu_shares_are_refused(share):
    with pytest.raises(InvalidParameterError, match="gpus_per_worker"):
        Execution(gpus_per_worker=share).check()


def test_the_command_line_refuses_a_bad_share_in_one_line(tmp_path):
    result = call_job("jobs.seed_importance", "--gpus-per-worker", "0", "--out", str(tmp_path / "out"), ray=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --gpus-per-worker: must be a finite number > 0, got 0.0"
    assert not (tmp_path / "out").exists()


def test_worker_slots_count_cpus_or_gpu_shares():
    from rnnimp.distributed import worker_slots

    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0}]
    assert worker_slots(nodes, None) == 14
    assert worker_slots(nodes, 0.5) == 2 + 4
    assert worker_slots(nodes, 0.3) == 2 + 6  # 1 / 0.3 = 3.33 per GPU, capped by the node's CPUs
    assert worker_slots(nodes, 1) == 1 + 2
    assert worker_slots(nodes, 2) == 0 + 1


def test_cpu_workers_hide_the_gpus_and_gpu_workers_grow_memory():
    from rnnimp.distributed import GPU_GROWTH_ENV, worker_env

    assert worker_env(None)["CUDA_VISIBLE_DEVICES"] == ""
    assert GPU_GROWTH_ENV not in worker_env(None)
    gpu = worker_env(0.5)
    assert gpu[GPU_GROWTH_ENV] == "true" and "CUDA_VISIBLE_DEVICES" not in gpu  # Ray sets it per actor
    assert gpu["TF_NUM_INTRAOP_THREADS"] == "1"


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray of 2 CPUs and 1 declared GPU; always shut down."""
    import ray

    if ray.is_initialized():
        pytest.skip("another Ray connection is open in this process")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def small_lstm():
    model = reference.build_model(2)
    sample = reference.evaluation_sample(2, 128)
    cpu = sensitivity_importance(model, sample, **RUN)
    return model, sample, cpu


@pytest.mark.slow
def test_half_gpu_workers_share_one_gpu_and_give_the_cpu_effects(ray_with_a_gpu, small_lstm):
    from rnnimp.distributed import RayExecutor

    ray = ray_with_a_gpu
    model, sample, cpu = small_lstm
    executor = RayExecutor(gpus_per_worker=0.5)
    try:
        result = sensitivity_importance(model, sample, executor=executor, **RUN)
        assert len(executor.pool.live) == 2  # 2 CPUs and 2 halves of the GPU: both placed
        assert ray.available_resources().get("GPU", 0) == 0  # the two halves hold the whole GPU
        reports = [ray.get(actor.devices.remote()) for actor in executor.pool.live]
    finally:
        executor.shutdown()
    np.testing.assert_array_equal(result.effects, cpu.effects)
    for report in reports:
        assert report["gpu_ids"] == ["0"]
        assert report["cuda_visible_devices"] == "0"
        assert report["gpu_growth_env"] == "true"
        assert report["memory_growth_set"] == []  # the code path ran; TF's CPU build sees no GPU to set
        assert report["ops_placed_on"].endswith("CPU:0")
    workers = result.metadata["workers"]
    assert workers["gpus_per_worker"] == 0.5 and workers["count"] == 2
    assert workers["devices"]["gpu_ids"] == ["0"]
    assert workers["devices"]["tf_devices"] == ["/device:CPU:0"]
    assert "gpus_per_worker" not in result.metadata["configuration"]  # it does not change an effect


@pytest.mark.slow
def test_cpu_workers_on_a_gpu_node_see_no_gpu(ray_with_a_gpu, small_lstm):
    from rnnimp.distributed import RayExecutor

    model, sample, cpu = small_lstm
    executor = RayExecutor(num_workers=1)
    try:
        result = sensitivity_importance(model, sample, executor=executor, **RUN)
    finally:
        executor.shutdown()
    np.testing.assert_array_equal(result.effects, cpu.effects)
    devices = result.metadata["workers"]["devices"]
    assert devices["gpu_ids"] == [] and devices["cuda_visible_devices"] == ""
    assert result.metadata["workers"]["gpus_per_worker"] is None


@pytest.mark.slow
def test_a_share_larger_than_any_node_is_refused_before_any_actor_starts(ray_with_a_gpu):
    from rnnimp.distributed import RayExecutor

    executor = RayExecutor(gpus_per_worker=2)
    with pytest.raises(InvalidParameterError, match=r"gpus_per_worker: must be at most the GPUs of one node of "
                                                   r"the cluster \(1\), got 2"):
        executor.start()
    assert executor.pool is None


@pytest.mark.slow
def test_the_job_refuses_a_gpu_share_on_a_cluster_without_gpus_in_one_line(tmp_path):
    result = run_job("jobs.seed_importance", "--num-cpus", "1", "--gpus-per-worker", "0.5", "--samples", "8",
                     "--out", str(tmp_path / "out"), timeout=120,
                     env={"CUDA_VISIBLE_DEVICES": ""})  # this machine's Ray must see no GPU
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --gpus-per-worker: must be at most the GPUs of one node of the cluster (0; Ray sees no GPU), got 0.5")
    assert not (tmp_path / "out").exists()
