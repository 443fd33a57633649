"""Merging runs: two runs of 15 repeats give the summary of one run of 30."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import linear_lstm_free_model
from jobtools import call_job
from rnnimp import InvalidParameterError, sensitivity_importance
from rnnimp.merge import merge_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    model = linear_lstm_free_model([1.0, 2.0, 0.0], time_steps=3)
    sample = np.random.default_rng(4).random((50, 3, 3), dtype=np.float32)
    folder = tmp_path_factory.mktemp("runs")
    common = dict(random_state=2, batch_size=16, shard_size=32, groups={"g": ["x1", "x2"]})
    whole = sensitivity_importance(model, sample, n_repeats=30, **common)
    whole.write(str(folder / "whole"), chart=False)
    for name, first in (("a", 0), ("b", 15)):
        sensitivity_importance(model, sample, n_repeats=15, first_repeat=first, **common).write(
            str(folder / name), chart=False)
    sensitivity_importance(model, sample, n_repeats=15, first_repeat=15, **{**common, "random_state": 3}).write(
        str(folder / "other_seed"), chart=False)
    sensitivity_importance(model, sample, n_repeats=15, **common).write(str(folder / "a_again"), chart=False)
    return folder


def test_two_halves_merge_into_the_whole(runs):
    merged = merge_runs([str(runs / "a"), str(runs / "b")])
    whole = pq.read_table(runs / "whole" / "summary.parquet").replace_schema_metadata(None)
    assert merged.summary_table().replace_schema_metadata(None).equals(whole)


def test_merge_job_writes_the_merged_summary(runs, tmp_path):
    done = call_job("jobs.merge", str(runs / "b"), str(runs / "a"), "--out", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    merged = pq.read_table(tmp_path / "m" / "summary.parquet").replace_schema_metadata(None)
    assert merged.equals(pq.read_table(runs / "whole" / "summary.parquet").replace_schema_metadata(None))
    assert (tmp_path / "m" / "effects.png").exists()


def test_mismatched_or_overlapping_runs_are_refused(runs, tmp_path):
    with pytest.raises(InvalidParameterError, match="differs from .* in seed"):
        merge_runs([str(runs / "a"), str(runs / "other_seed")])
    with pytest.raises(InvalidParameterError, match="must not compute the same repeat twice"):
        merge_runs([str(runs / "a"), str(runs / "a_again")])
    done = call_job("jobs.merge", str(runs / "a"), str(tmp_path / "nothing"), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "DIR: must hold a finished rnnimp run" in done.stderr
    assert not (tmp_path / "m").exists()
