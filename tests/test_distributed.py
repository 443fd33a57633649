"""The Ray executor against the in-process one, on a local Ray this module starts and stops."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rnnimp import reference, sensitivity_importance

pytestmark = pytest.mark.slow


def effects_contents(result, folder):
    path = result.write(str(folder))["effects"]
    return pq.read_table(path).replace_schema_metadata(None)


@pytest.fixture(scope="module")
def in_process(reference_training, tmp_path_factory):
    sample = reference.evaluation_sample(3, 200)
    result = sensitivity_importance(reference_training.model, sample, n_repeats=4, random_state=3,
                                    batch_size=64, shard_size=128)
    return sample, result, effects_contents(result, tmp_path_factory.mktemp("local"))


PER_STEP = dict(n_repeats=2, random_state=5, batch_size=64, per_step=True)


@pytest.fixture(scope="module")
def in_process_per_step(reference_training, in_process):
    """A per-step map computed in this process (LocalExecutor), all 200 series in one shard."""
    return sensitivity_importance(reference_training.model, in_process[0], shard_size=256, **PER_STEP)


@pytest.mark.parametrize("num_workers, call_steps", [(1, 25_000), (2, None)])
def test_ray_gives_the_in_process_effects_bit_for_bit(local_ray, reference_training, in_process, in_process_per_step,
                                                      num_workers, call_steps, tmp_path, monkeypatch):
    """Also for a per-step map, whose actor calls carry several units of one shard each (15 with 2
    workers, 4 with 1 and ``CALL_SAMPLE_STEPS`` lowered), on shards of another size than the local run's."""
    sample, local_result, local_table = in_process
    batch_sizes = []
    batched = local_ray.unit_batches

    def recording(units, cost, workers):
        batches = batched(units, cost, workers)
        batch_sizes.extend(len(batch.units) for batch in batches)
        return batches

    monkeypatch.setattr(local_ray, "unit_batches", recording)
    if call_steps is not None:
        monkeypatch.setattr(local_ray, "CALL_SAMPLE_STEPS", call_steps)
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

        batch_sizes.clear()
        per_step = sensitivity_importance(reference_training.model, sample, shard_size=128, executor=executor,
                                          **PER_STEP)
        np.testing.assert_array_equal(per_step.effects, in_process_per_step.effects)
    finally:
        executor.shutdown()
    assert sum(batch_sizes) == per_step.metadata["n_units"] == 3 * 10 * 2 * 2  # targets x steps x repeats x shards
    # a unit: 2 batches of 64 x 10 steps (+ 2048 each), 5376; 25000 // 5376 = 4; else 120 units / (2 x 4 calls)
    assert max(batch_sizes) == (4 if call_steps else 15)


def test_workers_load_the_forward_pass_earlier_workers_compiled_with_the_same_effects(local_ray, tmp_path,
                                                                                        monkeypatch):
    """Each RayExecutor starts new worker processes: the second one's find the first one's XLA program in the
    shared cache folder (so they compile nothing new) and give the same effects bit for bit."""
    import os

    import keras

    from rnnimp import xlacache

    # A cache folder of this test's own (other processes of the test run publish into the run's meanwhile).
    monkeypatch.setenv(xlacache.CACHE_ENV, str(tmp_path / "xla"))
    shared = xlacache.shared_folder()
    worker_env = local_ray.worker_env
    monkeypatch.setattr(local_ray, "worker_env",
                        lambda *args: {**worker_env(*args), xlacache.CACHE_ENV: str(tmp_path / "xla")})
    model = keras.Sequential([keras.Input((6, 2)), keras.layers.LSTM(7), keras.layers.Dense(1)])  # new to the cache
    sample = np.random.default_rng(0).random((300, 6, 2), dtype=np.float32)
    entries, results = [set(os.listdir(shared))], []
    for _ in range(2):
        executor = local_ray.RayExecutor(num_workers=1)
        try:
            results.append(sensitivity_importance(model, sample, n_repeats=2, random_state=1, executor=executor))
        finally:
            executor.shutdown()
        entries.append(set(os.listdir(shared)))
    compiled_first, compiled_second = (
        {name for name in after - before if name.endswith(xlacache.ENTRY_SUFFIX)}
        for before, after in zip(entries, entries[1:]))
    assert compiled_first and not compiled_second
    np.testing.assert_array_equal(results[0].effects, results[1].effects)
