"""Drift between segments: Welch comparison of each target's effect in consecutive segments."""

import numpy as np
import pytest
from scipy import stats

from rnnimp.errors import InvalidParameterError
from rnnimp.stats import segment_comparisons

SEGMENTS = ["2024-01", "2024-02", "2024-03"]


def ragged_effects(rng, n_targets=4, n_repeats=12):
    """Effects (segments, targets, repeats) with some repeats not run (NaN)."""
    effects = rng.normal(loc=rng.uniform(0, 1, (3, n_targets, 1)), scale=rng.uniform(0.05, 0.3, (3, n_targets, 1)),
                         size=(3, n_targets, n_repeats))
    effects[1, 0, 8:] = np.nan
    effects[2, 3, 5:] = np.nan
    return effects


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_each_row_is_scipys_welch_test_of_consecutive_segments(confidence):
    effects = ragged_effects(np.random.default_rng(0))
    names = ["a", "b", "c", "d"]
    table = segment_comparisons(effects, names, SEGMENTS, confidence).to_pylist()
    assert [(row["name"], row["segment_a"], row["segment_b"]) for row in table] == [
        (name, first, second) for name in names for first, second in zip(SEGMENTS, SEGMENTS[1:])]
    for row in table:
        earlier = effects[SEGMENTS.index(row["segment_a"]), row["index"]]
        later = effects[SEGMENTS.index(row["segment_b"]), row["index"]]
        earlier, later = earlier[np.isfinite(earlier)], later[np.isfinite(later)]
        welch = stats.ttest_ind(later, earlier, equal_var=False)
        interval = welch.confidence_interval(confidence)
        assert (row["n_a"], row["n_b"]) == (len(earlier), len(later))
        np.testing.assert_allclose(row["mean_difference"], later.mean() - earlier.mean(), rtol=1e-12)
        np.testing.assert_allclose([row["welch_low"], row["welch_high"]], [interval.low, interval.high], rtol=1e-10)
        np.testing.assert_allclose([row["df"], row["p_value"]], [welch.df, welch.pvalue], rtol=1e-10)
        assert row["settled"] == (interval.low > 0 or interval.high < 0)


def test_a_clear_change_between_segments_is_settled():
    rng = np.random.default_rng(1)
    effects = np.stack([rng.normal(0.5, 0.05, (1, 20)), rng.normal(0.1, 0.05, (1, 20)), rng.normal(0.1, 0.05, (1, 20))])
    rows = segment_comparisons(effects, ["x"], SEGMENTS, 0.95).to_pylist()
    assert rows[0]["settled"] and rows[0]["welch_high"] < 0 and rows[0]["p_value"] < 1e-10
    assert -0.45 < rows[0]["mean_difference"] < -0.35


def test_identical_distributions_are_settled_at_about_the_error_rate():
    rng = np.random.default_rng(2)
    effects = rng.normal(0.3, 0.1, (2, 2000, 15))
    effects[1, ::3, 10:] = np.nan  # ragged: different numbers of repeats on either side
    table = segment_comparisons(effects, [f"x{i}" for i in range(2000)], ["a", "b"], 0.95)
    settled = np.asarray(table.column("settled"))
    assert 0.03 < settled.mean() < 0.07  # 5 % expected; binomial sd 0.5 %
    p_values = np.asarray(table.column("p_value"))
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3


def test_too_few_repeats_give_no_interval_and_constant_effects_a_point():
    effects = np.array([[[1.0, np.nan, np.nan], [2.0, 2.0, 2.0]],
                        [[1.5, 1.7, 1.6], [3.0, 3.0, 3.0]]])
    rows = segment_comparisons(effects, ["few", "constant"], ["a", "b"], 0.95).to_pylist()
    assert np.isnan(rows[0]["welch_low"]) and np.isnan(rows[0]["p_value"]) and not rows[0]["settled"]
    assert rows[1]["welch_low"] == rows[1]["welch_high"] == 1.0 and rows[1]["p_value"] == 0.0 and rows[1]["settled"]


def test_a_single_segment_has_no_comparisons():
    table = segment_comparisons(np.ones((1, 2, 5)), ["a", "b"], ["only"], 0.95)
    assert table.num_rows == 0 and "settled" in table.column_names


def test_refuses_effects_without_segments_or_labels_that_do_not_match():
    with pytest.raises(InvalidParameterError, match=r"effects: must have 3 dimensions"):
        segment_comparisons(np.ones((2, 5)), ["a", "b"], ["s"], 0.95)
    with pytest.raises(InvalidParameterError, match="segment_labels: must be 3 labels"):
        segment_comparisons(np.ones((3, 2, 5)), ["a", "b"], ["s1", "s2"], 0.95)
    with pytest.raises(InvalidParameterError, match="confidence"):
        segment_comparisons(np.ones((3, 2, 5)), ["a", "b"], SEGMENTS, 1.5)
