"""run() and its executors: the Executor protocol, and who shuts an executor down."""

import time

import numpy as np
import pytest

from conftest import linear_lstm_free_model
from rnnimp import InvalidParameterError, runner, sensitivity_importance
from rnnimp.api import Executor
from rnnimp.worker import LocalExecutor


@pytest.fixture(scope="module")
def model():
    return linear_lstm_free_model([1.0, -2.0, 0.0], time_steps=3)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(5).random((40, 3, 3), dtype=np.float32)


class RecordingExecutor(LocalExecutor):
    """The local executor, counting shutdowns; ``fail`` makes its units raise."""

    made = []

    def __init__(self, fail=False):
        super().__init__()
        self.shutdowns, self.fail = 0, fail
        RecordingExecutor.made.append(self)

    def evaluate(self, job, baseline, units):
        if self.fail:
            raise RuntimeError("a unit failed")
        yield from super().evaluate(job, baseline, units)

    def shutdown(self):
        self.shutdowns += 1


def test_both_executors_satisfy_the_protocol():
    from rnnimp.distributed import RayExecutor

    assert isinstance(LocalExecutor(), Executor)
    assert isinstance(RayExecutor(), Executor)  # creating one starts nothing
    assert not isinstance(object(), Executor)


def test_an_executor_run_made_is_shut_down_even_when_the_run_fails(model, sample, monkeypatch):
    RecordingExecutor.made.clear()
    monkeypatch.setattr(runner, "LocalExecutor", RecordingExecutor)
    sensitivity_importance(model, sample, n_repeats=2, executor="local")
    with pytest.raises(RuntimeError, match="a unit failed"):
        monkeypatch.setattr(runner, "LocalExecutor", lambda: RecordingExecutor(fail=True))
        sensitivity_importance(model, sample, n_repeats=2)
    assert [made.shutdowns for made in RecordingExecutor.made] == [1, 1]


def test_an_executor_passed_in_is_left_running(model, sample):
    executor = RecordingExecutor()
    first = sensitivity_importance(model, sample, n_repeats=2, executor=executor)
    second = sensitivity_importance(model, sample, n_repeats=2, executor=executor)
    assert executor.shutdowns == 0
    np.testing.assert_array_equal(first.effects, second.effects)


def test_an_object_without_the_executor_methods_is_refused(model, sample):
    class Partial:  # evaluate and baseline, but no shutdown, name or timings
        def baseline(self, job): ...
        def evaluate(self, job, baseline, units): ...

    with pytest.raises(InvalidParameterError, match="executor: must be 'local', 'ray' or an executor object"):
        sensitivity_importance(model, sample, n_repeats=2, executor=Partial())


def _free_cpus(ray, expected, timeout_s=30.0):
    """Available CPUs once they reach ``expected`` (actors give theirs back when killed), or the last count."""
    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources().get("CPU", 0)
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


@pytest.mark.slow
def test_ray_executor_made_by_run_leaves_no_actors_and_no_ray_it_started(model, sample, monkeypatch):
    import ray

    from rnnimp import distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = sensitivity_importance(model, sample, n_repeats=2)
    try:
        distributed.connect(1)  # the caller's own connection (one CPU: one actor), which run() must leave up
        result = sensitivity_importance(model, sample, n_repeats=2, executor="ray")
        assert ray.is_initialized()
        # its one-CPU actor is gone (an executor passed in is left running: test_an_executor_passed_in_is_left_running)
        assert _free_cpus(ray, 1.0) == 1.0
    finally:
        distributed.shutdown()
    np.testing.assert_array_equal(result.effects, local.effects)

    unconnected = sensitivity_importance(model, sample, n_repeats=2, executor="ray")  # starts its own Ray...
    assert not ray.is_initialized()  # ...and stops it
    np.testing.assert_array_equal(unconnected.effects, local.effects)


def _one_unit_runs(n_runs):
    """A job-free set-up for LocalExecutor.evaluate: ``n_runs`` units, each on a shard of its own (so each its
    own run), and a Baseline with one placeholder per shard."""
    from rnnimp.method import Shard, Unit
    from rnnimp.worker import Baseline

    units = [Unit(0, (0,), None, 0, Shard(index, index, index + 1), (index, 0)) for index in range(n_runs)]
    return units, Baseline((None,) * n_runs, 1)


class _Job:
    model = sample = labels = settings = None


def test_the_local_executor_yields_each_run_as_it_finishes(monkeypatch):
    import threading

    from rnnimp import worker

    units, baseline = _one_unit_runs(4)
    first_received = threading.Event()

    def unit_sums_many(model, sample, shard_baseline, labels, settings, run):
        if run[0].shard.index == 0:  # the first run finishes only once a later one has come back
            first_received.wait(timeout=10)
        return np.full((len(run), 1, 2), float(run[0].shard.index))

    monkeypatch.setattr(worker, "unit_sums_many", unit_sums_many)
    executor = LocalExecutor(threads=2)
    try:
        received = []
        for unit, sums in executor.evaluate(_Job(), baseline, units):
            received.append(unit)
            first_received.set()
            assert sums[0, 0] == unit.shard.index  # each unit with its own sums
    finally:
        executor.shutdown()
    assert received[0] != units[0] and sorted(u.shard.index for u in received) == [0, 1, 2, 3]


def test_the_local_executor_cancels_the_runs_not_started_when_its_caller_stops(monkeypatch):
    import threading

    from rnnimp import worker

    units, baseline = _one_unit_runs(12)
    release, computed = threading.Event(), []

    def unit_sums_many(model, sample, shard_baseline, labels, settings, run):
        index = run[0].shard.index
        if 0 < index < 10:
            release.wait(timeout=10)
        if index < 10:
            computed.append(index)
        return np.zeros((len(run), 1, 2))

    monkeypatch.setattr(worker, "unit_sums_many", unit_sums_many)
    executor = LocalExecutor(threads=2)
    try:
        results = executor.evaluate(_Job(), baseline, units[:10])
        assert next(results)[0] == units[0]
        results.close()  # the caller stops: an error, an interrupt
        release.set()
        # A later evaluation on the same threads (runs 10 and 11, not counted) comes after whatever the first
        # left queued, so once it is done, every run of the first that was not cancelled has been computed.
        assert len(list(executor.evaluate(_Job(), baseline, units[10:]))) == 2
    finally:
        executor.shutdown()
    assert 0 in computed and len(computed) <= 3  # run 0, and at most the two that the threads had taken


def test_the_local_executor_gives_the_same_effects_on_any_number_of_threads(model, sample):
    run = dict(n_repeats=4, random_state=11, per_step=True, batch_size=8, shard_size=16,
               metric=("rms", "mae"))
    one, three = LocalExecutor(threads=1), LocalExecutor(threads=3)
    try:
        alone = sensitivity_importance(model, sample, executor=one, **run)
        threaded = sensitivity_importance(model, sample, executor=three, **run)
        permuted = [sensitivity_importance(model, sample, executor=executor, perturbation="permute", **run)
                    for executor in (one, three)]
    finally:
        three.shutdown()
    assert three.threads == 3 and alone.metadata["n_units"] == 3 * 3 * 4 * 3  # features x steps x repeats x shards
    assert alone.effects_table().equals(threaded.effects_table())
    assert permuted[0].effects_table().equals(permuted[1].effects_table())
    with pytest.raises(InvalidParameterError, match="threads: must be a positive integer, got 0"):
        LocalExecutor(threads=0)
