"""Coverage of the 95% intervals by simulation, on a linear model whose mean effect is known exactly.

The model: y[s, t] = Σ_f w_f·x[s, t, f], perturbed on feature f with N(0, s²)
noise on its n×T values. Every output changes by w_f·s·z, so the RMS effect
is |w_f|·s·sqrt(χ²_k / k) with k = n·T, whose exact mean is
|w_f|·s·sqrt(2/k)·Γ((k+1)/2)/Γ(k/2). An experiment is 30 repeats of that
effect; an interval covers if it holds the exact mean.

Two simulations:

- effects drawn from their exact law (cheap, 2,000 experiments): the
  bootstrap intervals are compared with and without Hesterberg's expansion
  on the same experiments and the same resamples;
- effects computed by rnnimp's own pipeline (perturbation, ShardEvaluator,
  effect, summarize) on a numpy forward pass: what a run reports.

A coverage band alone would hardly tell a correct interval (95%) from one a
little too narrow (93.5%) at these sizes, so the narrow mistakes are caught
by comparing each interval with its unexpanded (or z) counterpart on the
same experiments, and the band catches gross ones.
"""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import gammaln

from rnnimp.method import Layout, Metric, ShardEvaluator, Target, effect, plan_units
from rnnimp.perturb import Perturbation
from rnnimp.stats import INTERVAL_METHODS, intervals, summarize

WEIGHT, SCALE = -2.0, 0.2
SERIES, STEPS = 250, 10  # the reference experiment's evaluation sample
EXPERIMENTS, REPEATS = 2000, 30
BOOTSTRAP_SEED = 7
SCIPY_METHOD = {"percentile": "percentile", "bca": "BCa"}


def exact_mean_effect(weight: float, scale: float, k: int) -> float:
    """E[|w|·s·sqrt(χ²_k / k)]."""
    return abs(weight) * scale * np.sqrt(2.0 / k) * np.exp(gammaln((k + 1) / 2) - gammaln(k / 2))


def simulated_effects(rng: np.random.Generator, weight: float, scale: float, k: int, shape) -> np.ndarray:
    """Effects of the linear model, drawn from their exact distribution; ``shape`` (experiments, repeats)."""
    return abs(weight) * scale * np.sqrt(rng.chisquare(k, size=shape) / k)


def linear_model_effects(rng: np.random.Generator, weight: float, scale: float, series: int, steps: int,
                         repeats: int) -> np.ndarray:
    """Effects (repeats,) of y = w·x[:, :, 0] computed the long way: perturb, predict, RMS change."""
    sample = rng.random((series, steps, 2))
    perturbed = np.repeat(sample[None], repeats, axis=0)  # (repeats, series, steps, features)
    perturbed[..., 0] += scale * rng.standard_normal((repeats, series, steps))
    change = weight * perturbed[..., 0] - weight * sample[None, :, :, 0]
    return np.sqrt(np.mean(change**2, axis=(1, 2)))


def coverage(low: np.ndarray, high: np.ndarray, truth) -> np.ndarray:
    """Whether each interval holds ``truth``: bool, shape of ``low``."""
    return (low <= truth) & (truth <= high)


def hesterberg_width_factor(n: int, confidence: float) -> float:
    """How much wider the expanded interval of a normal-shaped bootstrap distribution is than the nominal one:
    z at the expanded level over z at the nominal level, i.e. sqrt(n/(n-1))·t_{n-1} / z."""
    upper = 0.5 + confidence / 2
    return float(np.sqrt(n / (n - 1)) * scipy_stats.t.ppf(upper, n - 1) / scipy_stats.norm.ppf(upper))


def test_the_exact_mean_is_the_mean_of_the_linear_models_effects():
    k = 3 * 4
    effects = linear_model_effects(np.random.default_rng(1), WEIGHT, SCALE, 3, 4, 20000)
    standard_error = effects.std(ddof=1) / np.sqrt(len(effects))
    assert abs(effects.mean() - exact_mean_effect(WEIGHT, SCALE, k)) < 4 * standard_error
    assert exact_mean_effect(WEIGHT, SCALE, k) < abs(WEIGHT) * SCALE  # Jensen: E sqrt < sqrt E
    drawn = simulated_effects(np.random.default_rng(2), WEIGHT, SCALE, k, (20000,))
    assert abs(drawn.mean() - effects.mean()) < 6 * standard_error


@pytest.fixture(scope="module")
def experiments():
    k = SERIES * STEPS
    effects = simulated_effects(np.random.default_rng(20261125), WEIGHT, SCALE, k, (EXPERIMENTS, REPEATS))
    return effects, exact_mean_effect(WEIGHT, SCALE, k)


