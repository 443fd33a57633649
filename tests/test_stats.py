import numpy as np
import pytest

from rnnimp.stats import bootstrap_interval, rank_descending, summarize, t_interval


def test_t_interval_matches_the_textbook_formula():
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    mean, sd, n = 3.2, np.sqrt(3.7), 5
    t_975_df4 = 2.7764451051977987  # tables: t_{0.975, 4}
    low, high = t_interval(values, 0.95)
    assert low == pytest.approx(mean - t_975_df4 * sd / np.sqrt(n), rel=1e-12)
    assert high == pytest.approx(mean + t_975_df4 * sd / np.sqrt(n), rel=1e-12)


def test_t_interval_of_constant_values_is_a_point():
    assert t_interval(np.full(4, 0.5), 0.9) == (0.5, 0.5)


def test_bootstrap_percentile_interval_matches_a_plain_resampling_at_the_expanded_level():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, size=40)
    low, high = bootstrap_interval(values, 0.9, np.random.default_rng(1), n_resamples=20000)
    means = values[rng.integers(0, 40, size=(20000, 40))].mean(axis=1)
    # Hesterberg's expanded level: 2 Phi(sqrt(n/(n-1)) t_{n-1, 0.95}) - 1 for n = 40
    from scipy import stats

    level = 2 * stats.norm.cdf(np.sqrt(40 / 39) * stats.t.ppf(0.95, 39)) - 1
    assert 0.91 < level < 0.915
    ref_low, ref_high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    assert low == pytest.approx(ref_low, abs=0.02)
    assert high == pytest.approx(ref_high, abs=0.02)


def test_rank_one_is_the_largest_mean():
    np.testing.assert_array_equal(rank_descending(np.array([0.1, 0.3, 0.01, 0.3])), [3, 1, 4, 1])


def test_summarize_shapes_and_values():
    effects = np.array([[1.0, 2.0, 3.0], [0.1, 0.1, 0.4]])
    summary = summarize(effects, 0.95, np.random.default_rng(0))
    np.testing.assert_allclose(summary.mean, [2.0, 0.2])
    np.testing.assert_allclose(summary.std, [1.0, np.std([0.1, 0.1, 0.4], ddof=1)])
    np.testing.assert_array_equal(summary.n_repeats, [3, 3])
    np.testing.assert_array_equal(summary.rank, [1, 2])
    assert (summary.t_low < summary.mean).all() and (summary.mean < summary.t_high).all()
    assert (summary.bootstrap_low <= summary.mean).all() and (summary.mean <= summary.bootstrap_high).all()
