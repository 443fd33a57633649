"""Interval methods by name, ragged rows, paired comparisons and rank probabilities: known answers."""

import warnings

import numpy as np
import pytest
from scipy import stats

from rnnimp.errors import InvalidParameterError
from rnnimp.stats import (
    interval, intervals, pairwise_comparisons, rank_descending, rank_probabilities, summarize,
)

T_975_DF4 = 2.7764451051977987  # tables: t_{0.975, 4}


def hesterberg_level(confidence: float, n: int) -> float:
    """The level rnnimp's bootstrap intervals of a mean of n values use: 2 Φ(sqrt(n/(n-1)) t_{n-1, (1+c)/2}) - 1."""
    return float(2 * stats.norm.cdf(np.sqrt(n / (n - 1)) * stats.t.ppf(0.5 + confidence / 2, n - 1)) - 1)


def t_bounds(values, confidence):
    """Student-t bounds of the mean of ``values`` (n,), from scipy."""
    values = np.asarray(values)
    return stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def test_t_method_matches_the_textbook_formula_and_ignores_missing_repeats():
    values = np.array([1.0, np.nan, 2.0, 3.0, 4.0, np.inf, 6.0])
    half = T_975_DF4 * np.sqrt(3.7) / np.sqrt(5)
    low, high, used = interval(values, 0.95, "t")
    assert low == pytest.approx(3.2 - half, rel=1e-12)
    assert high == pytest.approx(3.2 + half, rel=1e-12)
    assert used == "t"


def test_percentile_method_on_two_values_is_their_range():
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1.
    assert interval([0.0, 1.0], 0.95, "percentile", np.random.default_rng(0)) == (0.0, 1.0, "percentile")


@pytest.mark.parametrize("method, scipy_method", [("percentile", "percentile"), ("bca", "BCa")])
def test_bootstrap_methods_are_scipys_on_the_same_random_stream(method, scipy_method):
    values = np.random.default_rng(3).gamma(2.0, size=(3, 25))
    bounds = intervals(values, 0.9, method, np.random.default_rng(11), n_resamples=2000)
    reference = stats.bootstrap((values,), np.mean, confidence_level=hesterberg_level(0.9, 25), n_resamples=2000,
                                method=scipy_method,
                                rng=np.random.default_rng(11), vectorized=True, axis=-1)
    np.testing.assert_allclose(bounds.low, reference.confidence_interval.low, rtol=1e-12)
    np.testing.assert_allclose(bounds.high, reference.confidence_interval.high, rtol=1e-12)
    assert list(bounds.method) == [method] * 3


def test_bca_shifts_right_of_the_percentile_interval_on_right_skewed_values():
    values = np.random.default_rng(5).lognormal(sigma=1.5, size=30)
    percentile = interval(values, 0.95, "percentile", np.random.default_rng(1))
    bca = interval(values, 0.95, "bca", np.random.default_rng(1))
    assert bca[2] == "bca"
    assert bca[0] > percentile[0] and bca[1] > percentile[1]


def test_bca_of_constant_values_falls_back_to_the_percentile_point():
    assert interval(np.full(6, 0.25), 0.95, "bca", np.random.default_rng(0)) == (0.25, 0.25, "percentile")
    bounds = intervals(np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]]), 0.95, "bca", np.random.default_rng(0))
    assert list(bounds.method) == ["percentile", "bca"]
    assert (bounds.low[0], bounds.high[0]) == (1.0, 1.0)


