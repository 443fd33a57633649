"""Variable-length series behind a Keras Masking layer: padding is never perturbed.

The effects are checked against plain loops written here that perturb only
the real steps, one series and one step at a time.
"""

import numpy as np
import pytest

from rnnimp import sensitivity_importance
from rnnimp.inputs import InputLayout, masking_values
from rnnimp.perturb import Perturbation, aligned_donor_values, perturb_inputs, permutation, sample_noise
from rnnimp.seeding import noise_key

T, F, N = 12, 3, 60


def masked_lstm(return_sequences: bool):
    import keras

    keras.utils.set_random_seed(4)
    layers = [keras.Input((T, F), name="series"), keras.layers.Masking(mask_value=0.0),
              keras.layers.LSTM(6, return_sequences=return_sequences), keras.layers.Dense(1)]
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def padded():
    """Post-padded series of 3..12 real steps, padding 0."""
    rng = np.random.default_rng(8)
    x = rng.uniform(0.2, 1.0, size=(N, T, F)).astype(np.float32)
    lengths = rng.integers(3, T + 1, size=N)
    for s, length in enumerate(lengths):
        x[s, length:] = 0.0
    return x, lengths


def plain_noise_effect(model, x, feature, key, scale, only_real: bool, output_steps: bool):
    """RMS output change when feature gets scale * noise, series by series, step by step."""
    z = sample_noise(key, 0, len(x), T, 1)[:, :, 0]
    perturbed = x.copy()
    for s in range(len(x)):
        for t in range(T):
            if not only_real or np.any(x[s, t] != 0.0):
                perturbed[s, t, feature] += np.float32(scale * z[s, t])
    base = model.predict(x, verbose=0)
    new = model.predict(perturbed, verbose=0)
    change = np.square(new.astype(np.float64) - base)
    if output_steps:  # only the outputs at real steps count, as in Keras' masked losses
        real = np.any(x != 0.0, axis=-1)
        return float(np.sqrt(change[..., 0][real].mean()))
    return float(np.sqrt(change.mean()))


@pytest.mark.parametrize("return_sequences", [False, True])
def test_masked_effects_equal_a_plain_loop_over_real_steps(padded, return_sequences):
    x, lengths = padded
    if return_sequences:  # pre-padded: the outputs at padded steps stay at the LSTM's initial state
        x = np.stack([np.roll(series, T - n, axis=0) for series, n in zip(x, lengths)])
    model = masked_lstm(return_sequences)
    assert masking_values(model) == {"series": 0.0}
    result = sensitivity_importance(model, x, n_repeats=2, random_state=3, noise_scale=0.2,
                                    batch_size=16, shard_size=32)
    assert result.metadata["configuration"]["inputs"]["series"]["mask_value"] == 0.0
    for f in range(F):
        for repeat in range(2):
            key = noise_key(3, f, repeat)
            expected = plain_noise_effect(model, x, f, key, 0.2, True, return_sequences)
            assert result.effects[f, repeat] == pytest.approx(expected, rel=2e-4)
            if return_sequences:  # counting the outputs at padded steps too would give another answer
                all_outputs = plain_noise_effect(model, x, f, key, 0.2, True, False)
                assert all_outputs < 0.9 * expected
            else:  # perturbing padding too would inflate the effect
                assert plain_noise_effect(model, x, f, key, 0.2, False, False) > 1.5 * expected


def test_masked_permutation_and_ablation_leave_padding_alone(padded):
    x, lengths = padded
    layout = InputLayout(("series",), ((T, F),), (0.0,), "post")
    real = [np.any(x != 0.0, axis=-1)]
    for perturbation in (Perturbation("permute"), Perturbation("ablate", values=(5.0, 6.0, 7.0)),
                         Perturbation("noise", scales=(1.0, 1.0, 1.0))):
        batch = x.copy()
        sources = permutation((1, 2), N)
        perturb_inputs([batch], [x], 0, (0, 2), None, perturbation, (1, 2), layout, real, sources)
        for s, length in enumerate(lengths):
            np.testing.assert_array_equal(batch[s, length:], 0.0)  # padding stays padding
            np.testing.assert_array_equal(batch[s, :, 1], x[s, :, 1])  # other features unchanged
            assert not np.array_equal(batch[s, :length, 0], x[s, :length, 0]) or perturbation.kind == "permute"
        if perturbation.kind == "ablate":
            assert all((batch[s, :n, 2] == 7.0).all() for s, n in enumerate(lengths))


