"""Perturbations, metrics, groups, time-step maps, resampling and adaptive repeats through the API."""

import numpy as np
import pytest

from conftest import linear_lstm_free_model
from rnnimp import InvalidParameterError, sensitivity_importance

WEIGHTS = [1.0, -3.0, 0.0]


@pytest.fixture(scope="module")
def model():
    return linear_lstm_free_model(WEIGHTS, time_steps=4)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((400, 4, 3), dtype=np.float32)


def test_ablate_mean_recovers_weight_times_standard_deviation(model, sample):
    result = sensitivity_importance(model, sample, perturbation="ablate", n_repeats=2)
    expected = np.abs(WEIGHTS) * sample.reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(result.importances_mean, expected, rtol=1e-4, atol=1e-7)
    s = result.summary
    assert ((s.t_low <= expected + 1e-6) & (expected - 1e-6 <= s.t_high)).all()


def test_permute_true_importance_is_in_the_interval(model, sample):
    # For y = w x, swapping a feature between independent series changes y by w (x' - x):
    # expected RMS = |w| sqrt(2) sd(x) when every series gets another series' values.
    result = sensitivity_importance(model, sample, perturbation="permute", n_repeats=20, random_state=3)
    sd = sample.reshape(-1, 3).std(axis=0)
    expected = np.abs(WEIGHTS) * np.sqrt(2.0) * sd
    np.testing.assert_allclose(result.importances_mean[:2], expected[:2], rtol=0.03)
    assert result.importances_mean[2] == 0
    # sklearn's pair: the mean and the (ddof 1) standard deviation of each feature's repeats
    np.testing.assert_allclose(result.importances_mean, result.effects.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result.importances_std, result.effects.std(axis=1, ddof=1), rtol=1e-10)
    assert result.importances_std[2] == 0 and result.importances_std[0] > 0


def test_relative_noise_scales_by_each_features_spread(model):
    rng = np.random.default_rng(1)
    sample = np.stack([rng.normal(0, 1, (300, 4)), rng.normal(0, 10, (300, 4)), rng.normal(0, 1, (300, 4))],
                      axis=2).astype(np.float32)
    result = sensitivity_importance(model, sample, noise_relative=0.1, n_repeats=10)
    sd = sample.reshape(-1, 3).std(axis=0)
    expected = np.abs(WEIGHTS) * 0.1 * sd
    np.testing.assert_allclose(result.importances_mean, expected, rtol=0.05)
    assert result.metadata["configuration"]["scales"] == pytest.approx(list(0.1 * sd), rel=1e-6)


def test_mae_and_mse_loss_increase_known_answers(model, sample):
    mae = sensitivity_importance(model, sample, metric="mae", n_repeats=10)
    # mean |w s z| = |w| s sqrt(2/pi)
    np.testing.assert_allclose(mae.importances_mean, np.abs(WEIGHTS) * 0.2 * np.sqrt(2 / np.pi), rtol=0.03)
    labels = model.predict(sample, verbose=0)  # a perfect model: loss before is 0
    loss = sensitivity_importance(model, sample, metric="loss-increase", loss="mse", y=labels, n_repeats=10)
    np.testing.assert_allclose(loss.importances_mean, (np.abs(WEIGHTS) * 0.2) ** 2, rtol=0.05, atol=1e-9)
    with pytest.raises(InvalidParameterError, match="y: must hold one label per model output"):
        sensitivity_importance(model, sample, metric="loss-increase", y=labels[:, :2], n_repeats=2)


def test_groups_are_extra_rows_with_joint_effect(model, sample):
    result = sensitivity_importance(model, sample, groups={"both": ["x1", 1]}, n_repeats=10)
    assert result.target_names == ["x1", "x2", "x3", "both"]
    assert result.target_features[3] == ["x1", "x2"]
    # independent noise on both: RMS = s sqrt(w1^2 + w2^2)
    assert result.importances_mean[3] == pytest.approx(0.2 * np.sqrt(1 + 9), rel=0.03)
    table = result.summary_table()
    assert table.column("features").to_pylist()[3] == ["x1", "x2"]


