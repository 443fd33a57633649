"""The method on hand-computable models: numpy forward functions, no TensorFlow."""

import math

import numpy as np
import pytest

from rnnimp.errors import InvalidParameterError
from rnnimp.method import Layout, Metric, ShardEvaluator, Target, effect, plan_units
from rnnimp.perturb import Perturbation, sample_noise

RMS = Metric("rms")


def noise(scale, n_features):
    return Perturbation("noise", scales=(scale,) * n_features)


def linear_forward(weights):
    """y[s, t] = sum_f w_f x[s, t, f]; outputs (batch, time)."""
    weights = np.asarray(weights, dtype=np.float32)
    return lambda batch: batch @ weights


def effects_by_plan(forward, sample, layout, n_repeats=3, seed=0, scale=0.5, perturbation=None,
                    metric=RMS, labels=None, resample=False):
    n_samples, time_steps, n_features = sample.shape
    perturbation = perturbation or noise(scale, n_features)
    evaluator = ShardEvaluator(forward, layout.batch_size, time_steps, n_features)
    baselines = [evaluator.predict(sample, shard) for shard in layout.shards]
    targets = [Target(f"x{f}", (f,)) for f in range(n_features)]
    units = plan_units(seed, targets, range(n_repeats), layout.shards, resample=resample)
    sums = {}
    for unit in units:
        sums.setdefault((unit.target, unit.repeat), []).append(
            evaluator.unit_sums(sample, baselines[unit.shard.index], labels, unit, perturbation, metric))
    return np.array([[effect(sums[f, r], metric) for r in range(n_repeats)] for f in range(n_features)]), units


def test_effect_on_hand_computed_sums():
    assert effect([np.array([[3.0, 2.0]]), np.array([[5.0, 1.0], [0.0, 1.0]])], RMS) == pytest.approx(math.sqrt(2.0))
    assert effect([np.zeros((3, 2)) + [0.0, 1.0]], RMS) == 0.0
    assert effect([np.array([[3.0, 2.0]])], Metric("mae")) == 1.5


def test_linear_model_effect_is_weight_times_noise_rms():
    rng = np.random.default_rng(0)
    sample = rng.random((100, 6, 3), dtype=np.float32)
    weights = [2.0, -0.5, 0.0]
    effects, units = effects_by_plan(linear_forward(weights), sample, Layout.for_sample(100, 32, 64))
    for unit in units:
        if unit.shard.index:
            continue
        noise = sample_noise(unit.key, 0, 100, 6)
        expected = abs(weights[unit.target]) * 0.5 * np.sqrt(np.mean(noise**2))
        assert effects[unit.target, unit.repeat] == pytest.approx(expected, rel=1e-5)
    assert (effects[2] == 0).all()  # a feature the model ignores has exactly no effect


def test_effects_are_identical_across_shard_sizes():
    rng = np.random.default_rng(2)
    sample = rng.random((250, 5, 2), dtype=np.float32)
    forward = linear_forward([1.0, 3.0])
    reference, _ = effects_by_plan(forward, sample, Layout.for_sample(250, 16, 250))
    for shard_size in (16, 48, 112):
        effects, _ = effects_by_plan(forward, sample, Layout.for_sample(250, 16, shard_size))
        np.testing.assert_array_equal(effects, reference)


def test_sharded_sample_matches_the_unsharded_computation_on_the_same_noise():
    rng = np.random.default_rng(3)
    sample = rng.random((70, 4, 2), dtype=np.float32)
    forward = linear_forward([1.5, 0.25])
    effects, units = effects_by_plan(forward, sample, Layout.for_sample(70, 8, 16), n_repeats=2)
    for unit in units[:1]:
        noise = sample_noise(unit.key, 0, 70, 4)
        perturbed = sample.copy()
        perturbed[:, :, unit.target] += (0.5 * noise[:, :, 0]).astype(np.float32)
        change = forward(perturbed).astype(np.float64) - forward(sample)
        assert effects[unit.target, unit.repeat] == pytest.approx(np.sqrt(np.mean(change**2)), rel=1e-9)


def test_the_last_batch_is_padded_and_its_padding_ignored():
    calls = []

    def forward(batch):
        calls.append(batch.shape)
        return batch.sum(axis=2)

    sample = np.ones((10, 3, 2), dtype=np.float32)
    layout = Layout.for_sample(10, 4, 8)
    evaluator = ShardEvaluator(forward, layout.batch_size, 3, 2)
    predictions = np.concatenate([evaluator.predict(sample, shard) for shard in layout.shards])
    assert predictions.dtype == np.float32
    assert predictions.shape == (10, 3) and (predictions == 2).all()
    assert set(calls) == {(4, 3, 2)}  # always the same batch shape


