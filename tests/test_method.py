"""The method on hand-computable models: numpy forward functions, no TensorFlow."""

import math

import numpy as np
import pytest

from rnnimp.errors import InvalidParameterError
from rnnimp.method import Layout, ShardEvaluator, plan_units, rms_effect
from rnnimp.perturb import sample_noise


def linear_forward(weights):
    """y[s, t] = sum_f w_f x[s, t, f]; outputs (batch, time)."""
    weights = np.asarray(weights, dtype=np.float32)
    return lambda batch: batch @ weights


def effects_by_plan(forward, sample, layout, n_repeats=3, seed=0, scale=0.5):
    n_samples, time_steps, n_features = sample.shape
    evaluator = ShardEvaluator(forward, layout.batch_size, time_steps, n_features)
    baselines = {shard.index: evaluator.predict(sample, shard) for shard in layout.shards}
    units = plan_units(seed, [(f,) for f in range(n_features)], n_repeats, layout.shards)
    sums = {}
    for unit in units:
        sums.setdefault((unit.target, unit.repeat), []).append(
            evaluator.squared_change_sums(sample, baselines[unit.shard.index], unit, scale))
    n_values = n_samples * time_steps
    return np.array([[rms_effect(sums[f, r], n_values) for r in range(n_repeats)] for f in range(n_features)]), units


def test_rms_effect_on_hand_computed_sums():
    assert rms_effect([np.array([3.0]), np.array([5.0, 0.0])], 4) == pytest.approx(math.sqrt(2.0))
    assert rms_effect([np.zeros(3)], 10) == 0.0


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
    assert predictions.shape == (10, 3) and (predictions == 2).all()
    assert set(calls) == {(4, 3, 2)}  # always the same batch shape


def test_layout_rules():
    assert Layout.for_sample(250, 4096, 65536) == Layout(250, 250, 250)
    assert [(s.start, s.stop) for s in Layout.for_sample(10, 4, 8).shards] == [(0, 8), (8, 10)]
    with pytest.raises(InvalidParameterError, match="shard_size: must be a multiple of batch_size"):
        Layout.for_sample(100, 16, 20)


def test_plan_covers_every_feature_repeat_and_shard_once():
    shards = Layout.for_sample(10, 4, 4).shards
    units = plan_units(0, [(0,), (1,), (2,)], 5, shards)
    assert len(units) == 3 * 5 * 3
    assert len({(u.target, u.repeat, u.shard.index) for u in units}) == len(units)
    assert len({u.key for u in units}) == 3 * 5  # one noise stream per (feature, repeat)