def test_per_step_map_shape_and_tables(model, sample):
    result = sensitivity_importance(model, sample, per_step=True, n_repeats=3)
    assert result.effects.shape == (3, 4, 3)
    # the model maps step t to output t: each step carries 1/4 of the whole-series effect squared
    expected = np.broadcast_to(np.abs(WEIGHTS[:2])[:, None] * 0.2 / 2, (2, 4))
    np.testing.assert_allclose(result.importances_mean[:2], expected, rtol=0.1)
    assert (result.importances_mean[2] == 0).all()
    effects = result.effects_table()
    assert effects.num_rows == 3 * 4 * 3 and "step" in effects.column_names
    assert result.summary_table().num_rows == 12


def test_resample_widens_the_interval_to_include_the_choice_of_series(model, sample):
    fixed = sensitivity_importance(model, sample, perturbation="ablate", n_repeats=20)
    resampled = sensitivity_importance(model, sample, perturbation="ablate", n_repeats=20, resample=True)
    assert fixed.summary.std[0] < 1e-12  # ablation is deterministic on a fixed sample
    assert resampled.summary.std[0] > 0
    truth = abs(WEIGHTS[0]) * sample.reshape(-1, 3).std(axis=0)[0]
    assert resampled.summary.t_low[0] < truth < resampled.summary.t_high[0]


def test_adaptive_repeats_stop_at_the_target(model, sample):
    # A half-width of h needs about (t * sd / h)^2 repeats, sd the spread of one repeat's effect
    # (measured by a pilot run: about 0.003 for x1 and 0.012 for x2, so x1 is tight at once).
    pilot = sensitivity_importance(model, sample, n_repeats=40, random_state=1)
    sd = pilot.summary.std
    target = 0.004
    needed = (2.05 * sd[:2] / target) ** 2
    result = sensitivity_importance(model, sample, n_repeats=4, target_halfwidth=target, max_repeats=200,
                                    wave_repeats=2, random_state=1)
    used = result.summary.n_repeats
    met = result.metadata["adaptive"]["met"]
    assert met == [True, True, True]
    for f in (0, 1):
        assert 0.5 * needed[f] <= used[f] <= 2 * needed[f] + 4
    assert used[2] == 4  # x3 has no effect at all: tight at once, no further waves
    assert np.isnan(result.effects[2, 4:]).all()
    assert result.summary_table().column("target_met").to_pylist() == [True, True, True]


def test_adaptive_repeats_stop_at_max_repeats(model, sample):
    result = sensitivity_importance(model, sample, n_repeats=4, target_halfwidth=1e-9, max_repeats=9,
                                    wave_repeats=2)
    assert result.summary.n_repeats.tolist() == [9, 9, 4]
    assert result.metadata["adaptive"]["met"] == [False, False, True]


@pytest.mark.slow
def test_time_step_map_of_a_trained_model_finds_the_planted_lag():
    """Target y[t] = x1[t-2]: a trained model's map lights up x1 two steps before each output, nothing else."""
    import keras

    from rnnimp.seeding import Stream, generator

    rng = generator(0, Stream.TRAINING)
    steps = 6
    x = rng.random((4000, steps, 3), dtype=np.float32)
    y = np.zeros((4000, steps), dtype=np.float32)
    y[:, 2:] = x[:, :-2, 0]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((steps, 3)), keras.layers.Flatten(), keras.layers.Dense(steps)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(x, y, batch_size=100, epochs=30, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 1e-3

    result = sensitivity_importance(model, x[:500], per_step=True, n_repeats=5, noise_scale=0.5)
    mean = result.importances_mean  # (features, steps)
    planted = mean[0, : steps - 2]
    assert planted.min() > 10 * max(mean[0, steps - 2:].max(), mean[1:].max())  # signal vs null cells
    for step in range(steps - 2):  # the interval of every planted cell lies above every null cell's
        low = result.summary.t_low.reshape(3, steps)[0, step]
        assert low > result.summary.t_high.reshape(3, steps)[1:].max()