def _scipy_bca_one_resample(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return stats.bootstrap(([0.0, 1.0],), np.mean, n_resamples=1, method="BCa", rng=np.random.default_rng(seed),
                               confidence_level=hesterberg_level(0.95, 2))


def test_bca_that_scipy_cannot_compute_falls_back_to_the_percentile_of_the_same_resamples():
    # With one resample of [0, 1], the observed mean 0.5 lies outside the bootstrap distribution whenever
    # the resample is [0, 0] or [1, 1]: scipy's BCa bounds are then NaN, with a DegenerateDataWarning.
    fallbacks = 0
    for seed in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scipy's warnings stay inside
            low, high, used = interval([0.0, 1.0], 0.95, "bca", np.random.default_rng(seed), n_resamples=1)
        reference = _scipy_bca_one_resample(seed)
        if np.isnan(reference.confidence_interval.low):
            fallbacks += 1
            single = reference.bootstrap_distribution[0]
            assert (low, high, used) == (single, single, "percentile")
        else:
            assert (low, high, used) == (reference.confidence_interval.low, reference.confidence_interval.high, "bca")
    assert fallbacks > 0


def test_fewer_than_two_values_give_no_interval():
    for method in ("t", "percentile", "bca"):
        low, high, used = interval([np.nan, 0.3, np.nan], 0.95, method, np.random.default_rng(0))
        assert np.isnan(low) and np.isnan(high) and used is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: interval([1.0, 2.0], 0.95, "normal"), "method: must be one of 't', 'percentile', 'bca', got 'normal'"),
        (lambda: interval([1.0, 2.0], 0.95, "bca"), "rng: must be a numpy.random.Generator for a bootstrap interval"),
        (lambda: interval([1.0, 2.0], 1.5, "t"), "confidence: must be strictly between 0 and 1, got 1.5"),
        (lambda: interval(np.ones((2, 2)), 0.95), "values: must have 1 dimension (repeats,), got (2, 2)"),
        (lambda: summarize(np.ones((2, 3)), 0.95, np.random.default_rng(0), interval="jackknife"),
         "interval: must be one of 't', 'percentile', 'bca', got 'jackknife'"),
        (lambda: summarize(np.ones(3), 0.95, np.random.default_rng(0)),
         "effects: must have 2 dimensions (rows, repeats), got (3,)"),
        (lambda: pairwise_comparisons(np.ones((2, 3)), ["a"], 0.95), "names: must be 2 names, one per row of effects"),
        (lambda: rank_probabilities(np.ones((2, 3)), ["a", "b", "c"]), "names: must be 2 names"),
    ],
)
def test_bad_arguments_name_the_parameter_and_the_rule(call, message):
    with pytest.raises(InvalidParameterError) as raised:
        call()
    assert message in str(raised.value)


def test_summarize_ragged_rows_uses_each_rows_finite_values():
    nan = np.nan
    effects = np.array([
        [1.0, 2.0, 3.0, 4.0, 6.0, nan],   # 5 repeats run
        [0.5, 0.7, 0.6, 0.9, 0.4, 0.8],   # all 6
        [0.2, 0.2, nan, 0.2, nan, nan],   # constant: BCa undefined
        [nan, 9.0, nan, nan, nan, nan],   # one value: no interval
        [nan] * 6,                        # none
    ])
    summary = summarize(effects, 0.95, np.random.default_rng(0))
    np.testing.assert_array_equal(summary.n_repeats, [5, 6, 3, 1, 0])
    np.testing.assert_allclose(summary.mean, [3.2, 0.65, 0.2, 9.0, nan])
    np.testing.assert_allclose(summary.std, [np.sqrt(3.7), np.std(effects[1], ddof=1), 0.0, nan, nan], atol=1e-15)
    half = T_975_DF4 * np.sqrt(3.7) / np.sqrt(5)
    np.testing.assert_allclose(summary.t_low[:3], [3.2 - half, t_bounds(effects[1], 0.95)[0], 0.2], rtol=1e-12)
    np.testing.assert_allclose(summary.t_high[:3], [3.2 + half, t_bounds(effects[1], 0.95)[1], 0.2], rtol=1e-12)
    assert list(summary.bootstrap_method) == ["bca", "bca", "percentile", None, None]
    assert (summary.bootstrap_low[2], summary.bootstrap_high[2]) == (0.2, 0.2)
    for column in (summary.std, summary.t_low, summary.t_high, summary.bootstrap_low, summary.bootstrap_high):
        assert np.isnan(column[3:]).all()
    assert (summary.bootstrap_low[:2] < summary.mean[:2]).all() and (summary.mean[:2] < summary.bootstrap_high[:2]).all()
    np.testing.assert_array_equal(summary.rank, [2, 3, 4, 1, 5])  # no mean ranks last


def test_summarize_percentile_is_scipys_percentile_of_the_complete_rows():
    effects = np.random.default_rng(8).gamma(3.0, size=(4, 20))
    summary = summarize(effects, 0.9, np.random.default_rng(4), interval="percentile", n_resamples=3000)
    reference = stats.bootstrap((effects,), np.mean, confidence_level=hesterberg_level(0.9, 20), n_resamples=3000,
                                method="percentile",
                                rng=np.random.default_rng(4), vectorized=True, axis=-1)
    np.testing.assert_allclose(summary.bootstrap_low, reference.confidence_interval.low, rtol=1e-12)
    np.testing.assert_allclose(summary.bootstrap_high, reference.confidence_interval.high, rtol=1e-12)
    assert list(summary.bootstrap_method) == ["percentile"] * 4


