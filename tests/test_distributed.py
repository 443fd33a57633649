"""The Ray executor against the in-process one, on a local Ray the tests start and stop."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rnnimp import reference, sensitivity_importance

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(monkeypatch):
    """Start an embedded local Ray of the requested size; always shut it down."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from rnnimp import distributed

    def start(num_cpus: int):
        distributed.connect(num_cpus)
        return distributed.RayExecutor()

    yield start
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


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_ray_gives_the_in_process_effects_bit_for_bit(local_ray, reference_training, in_process, num_cpus, tmp_path):
    sample, local_result, local_table = in_process
    executor = local_ray(num_cpus)
    result = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=3,
                                    batch_size=64, shard_size=128, executor=executor)
    assert len(executor.actors) == num_cpus
    assert result.metadata["executor"] == "ray"
    assert effects_contents(result, tmp_path).equals(local_table)
    np.testing.assert_array_equal(result.effects, local_result.effects)

    other_seed = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=4,
                                        batch_size=64, shard_size=128, executor=executor)
    assert not np.array_equal(other_seed.effects, result.effects)
    executor.shutdown()
