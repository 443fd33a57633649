"""Conditional permutation: strata of the conditioning features, donors within a stratum, its intended use."""

import numpy as np
import pytest
from scipy import stats

from rnnimp.conditional import conditional_permutation, per_series_means, strata
from rnnimp.errors import InvalidParameterError


def test_strata_are_the_quantile_bins_of_one_feature():
    means = np.arange(10.0)[::-1, None]  # 9, 8, ..., 0: 5 bins of 2 series each
    np.testing.assert_array_equal(strata(means, 5), [4, 4, 3, 3, 2, 2, 1, 1, 0, 0])


def test_strata_combine_the_bins_of_several_features():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(400, 2))
    ids = strata(means, 3)
    assert ids.dtype == np.int64 and set(ids) == set(range(9))
    for column in range(2):  # within a stratum, each feature's means lie in one tercile
        edges = np.quantile(means[:, column], [1 / 3, 2 / 3])
        tercile = np.searchsorted(edges, means[:, column], side="right")
        for stratum in range(9):
            assert len(set(tercile[ids == stratum])) == 1


def test_tied_values_share_a_stratum():
    means = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2], dtype=float)[:, None]  # a discrete feature
    ids = strata(means, 5)
    assert len(set(ids[:6])) == 1 and len(set(ids[6:8])) == 1 and len(set(ids[8:])) == 1
    assert len(set(ids)) == 3


def test_strata_refuse_a_stratum_of_one_series_and_say_which():
    means = np.column_stack([np.arange(12.0), np.arange(12.0)[::-1] % 5])
    with pytest.raises(InvalidParameterError, match=r"strata: .* holds 1 of 12 series") as error:
        strata(means, 3, condition_names=["price", "volume"])
    assert error.value.parameter == "strata"
    assert "price in bin" in str(error.value) and "volume in bin" in str(error.value)
    assert "--strata" in str(error.value) and "--condition-on" in str(error.value)


@pytest.mark.parametrize("n_bins", [0, -1, 2.5, True])
def test_strata_refuse_a_bad_number_of_bins(n_bins):
    with pytest.raises(InvalidParameterError, match="strata: must be a positive integer"):
        strata(np.zeros((10, 1)), n_bins)


def test_strata_refuse_non_finite_means():
    means = np.zeros((10, 2))
    means[3, 1] = np.nan
    with pytest.raises(InvalidParameterError, match="condition_on: the mean of b in series 3 must be finite"):
        strata(means, 2, condition_names=["a", "b"])


def test_per_series_means_average_each_conditioning_feature_over_time():
    sample = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_allclose(per_series_means(sample, [3, 1]), sample.mean(axis=1)[:, [3, 1]])


STRATA_IDS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 2, 1, 5, 5])


def test_donors_are_a_permutation_within_each_stratum():
    for seed in range(20):
        donors = conditional_permutation((seed, 7), STRATA_IDS)
        assert donors.dtype == np.int64
        assert sorted(donors) == list(range(len(STRATA_IDS)))  # a bijection
        np.testing.assert_array_equal(STRATA_IDS[donors], STRATA_IDS)  # from the same stratum


def test_donors_are_a_pure_function_of_the_key():
    first = conditional_permutation((3, 11), STRATA_IDS)
    np.testing.assert_array_equal(first, conditional_permutation((3, 11), STRATA_IDS.copy()))
    assert not np.array_equal(first, conditional_permutation((3, 12), STRATA_IDS))
    assert not np.array_equal(first, conditional_permutation((4, 11), STRATA_IDS))


def test_donors_are_uniform_within_a_stratum():
    ids = np.array([0, 1, 0, 1, 0, 0, 1])  # stratum 0: series 0, 2, 4, 5
    members = np.flatnonzero(ids == 0)
    counts = {}
    n_keys = 4800
    for seed in range(n_keys):
        donors = tuple(conditional_permutation((seed, 1), ids)[members])
        counts[donors] = counts.get(donors, 0) + 1
    assert len(counts) == 24  # every permutation of 4 series occurs
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3  # 200 expected each


def test_refuses_strata_ids_that_are_not_one_integer_per_series():
    with pytest.raises(InvalidParameterError, match="strata_ids"):
        conditional_permutation((0, 0), np.zeros((3, 2), dtype=int))


# The intended use, with a numpy "model" on series (series, time, 2 features):
# the prediction is the mean over time of feature 0; labels add a little noise.
N_SERIES, N_STEPS, N_REPEATS = 2000, 6, 30


def model(sample):
    return sample[:, :, 0].mean(axis=1)


def make_sample(rng, correlated):
    level = rng.normal(size=(N_SERIES, 2))
    if correlated:  # both features follow one level per series: correlation of the series means ~0.99
        level[:, 1] = level[:, 0] + 0.1 * rng.normal(size=N_SERIES)
    sample = level[:, None, :] + 0.1 * rng.normal(size=(N_SERIES, N_STEPS, 2))
    labels = model(sample) + 0.1 * rng.normal(size=N_SERIES)
    return sample, labels


def mse_increases(sample, labels, donors_of_repeat):
    """Increase of the MSE when feature 0 takes the donors' trajectories, one value per repeat."""
    baseline = np.mean((model(sample) - labels) ** 2)
    increases = []
    for repeat in range(N_REPEATS):
        perturbed = sample.copy()
        perturbed[:, :, 0] = sample[donors_of_repeat(repeat), :, 0]
        increases.append(np.mean((model(perturbed) - labels) ** 2) - baseline)
    return np.array(increases)


def marginal_and_conditional(correlated, n_bins):
    sample, labels = make_sample(np.random.default_rng(5), correlated)
    ids = strata(per_series_means(sample, [1]), n_bins, condition_names=["x1"])
    marginal = mse_increases(
        sample, labels, lambda r: np.random.Generator(np.random.Philox(key=[r, 0])).permutation(N_SERIES))
    conditional = mse_increases(sample, labels, lambda r: conditional_permutation((r, 1), ids))
    return marginal, conditional


def test_conditional_importance_of_a_feature_with_a_correlated_twin_is_small():
    marginal, conditional = marginal_and_conditional(correlated=True, n_bins=20)
    assert marginal.mean() > 1.5  # ~2 var(level): the model's only input
    assert 0 < conditional.mean() < 0.1 * marginal.mean()


def test_with_independent_features_conditional_and_marginal_importance_agree():
    marginal, conditional = marginal_and_conditional(correlated=False, n_bins=5)
    welch = stats.ttest_ind(marginal, conditional, equal_var=False)
    low, high = welch.confidence_interval(0.99)
    assert low < 0 < high
    assert abs(conditional.mean() - marginal.mean()) < 0.05 * marginal.mean()