def test_summarize_with_t_only_leaves_the_bootstrap_columns_empty():
    effects = np.array([[1.0, 2.0, 3.0], [0.1, 0.1, 0.4]])
    summary = summarize(effects, 0.95, np.random.default_rng(0), interval="t")
    assert np.isnan(summary.bootstrap_low).all() and np.isnan(summary.bootstrap_high).all()
    assert list(summary.bootstrap_method) == [None, None]
    assert summary.t_low[0] == pytest.approx(t_bounds(effects[0], 0.95)[0], rel=1e-12)


def test_rank_descending_puts_nan_last():
    np.testing.assert_array_equal(rank_descending(np.array([0.1, np.nan, 0.3, 0.3])), [3, 4, 1, 1])


def test_pairwise_comparisons_pair_repeats_by_index():
    base = np.array([5.0, 1.0, 9.0, 3.0, 7.0, np.nan])
    effects = np.array([
        base + 0.01,                                   # a: b + 0.01 in every repeat
        base,                                          # b
        np.array([5.0, 1.0, 9.0, 3.0, 7.5, 4.0]),      # c: b except repeat 4 (+0.5)
    ])
    table = pairwise_comparisons(effects, ["a", "b", "c"], 0.95).to_pydict()
    assert list(zip(table["name_a"], table["name_b"])) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert table["index_a"] == [0, 0, 1] and table["index_b"] == [1, 2, 2]
    assert table["n_pairs"] == [5, 5, 5]  # repeat 5 is missing for a and b
    # a − b is 0.01 in every pair: a point interval that excludes 0, although the unpaired intervals overlap.
    assert table["mean_difference"][0] == pytest.approx(0.01)
    assert table["t_low"][0] == pytest.approx(0.01) and table["t_high"][0] == pytest.approx(0.01)
    differences = np.array([0.0, 0.0, 0.0, 0.0, -0.5])  # b − c
    low, high = t_bounds(differences, 0.95)
    assert table["mean_difference"][2] == pytest.approx(-0.1)
    assert (table["t_low"][2], table["t_high"][2]) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert table["settled"] == [True, False, False]


def test_pairwise_comparisons_of_a_single_target_is_an_empty_table():
    table = pairwise_comparisons(np.ones((1, 4)), ["only"], 0.95)
    assert table.num_rows == 0
    assert table.column_names == ["index_a", "name_a", "index_b", "name_b", "n_pairs", "mean_difference",
                                  "t_low", "t_high", "settled"]


def test_rank_probabilities_count_ranks_per_repeat_and_split_ties():
    effects = np.array([
        [1.0, 2.0, 0.0, 0.0, np.nan],
        [2.0, 1.0, 0.0, 1.0, 5.0],
        [0.0, 0.0, 0.0, 2.0, 5.0],
    ])  # repeat 2: a three-way tie; repeat 4 is incomplete and left out
    table = rank_probabilities(effects, ["a", "b", "c"]).to_pydict()
    assert table["name"] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert table["rank"] == [1, 2, 3] * 3
    assert set(table["n_repeats"]) == {4}
    third = 1 / 3  # each target's share of ranks 1-3 in the tied repeat
    expected = np.array([
        [1 + third, 1 + third, 1 + third],  # a: rank 2, 1, tie, 3
        [1 + third, 2 + third, third],      # b: rank 1, 2, tie, 2
        [1 + third, third, 2 + third],      # c: rank 3, 3, tie, 1
    ]) / 4
    probability = np.array(table["probability"]).reshape(3, 3)
    np.testing.assert_allclose(probability, expected)
    np.testing.assert_allclose(probability.sum(axis=0), 1.0)
    np.testing.assert_allclose(probability.sum(axis=1), 1.0)


def test_rank_probabilities_without_a_complete_repeat_are_nan():
    table = rank_probabilities(np.array([[1.0, np.nan], [np.nan, 2.0]]), ["a", "b"]).to_pydict()
    assert np.isnan(table["probability"]).all() and set(table["n_repeats"]) == {0}
