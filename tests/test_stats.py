import math

import numpy as np
import pytest

from rnnimp.stats import expanded_confidence, interval, rank_descending, summarize

T_975_DF4 = 2.7764451051977987  # tables: t_{0.975, 4}
T_975_DF29 = 2.0452296421327034  # tables: t_{0.975, 29}
T_950_DF39 = 1.6848751217112248  # tables: t_{0.95, 39}


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_t_interval_matches_the_textbook_formula():
    values = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    mean, sd, n = 3.2, np.sqrt(3.7), 5
    low, high, used = interval(values, 0.95, "t")
    assert low == pytest.approx(mean - T_975_DF4 * sd / np.sqrt(n), rel=1e-12)
    assert high == pytest.approx(mean + T_975_DF4 * sd / np.sqrt(n), rel=1e-12)
    assert used == "t"


def test_t_interval_of_constant_values_is_a_point():
    assert interval(np.full(4, 0.5), 0.9, "t") == (0.5, 0.5, "t")


def test_expanded_level_of_30_repeats_at_95_percent():
    # Hesterberg: 2 Φ(sqrt(n/(n-1)) t_{n-1, (1+c)/2}) - 1, here from the t table and math.erf, not scipy.
    by_hand = 2 * normal_cdf(math.sqrt(30 / 29) * T_975_DF29) - 1
    assert by_hand == pytest.approx(0.96249219944356, abs=1e-13)
    assert expanded_confidence(0.95, 30) == pytest.approx(by_hand, abs=1e-12)
    assert expanded_confidence(0.9, 40) == pytest.approx(2 * normal_cdf(math.sqrt(40 / 39) * T_950_DF39) - 1,
                                                         abs=1e-12)


def test_bootstrap_percentile_interval_matches_a_plain_resampling_at_the_expanded_level():
    # The nominal 90% percentile interval of n = 40 values leaves 5% of resampled means on each side; at
    # Hesterberg's level (0.9121) it leaves 4.40%. The share of an independent plain resampling of the
    # means outside rnnimp's bounds must be 4.40% ± 0.2% per side (Monte Carlo s.e. about 0.07%), far
    # from the 5% of an unexpanded interval.
    n, resamples = 40, 200_000
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, size=n)
    low, high, used = interval(values, 0.9, "percentile", np.random.default_rng(1), n_resamples=resamples)
    assert used == "percentile"
    means = values[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - (2 * normal_cdf(math.sqrt(n / (n - 1)) * T_950_DF39) - 1)) / 2
    assert tail == pytest.approx(0.0440, abs=1e-4)
    assert np.mean(means < low) == pytest.approx(tail, abs=0.002)
    assert np.mean(means > high) == pytest.approx(tail, abs=0.002)


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