def test_layout_rules():
    assert Layout.for_sample(250, 4096, 65536) == Layout(250, 250, 250)
    assert [(s.start, s.stop) for s in Layout.for_sample(10, 4, 8).shards] == [(0, 8), (8, 10)]
    with pytest.raises(InvalidParameterError, match="shard_size: must be a multiple of batch_size"):
        Layout.for_sample(100, 16, 20)


def test_plan_covers_every_feature_repeat_and_shard_once():
    shards = Layout.for_sample(10, 4, 4).shards
    units = plan_units(0, [Target(n, (i,)) for i, n in enumerate("abc")], range(5), shards)
    assert len(units) == 3 * 5 * 3
    assert len({(u.target, u.repeat, u.shard.index) for u in units}) == len(units)
    assert len({u.key for u in units}) == 3 * 5  # one noise stream per (feature, repeat)


# ---- every perturbation and metric against an answer worked out by hand -------------------------------

W = np.array([2.0, -0.5, 0.0], dtype=np.float32)


@pytest.fixture
def sample():
    return np.random.default_rng(5).random((90, 4, 3), dtype=np.float32)


def one_unit(units, target=0, repeat=0):
    return next(u for u in units if u.target == target and u.repeat == repeat)


def test_permute_known_answer(sample):
    from rnnimp.perturb import permutation

    effects, units = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32),
                                     perturbation=Perturbation("permute"))
    unit = one_unit(units, 0, 1)
    donors = permutation(unit.key, 90)
    change = W[0] * (sample[donors, :, 0].astype(np.float64) - sample[:, :, 0])
    assert effects[0, 1] == pytest.approx(np.sqrt(np.mean(change**2)), rel=1e-5)
    assert (effects[2] == 0).all()
    assert len(set(effects[0])) == 3  # every repeat draws a new permutation


def test_ablate_mean_known_answer_is_weight_times_std(sample):
    means = sample.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    effects, _ = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32),
                                 perturbation=Perturbation("ablate", values=tuple(means)))
    stds = sample.reshape(-1, 3).std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(effects[:, 0], np.abs(W) * stds, rtol=1e-5, atol=1e-9)
    assert (effects == effects[:, :1]).all()  # deterministic: every repeat equal


def test_mae_known_answer(sample):
    effects, units = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32), metric=Metric("mae"))
    unit = one_unit(units, 1, 2)
    z = sample_noise(unit.key, 0, 90, 4)
    assert effects[1, 2] == pytest.approx(0.5 * 0.5 * np.mean(np.abs(z)), rel=1e-5)


def test_mse_loss_increase_of_a_perfect_model_is_the_squared_rms(sample):
    labels = linear_forward(W)(sample).astype(np.float32)
    increase, _ = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32),
                                  metric=Metric("loss-increase", "mse"), labels=labels)
    rms, _ = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32))
    np.testing.assert_allclose(increase, rms**2, rtol=1e-4, atol=1e-12)


def test_bce_loss_increase_known_answer(sample):
    def forward(batch):
        return 1.0 / (1.0 + np.exp(-(batch @ W)))

    labels = (np.random.default_rng(1).random((90, 4)) > 0.5).astype(np.float32)
    effects, units = effects_by_plan(forward, sample, Layout.for_sample(90, 16, 32),
                                     metric=Metric("loss-increase", "binary-crossentropy"), labels=labels)
    unit = one_unit(units, 0, 0)
    perturbed = sample.copy()
    perturbed[:, :, 0] += (0.5 * sample_noise(unit.key, 0, 90, 4)[:, :, 0]).astype(np.float32)

    def bce(p):
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))

    assert effects[0, 0] == pytest.approx(np.mean(bce(forward(perturbed)) - bce(forward(sample))), rel=1e-4)


def test_group_is_perturbed_jointly(sample):
    layout = Layout.for_sample(90, 16, 32)
    evaluator = ShardEvaluator(linear_forward(W), layout.batch_size, 4, 3)
    baselines = [evaluator.predict(sample, s) for s in layout.shards]
    (unit, *rest) = plan_units(3, [Target("g", (0, 1))], range(1), layout.shards)
    sums = [evaluator.unit_sums(sample, baselines[u.shard.index], None, u, noise(0.5, 3), RMS) for u in [unit, *rest]]
    z = sample_noise(unit.key, 0, 90, 4, n_features=2)
    change = 0.5 * (W[0] * z[:, :, 0] + W[1] * z[:, :, 1])
    assert effect(sums, RMS) == pytest.approx(np.sqrt(np.mean(change**2)), rel=1e-5)


