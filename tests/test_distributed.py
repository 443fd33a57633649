"""The Ray executor against the in-process one, on a local Ray this module starts and stops."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rnnimp import reference, sensitivity_importance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One embedded local Ray of 2 CPUs for this module; always shut down."""
    from rnnimp import distributed

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        distributed.connect(2)
        yield distributed
        distributed.shutdown()


def effects_contents(result, folder):
    path = result.write(str(folder))["effects"]
    return pq.read_table(path).replace_schema_metadata(None)


@pytest.fixture(scope="module")
def in_process(reference_training, tmp_path_factory):
    sample = reference.evaluation_sample(3, 200)
    result = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=3,
                                    batch_size=64, shard_size=128)
    return sample, result, effects_contents(result, tmp_path_factory.mktemp("local"))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_ray_gives_the_in_process_effects_bit_for_bit(local_ray, reference_training, in_process, num_workers,
                                                      tmp_path):
    sample, local_result, local_table = in_process
    executor = local_ray.RayExecutor(num_workers)
    try:  # the actors hold the module's 2 CPUs until shut down
        result = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=3,
                                        batch_size=64, shard_size=128, executor=executor)
        assert len(executor.actors) == num_workers
        assert result.metadata["executor"] == "ray"
        assert effects_contents(result, tmp_path).equals(local_table)
        np.testing.assert_array_equal(result.effects, local_result.effects)

        other_seed = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=4,
                                            batch_size=64, shard_size=128, executor=executor)
        assert not np.array_equal(other_seed.effects, result.effects)
    finally:
        executor.shutdown()
