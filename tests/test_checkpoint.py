"""Resume from the checkpoint of an interrupted run, in-process (no Ray)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import linear_lstm_free_model
from rnnimp import InvalidParameterError, sensitivity_importance
from rnnimp.checkpoint import FOLDER
from rnnimp.worker import LocalExecutor


class Crash(Exception):
    pass


class CrashingExecutor(LocalExecutor):
    """Dies (like a killed driver) after ``after`` units; counts the units it computed."""

    def __init__(self, after=None):
        super().__init__()
        self.after, self.computed = after, 0

    def evaluate(self, job, baseline, units):
        for item in super().evaluate(job, baseline, units):
            if self.after is not None and self.computed == self.after:
                raise Crash()
            self.computed += 1
            yield item


@pytest.fixture(scope="module")
def model():
    return linear_lstm_free_model([1.0, 2.0, 0.5], time_steps=4)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((64, 4, 3), dtype=np.float32)


OPTIONS = dict(n_repeats=4, batch_size=16, shard_size=32, random_state=9)


def test_interrupted_run_resumes_to_identical_results(model, sample, tmp_path):
    out = str(tmp_path / "run")
    reference = sensitivity_importance(model, sample, **OPTIONS)
    total = 3 * 4 * 2  # features x repeats x shards

    with pytest.raises(Crash):
        sensitivity_importance(model, sample, executor=CrashingExecutor(after=10), checkpoint=out, **OPTIONS)
    assert (tmp_path / "run" / FOLDER / "units").exists()
    assert not (tmp_path / "run" / "summary.parquet").exists()  # nothing final from a dead run

    resumed_executor = CrashingExecutor()
    resumed = sensitivity_importance(model, sample, executor=resumed_executor, checkpoint=out, **OPTIONS)
    assert resumed_executor.computed == total - 10
    assert resumed.metadata["units_from_checkpoint"] == 10
    np.testing.assert_array_equal(resumed.effects, reference.effects)

    paths = resumed.write(out)
    assert not (tmp_path / "run" / FOLDER).exists()  # the checkpoint goes once results are in place
    assert pq.read_table(paths["effects"]).num_rows == 12


def test_resuming_another_configuration_is_refused(model, sample, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(Crash):
        sensitivity_importance(model, sample, executor=CrashingExecutor(after=3), checkpoint=out, **OPTIONS)
    with pytest.raises(InvalidParameterError, match=r"another configuration \(differs in configuration.noise_scale"):
        sensitivity_importance(model, sample, checkpoint=out, **{**OPTIONS, "noise_scale": 0.3})
    with pytest.raises(InvalidParameterError, match="differs in .*data_fingerprint"):
        sensitivity_importance(model, sample[:48], checkpoint=out, **OPTIONS)
    other_model = linear_lstm_free_model([1.0, 2.0, 0.6], time_steps=4)
    with pytest.raises(InvalidParameterError, match="differs in model_fingerprint"):
        sensitivity_importance(other_model, sample, checkpoint=out, **OPTIONS)