def test_per_step_map_of_a_lagged_model():
    # y[s, t] = x[s, t-1, 0]: perturbing step t of feature 0 moves output t+1 only.
    def forward(batch):
        out = np.zeros(batch.shape[:2], dtype=np.float32)
        out[:, 1:] = batch[:, :-1, 0]
        return out

    sample = np.random.default_rng(2).random((40, 5, 2), dtype=np.float32)
    layout = Layout.for_sample(40, 8, 16)
    evaluator = ShardEvaluator(forward, layout.batch_size, 5, 2)
    baselines = [evaluator.predict(sample, s) for s in layout.shards]
    targets = [Target("a", (0,)), Target("b", (1,))]
    units = plan_units(0, targets, range(2), layout.shards, steps=range(5))
    sums = {}
    for unit in units:
        sums.setdefault((unit.target, unit.step, unit.repeat), []).append(
            evaluator.unit_sums(sample, baselines[unit.shard.index], None, unit, noise(1.0, 2), RMS))
    effects = np.array([[effect(sums[t, s, 0], RMS) for s in range(5)] for t in range(2)])
    assert (effects[1] == 0).all() and effects[0, 4] == 0
    assert (effects[0, :4] > 0.2).all()  # one of 5 outputs moves by N(0, 1): RMS about 1/sqrt(5)
    unit = next(u for u in units if (u.target, u.step, u.repeat) == (0, 2, 0))
    z = sample_noise(unit.key, 0, 40, 1)[:, 0, 0]
    assert effects[0, 2] == pytest.approx(np.sqrt(np.sum(z**2) / (40 * 5)), rel=1e-5)


def test_resampled_effect_weights_series_by_poisson_counts(sample):
    from rnnimp.perturb import bootstrap_weights

    effects, units = effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 16, 32), resample=True)
    unit = one_unit(units, 0, 1)
    weights = bootstrap_weights(unit.resample, 0, 90)
    change = W[0] * 0.5 * sample_noise(unit.key, 0, 90, 4)[:, :, 0]
    expected = np.sqrt(np.sum(weights[:, None] * change**2) / (weights.sum() * 4))
    assert effects[0, 1] == pytest.approx(expected, rel=1e-5)
    assert set(np.unique(weights)) <= set(range(10)) and 0.8 < weights.mean() < 1.2


@pytest.mark.parametrize("kind", ["noise", "permute", "ablate"])
@pytest.mark.parametrize("resample", [False, True])
def test_every_perturbation_is_identical_across_shard_sizes(sample, kind, resample):
    perturbation = {"noise": noise(0.3, 3), "permute": Perturbation("permute"),
                    "ablate": Perturbation("ablate", values=(0.5, 0.5, 0.5))}[kind]
    results = [effects_by_plan(linear_forward(W), sample, Layout.for_sample(90, 8, shard), perturbation=perturbation,
                               resample=resample)[0] for shard in (8, 24, 90)]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


# ---- several units of one shard in one call -------------------------------------------------------------

def test_unit_sums_many_is_each_units_own_sums_whatever_it_is_batched_with(sample):
    from rnnimp.inputs import InputLayout
    from rnnimp.method import Measures

    masked = sample.copy()
    masked[::7, 3:, :] = -1.0  # padded last step of some series: real steps differ per batch row
    layout = Layout.for_sample(90, 16, 48)
    labels = np.random.default_rng(4).random((90, 4)).astype(np.float32)
    segments = np.arange(90) % 3
    measures = Measures((RMS, Metric("mae"), Metric("loss-increase", "mse")), per_output=True,
                        segment_ids=segments, n_segments=3)
    inputs = InputLayout.single(4, 3, mask_value=-1.0)
    targets = [Target("a", (0,)), Target("g", (1, 2))]
    units = plan_units(6, targets, range(3), layout.shards, steps=[None, 1, 3], resample=True)
    for perturbation in (noise(0.5, 3), Perturbation("permute")):
        alone = ShardEvaluator(linear_forward(W), layout.batch_size, inputs=inputs)
        baselines = [alone.predict(masked, shard) for shard in layout.shards]
        expected = {u: alone.unit_sums(masked, baselines[u.shard.index], labels, u, perturbation, RMS,
                                       measures=measures) for u in units}
        together = ShardEvaluator(linear_forward(W), layout.batch_size, inputs=inputs)
        for shard in layout.shards:
            of_shard = [u for u in units if u.shard == shard][::-1]  # another order than the plan's
            sums = together.unit_sums_many(masked, baselines[shard.index], labels, of_shard, perturbation, RMS,
                                           measures=measures)
            assert sums.shape == (len(of_shard), 3, 3 * 3 * 5, 2)  # 3 batches; metrics x segments x (1 + outputs)
            for unit, unit_sums in zip(of_shard, sums):
                assert np.array_equal(unit_sums, expected[unit])
        first = [u for u in units if u.shard.index == 0][:2]
        plain = together.unit_sums_many(masked, baselines[0], None, first, perturbation, RMS)
        assert plain.shape == (2, 3, 2)
        for unit, unit_sums in zip(first, plain):
            assert np.array_equal(unit_sums, alone.unit_sums(masked, baselines[0], None, unit, perturbation, RMS))
    with pytest.raises(ValueError, match="share a shard"):
        together.unit_sums_many(masked, baselines[0], None, [units[0], units[1]], noise(0.5, 3), RMS)
