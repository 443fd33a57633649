"""The driver lane: the driver computes shards and units while its Ray workers are still starting."""

import numpy as np
import pytest

from rnnimp import reference, sensitivity_importance

pytestmark = pytest.mark.slow

RUN = dict(n_repeats=3, random_state=7, batch_size=32, shard_size=64)


@pytest.fixture(scope="module")
def small_lstm():
    model = reference.build_model(3)
    sample = reference.evaluation_sample(3, 256)
    return model, sample, sensitivity_importance(model, sample, **RUN)


@pytest.fixture
def local_ray(monkeypatch):
    """Start a local Ray of ``num_cpus`` CPUs on 127.0.0.1; always shut it down."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def start(num_cpus: int):
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")

    yield start
    ray.shutdown()


def test_a_run_whose_workers_never_join_finishes_on_the_driver_lane(local_ray, small_lstm):
    from rnnimp.distributed import RayExecutor

    model, sample, local = small_lstm
    local_ray(0)  # no CPU for any worker: they wait for resources forever
    executor = RayExecutor(num_workers=2, driver_lane=True, stall_timeout_s=5.0)
    try:
        result = sensitivity_importance(model, sample, executor=executor, **RUN)
        assert executor.pool.live == [] and len(executor.pool.joining) == 2
    finally:
        executor.shutdown()
    np.testing.assert_array_equal(result.effects, local.effects)
    assert result.metadata["workers"]["on_driver"] == {"shards": 4, "units": result.metadata["n_units"]}


def test_the_driver_lane_hands_over_to_joining_workers_with_identical_effects(local_ray, small_lstm):
    from rnnimp.distributed import RayExecutor

    model, sample, local = small_lstm
    local_ray(1)  # one worker joining is a hand-over as two would be
    executor = RayExecutor(driver_lane=True)
    try:
        while_joining = sensitivity_importance(model, sample, executor=executor, **RUN)
        on_driver = dict(executor.on_driver)
        executor.pool.wait_until_ready()
        all_live = sensitivity_importance(model, sample, executor=executor, **RUN)
    finally:
        executor.shutdown()
    assert on_driver["shards"] + on_driver["units"] > 0  # the workers were still importing TensorFlow
    assert executor.on_driver == on_driver  # nothing more once every worker was live
    np.testing.assert_array_equal(while_joining.effects, local.effects)
    np.testing.assert_array_equal(all_live.effects, local.effects)