def test_masked_permutation_equals_a_plain_loop(padded):
    x, lengths = padded
    layout = InputLayout(("series",), ((T, F),), (0.0,), "post")
    sources = permutation((3, 4), N)
    batch = x.copy()
    perturb_inputs([batch], [x], 0, (1,), None, Perturbation("permute"), (3, 4), layout,
                   [np.any(x != 0.0, axis=-1)], sources)
    expected = x.copy()
    for s in range(N):
        donor = x[sources[s], :lengths[sources[s]], 1]
        for t in range(lengths[s]):
            expected[s, t, 1] = donor[t % len(donor)]  # aligned at the start, the donor repeated if shorter
    np.testing.assert_array_equal(batch, expected)


def test_alignment_of_donor_and_receiver_of_different_lengths():
    values = np.arange(6, dtype=np.float32)[None, :, None] + np.array([10, 20, 30, 40], np.float32)[:, None, None]
    step = np.arange(6)
    receiver = np.stack([step < 4, step < 2, step >= 2, step >= 4])
    donor = np.stack([step < 2, step < 4, step >= 4, step >= 2])
    post = aligned_donor_values(values, donor, receiver, "post")[:, :, 0]
    np.testing.assert_array_equal(post[0, :4], [10, 11, 10, 11])  # donor shorter: repeated from its start
    np.testing.assert_array_equal(post[1, :2], [20, 21])  # donor longer: its first steps
    pre = aligned_donor_values(values, donor, receiver, "pre")[:, :, 0]
    np.testing.assert_array_equal(pre[2, 2:], [34, 35, 34, 35])  # pre: aligned at the last step, backwards
    np.testing.assert_array_equal(pre[3, 4:], [44, 45])  # donor longer: its last steps


def test_donor_without_real_steps_leaves_the_receiver_unchanged():
    x = np.array([[[1.0], [2.0]], [[0.0], [0.0]]], dtype=np.float32)
    layout = InputLayout(("s",), ((2, 1),), (0.0,), "post")
    batch = x.copy()
    perturb_inputs([batch], [x], 0, (0,), None, Perturbation("permute"), (0, 0), layout,
                   [np.any(x != 0.0, axis=-1)], np.array([1, 0]))
    np.testing.assert_array_equal(batch[0], x[0])  # its donor is all padding
    np.testing.assert_array_equal(batch[1], x[1])  # padding stays padding


def test_pre_padding_alignment_end_to_end():
    x = np.zeros((2, 5, 1), np.float32)
    x[0, 2:, 0] = [1, 2, 3]  # pre-padded, 3 real steps
    x[1, 3:, 0] = [8, 9]  # 2 real steps
    layout = InputLayout(("s",), ((5, 1),), (0.0,), "pre")
    batch = x.copy()
    perturb_inputs([batch], [x], 0, (0,), None, Perturbation("permute"), (0, 0), layout,
                   [np.any(x != 0.0, axis=-1)], np.array([1, 0]))
    np.testing.assert_array_equal(batch[0, :, 0], [0, 0, 9, 8, 9])
    np.testing.assert_array_equal(batch[1, :, 0], [0, 0, 0, 2, 3])


def test_per_step_map_perturbs_a_step_only_where_it_is_real(padded):
    x, lengths = padded
    model = masked_lstm(False)
    result = sensitivity_importance(model, x, n_repeats=2, random_state=3, per_step=True, noise_scale=0.2,
                                    batch_size=32, shard_size=64)
    base = model.predict(x, verbose=0).astype(np.float64)
    for step in (0, 6, T - 1):
        z = sample_noise(noise_key(3, 1, 0, step), 0, N, 1, 1)[:, 0, 0]
        perturbed = x.copy()
        for s in range(N):
            if step < lengths[s]:
                perturbed[s, step, 1] += np.float32(0.2 * z[s])
        expected = np.sqrt(np.mean(np.square(model.predict(perturbed, verbose=0) - base)))
        assert result.effects[1, step, 0] == pytest.approx(expected, rel=2e-4)


def test_explicit_mask_value_overrides_and_stats_skip_padding(padded):
    x, _ = padded
    model = masked_lstm(False)
    relative = sensitivity_importance(model, x, n_repeats=2, noise_relative=0.5, batch_size=32, shard_size=64)
    real = x[np.any(x != 0.0, axis=-1)]
    np.testing.assert_allclose(relative.metadata["configuration"]["scales"],
                               0.5 * real.astype(np.float64).std(axis=0), rtol=1e-12)