@pytest.fixture(scope="module")
def bounds(experiments):
    """rnnimp's 95% intervals of every experiment, per method (9999 resamples, as in a run)."""
    effects, _ = experiments
    return {method: intervals(effects, 0.95, method, np.random.default_rng(BOOTSTRAP_SEED))
            for method in INTERVAL_METHODS}


@pytest.fixture(scope="module")
def unexpanded(experiments):
    """Plain scipy bootstrap intervals at the nominal 95%, on the very resamples rnnimp draws: {method: (low, high)}."""
    effects, _ = experiments
    options = dict(confidence_level=0.95, vectorized=True, axis=-1, batch=(1 << 22) // effects.size)
    percentile = scipy_stats.bootstrap((effects,), np.mean, method="percentile", n_resamples=9999,
                                       rng=np.random.default_rng(BOOTSTRAP_SEED), **options)
    bca = scipy_stats.bootstrap((effects,), np.mean, method="BCa", n_resamples=0, bootstrap_result=percentile,
                                rng=np.random.default_rng(BOOTSTRAP_SEED), **options)
    return {method: (np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high))
            for method, result in (("percentile", percentile), ("bca", bca))}


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_95_percent_intervals_cover_the_exact_mean_effect(experiments, bounds, method):
    _, truth = experiments
    covered = float(np.mean(coverage(bounds[method].low, bounds[method].high, truth)))
    fallbacks = int(np.sum(bounds[method].method != method))
    print(f"coverage {method}: {covered:.4f} over {EXPERIMENTS} experiments of {REPEATS} repeats "
          f"(Monte Carlo s.e. {np.sqrt(0.95 * 0.05 / EXPERIMENTS):.4f}), fallbacks {fallbacks}")
    assert fallbacks == 0
    assert 0.93 <= covered <= 0.97


# Plain percentile and BCa intervals of a mean of 30 values cover only about 93.5% (narrowness bias);
# rnnimp.stats expands their level (Hesterberg). On the same experiments and resamples, the expanded
# interval holds the plain one, is wider by Hesterberg's factor, and covers the truth more often.
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_the_expansion_widens_bootstrap_intervals_by_hesterbergs_factor_and_restores_coverage(
        experiments, bounds, unexpanded, method):
    _, truth = experiments
    low, high = bounds[method].low, bounds[method].high
    plain_low, plain_high = unexpanded[method]
    assert np.all((low <= plain_low) & (plain_high <= high))
    widening = float(np.median((high - low) / (plain_high - plain_low)))
    expected = hesterberg_width_factor(REPEATS, 0.95)  # 1.0613; 1.0435 without sqrt(n/(n-1)), 1.017 with z for t
    assert widening == pytest.approx(expected, abs=0.005)
    with_expansion = int(coverage(low, high, truth).sum())
    without = int(coverage(plain_low, plain_high, truth).sum())
    print(f"{method}: {with_expansion} of {EXPERIMENTS} covered, {without} without the expansion; "
          f"median widening {widening:.4f} (expected {expected:.4f})")
    assert without < 0.94 * EXPERIMENTS  # the narrowness the expansion corrects (about 93.5% in general)
    assert with_expansion - without >= 0.005 * EXPERIMENTS  # 10 of 2000; about 30 here (none without it)


# Through rnnimp's pipeline: a numpy forward pass y = x @ w on a small sample (the effect does not depend
# on x), rnnimp's counter-based noise, ShardEvaluator.unit_sums, effect() and summarize(). Each experiment
# has its own seed; its 4 features are independent rows.
PIPELINE_WEIGHTS = np.array([0.5, -2.0, 1.0, 3.0], dtype=np.float32)
PIPELINE_SERIES, PIPELINE_STEPS = 20, 5
PIPELINE_EXPERIMENTS = 400


def pipeline_effects(seed: int, n_repeats: int) -> np.ndarray:
    """Effects (features, repeats) of one seeded experiment on the linear model, computed as rnnimp computes them."""
    n_features = len(PIPELINE_WEIGHTS)
    sample = np.random.default_rng(0).random((PIPELINE_SERIES, PIPELINE_STEPS, n_features), dtype=np.float32)
    layout = Layout.for_sample(PIPELINE_SERIES, 8, 16)  # two shards, the last batch padded
    evaluator = ShardEvaluator(lambda batch: batch @ PIPELINE_WEIGHTS, layout.batch_size, PIPELINE_STEPS, n_features)
    baselines = [evaluator.predict(sample, shard) for shard in layout.shards]
    perturbation, metric = Perturbation("noise", scales=(SCALE,) * n_features), Metric("rms")
    targets = [Target(f"x{f}", (f,)) for f in range(n_features)]
    sums: dict[tuple[int, int], list] = {}
    for unit in plan_units(seed, targets, range(n_repeats), layout.shards):
        sums.setdefault((unit.target, unit.repeat), []).append(
            evaluator.unit_sums(sample, baselines[unit.shard.index], None, unit, perturbation, metric))
    effects = np.empty((n_features, n_repeats))
    for (target, repeat), pieces in sums.items():
        effects[target, repeat] = effect(pieces, metric)
    return effects


