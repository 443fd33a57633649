"""Batched checkpoints: few objects, a kill loses only unflushed units, the old layout still resumes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import linear_lstm_free_model
from rnnimp import sensitivity_importance
from rnnimp import runner
from rnnimp.checkpoint import FOLDER, Checkpoint, decode_batch, encode_batch, unit_id
from rnnimp.method import Layout, Target, plan_units

OPTIONS = dict(n_repeats=4, batch_size=16, shard_size=32, random_state=9)
TOTAL_UNITS = 3 * 4 * 2  # features x repeats x shards
HERE = os.path.dirname(os.path.abspath(__file__))


class FakeClock:
    """Seconds that advance only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def many_units(n_units: int):
    """``n_units`` distinct units (3 targets x repeats x 10 shards) and fake sums for each."""
    targets = [Target(f"x{i}", (i,)) for i in range(3)]
    shards = Layout.for_sample(10 * 32, 16, 32).shards
    units = plan_units(1, targets, range(n_units // 30 + 1), shards)[:n_units]
    rng = np.random.default_rng(0)
    return [(unit, rng.random((2, 2))) for unit in units]


def unit_objects(out) -> list[str]:
    return sorted(os.listdir(os.path.join(out, FOLDER, "units")))


def test_3000_units_are_written_as_a_few_objects_and_read_back(tmp_path):
    out, clock = str(tmp_path / "run"), FakeClock()
    records = many_units(3000)
    store = Checkpoint(out, {"a": 1}, flush_interval_s=5.0, clock=clock)
    assert store.open() == {}
    for unit, sums in records:  # 3,000 units finishing over 30 simulated seconds
        clock.now += 0.01
        store.record(unit, sums)
    store.flush()
    objects = unit_objects(out)
    assert store.objects_written == len(objects)
    assert 5 <= len(objects) <= 7, objects  # one per 5 s of the 30 s, plus the final flush
    store.flush()  # nothing buffered: nothing written
    assert len(unit_objects(out)) == len(objects)

    finished = Checkpoint(out, {"a": 1}).open()
    assert len(finished) == 3000
    for unit, sums in records:
        np.testing.assert_array_equal(finished[unit_id(unit)], sums)


def test_unflushed_units_are_lost_flushed_kept(tmp_path):
    out, clock = str(tmp_path / "run"), FakeClock()
    records = many_units(100)
    store = Checkpoint(out, {"a": 1}, flush_interval_s=5.0, clock=clock)
    store.open()
    for index, (unit, sums) in enumerate(records):
        clock.now = float(index)
        store.record(unit, sums)  # flushes after units 5, 10, ..., 95 (5 s each)
    assert store.pending == 4  # units 96..99 finished after the last flush: a kill now loses them
    del store
    finished = Checkpoint(out, {"a": 1}).open()
    assert sorted(finished) == sorted(unit_id(unit) for unit, _ in records[:96])


def test_temporary_files_and_foreign_names_are_ignored(tmp_path):
    out = str(tmp_path / "run")
    store = Checkpoint(out, {"a": 1}, flush_interval_s=0.0)
    store.open()
    unit, sums = many_units(1)[0]
    store.record(unit, sums)
    units_folder = tmp_path / "run" / FOLDER / "units"
    (units_folder / ".batch-0123.npz.abc.tmp").write_bytes(b"half a file")
    assert list(Checkpoint(out, {"a": 1}).open()) == [unit_id(unit)]


def test_batch_encoding_round_trips_units_of_different_lengths():
    units = {(0, -1, 0, 0): np.arange(6.0).reshape(3, 2), (2, 3, 1, 7): np.array([[1.5, 16.0]])}
    decoded = decode_batch(encode_batch(units))
    assert list(decoded) == list(units)
    for key, value in units.items():
        np.testing.assert_array_equal(decoded[key], value)


@pytest.fixture(scope="module")
def model():
    return linear_lstm_free_model([1.0, 2.0, 0.5], time_steps=4)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((64, 4, 3), dtype=np.float32)


def test_previous_one_file_per_unit_layout_still_resumes(model, sample, tmp_path, monkeypatch):
    """A checkpoint of the previous version (one .npy per unit) is read by this one."""
    out = str(tmp_path / "run")
    reference = sensitivity_importance(model, sample, **OPTIONS)
    # A complete run leaves its checkpoint (results are never written here); every unit flushed.
    monkeypatch.setattr(runner, "Checkpoint", lambda *a, **k: Checkpoint(*a, flush_interval_s=0.0, **k))
    sensitivity_importance(model, sample, checkpoint=out, **OPTIONS)
    monkeypatch.undo()
    units_folder = tmp_path / "run" / FOLDER / "units"
    finished = {}
    for name in os.listdir(units_folder):
        finished.update(decode_batch((units_folder / name).read_bytes()))
        os.remove(units_folder / name)
    for target, step, repeat, shard in sorted(finished)[:10]:  # as the previous version named them
        buffer = io.BytesIO()
        np.save(buffer, finished[(target, step, repeat, shard)], allow_pickle=False)
        (units_folder / f"t{target}-s{step}-r{repeat}-h{shard}.npy").write_bytes(buffer.getvalue())

    resumed = sensitivity_importance(model, sample, checkpoint=out, **OPTIONS)
    assert resumed.metadata["units_from_checkpoint"] == 10
    np.testing.assert_array_equal(resumed.effects, reference.effects)


KILLED_RUN = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from rnnimp import runner, sensitivity_importance
    from rnnimp.checkpoint import Checkpoint
    from rnnimp.worker import LocalExecutor

    ticks = [0.0]
    def clock():  # one second per reading: a flush every few units
        ticks[0] += 1.0
        return ticks[0]
    stores = []
    def checkpoint(*args, **kwargs):
        stores.append(Checkpoint(*args, flush_interval_s=3.0, clock=clock, **kwargs))
        return stores[-1]
    runner.Checkpoint = checkpoint

    class Killed(LocalExecutor):
        def evaluate(self, job, baseline, units):
            for count, item in enumerate(super().evaluate(job, baseline, units)):
                if count == {after}:
                    store = stores[0]
                    print("flushed", {after} - store.pending, flush=True)
                    os._exit(9)  # like SIGKILL: no finally, no atexit, no flush
                yield item

    import keras
    model = keras.models.load_model({model_path!r})  # the test's own model: same names, same fingerprint
    sample = np.random.default_rng(0).random((64, 4, 3), dtype=np.float32)
    sensitivity_importance(model, sample, executor=Killed(), checkpoint={out!r}, **{options!r})
""")


def test_killed_run_loses_only_unflushed_units_and_resumes_identically(model, sample, tmp_path):
    out = str(tmp_path / "run")
    reference = sensitivity_importance(model, sample, **OPTIONS)
    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    script = KILLED_RUN.format(tests=HERE, after=10, out=out, options=OPTIONS, model_path=model_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == 9, killed.stderr[-3000:]
    flushed = int(killed.stdout.split("flushed")[1].split()[0])
    assert 0 < flushed < 10  # some finished units were written, the last ones were lost with the process

    from rnnimp.worker import LocalExecutor

    class CountingExecutor(LocalExecutor):
        computed = 0

        def evaluate(self, job, baseline, units):
            for item in super().evaluate(job, baseline, units):
                CountingExecutor.computed += 1
                yield item

    resumed = sensitivity_importance(model, sample, executor=CountingExecutor(), checkpoint=out, **OPTIONS)
    assert resumed.metadata["units_from_checkpoint"] == flushed
    assert CountingExecutor.computed == TOTAL_UNITS - flushed
    np.testing.assert_array_equal(resumed.effects, reference.effects)