def test_pipeline_effects_have_the_exact_mean():
    effects = pipeline_effects(seed=1, n_repeats=2000)
    truth = exact_mean_effect(1.0, SCALE, PIPELINE_SERIES * PIPELINE_STEPS) * np.abs(PIPELINE_WEIGHTS)
    standard_error = effects.std(axis=1, ddof=1) / np.sqrt(effects.shape[1])
    assert np.all(np.abs(effects.mean(axis=1) - truth) < 4 * standard_error)
    # sqrt(χ²_k/k) has variance 1 - (E sqrt(χ²_k/k))² ≈ 1/(2k): the noise is N(0, SCALE²), nothing more.
    expected_std = np.abs(PIPELINE_WEIGHTS) * SCALE * np.sqrt(1 - (truth / (np.abs(PIPELINE_WEIGHTS) * SCALE)) ** 2)
    np.testing.assert_allclose(effects.std(axis=1, ddof=1), expected_std, rtol=0.1)


PIPELINE_RESAMPLES = 2000


@pytest.fixture(scope="module")
def pipeline_experiments():
    """Effects through rnnimp's pipeline (experiments × features, 30 repeats), their exact means, and per
    interval method: rnnimp's bounds and the same interval without the expansion (bootstrap: scipy's at the
    nominal level on the resamples rnnimp draws) or with the normal quantile instead of Student's (t)."""
    effects = np.concatenate([pipeline_effects(seed, REPEATS) for seed in range(PIPELINE_EXPERIMENTS)])
    truth = np.tile(exact_mean_effect(1.0, SCALE, PIPELINE_SERIES * PIPELINE_STEPS) * np.abs(PIPELINE_WEIGHTS),
                    PIPELINE_EXPERIMENTS)
    summaries = {interval: summarize(effects, 0.95, np.random.default_rng(BOOTSTRAP_SEED), interval=interval,
                                     n_resamples=PIPELINE_RESAMPLES)
                 for interval in ("bca", "percentile")}
    t_summary = summaries["bca"]
    half = scipy_stats.norm.ppf(0.975) * t_summary.std / np.sqrt(REPEATS)
    compared = {"t": (t_summary.t_low, t_summary.t_high, t_summary.mean - half, t_summary.mean + half)}
    options = dict(confidence_level=0.95, vectorized=True, axis=-1, batch=(1 << 22) // effects.size)
    plain = scipy_stats.bootstrap((effects,), np.mean, method="percentile", n_resamples=PIPELINE_RESAMPLES,
                                  rng=np.random.default_rng(BOOTSTRAP_SEED), **options)
    plain_bca = scipy_stats.bootstrap((effects,), np.mean, method="BCa", n_resamples=0, bootstrap_result=plain,
                                      rng=np.random.default_rng(BOOTSTRAP_SEED), **options)
    for method, result in (("percentile", plain), ("bca", plain_bca)):
        summary = summaries[method]
        assert list(summary.bootstrap_method) == [method] * len(effects)
        compared[method] = (summary.bootstrap_low, summary.bootstrap_high,
                            result.confidence_interval.low, result.confidence_interval.high)
    return truth, compared


@pytest.mark.parametrize("method", INTERVAL_METHODS)
def test_pipeline_intervals_cover_the_exact_mean_effect(pipeline_experiments, method):
    truth, compared = pipeline_experiments
    low, high, plain_low, plain_high = compared[method]
    rows = len(truth)
    covered = int(coverage(low, high, truth).sum())
    covered_plain = int(coverage(plain_low, plain_high, truth).sum())
    print(f"pipeline coverage {method}: {covered / rows:.4f} of {rows} rows "
          f"({covered_plain / rows:.4f} {'with z' if method == 't' else 'unexpanded'})")
    assert 0.93 * rows <= covered <= 0.97 * rows  # half the width would cover about 70%
    assert np.all((low <= plain_low) & (plain_high <= high))
    # Every truth the plain interval holds, this one holds, and more: about 1% of rows (none if it were plain).
    assert covered - covered_plain >= 0.0025 * rows
