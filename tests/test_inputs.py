"""Models with several inputs: a sequence input beside static covariates.

Known answers on a two-input linear model, derived by hand from the noise
stream, the permutation and the means: y = Σ_t Σ_f a_f x[t, f] + Σ_j b_j z_j.
"""

import numpy as np
import pytest

from rnnimp import InvalidParameterError, sensitivity_importance
from rnnimp.perturb import permutation, sample_noise
from rnnimp.seeding import noise_key

A = np.array([2.0, -0.5], dtype=np.float32)  # per sequence feature
B = np.array([1.5, 0.0, -3.0], dtype=np.float32)  # per static feature
T, N = 4, 90


def two_input_linear_model():
    """sequence (T, 2) through a per-step linear layer summed over time, plus a linear layer on static (3,)."""
    import keras

    seq = keras.Input((T, 2), name="seq")
    static = keras.Input((3,), name="static")
    per_step = keras.layers.Dense(1, use_bias=False, name="per_step")(seq)  # (batch, T, 1)
    summed = keras.layers.Dense(1, use_bias=False, name="sum_over_time")(keras.layers.Flatten()(per_step))
    covariates = keras.layers.Dense(1, use_bias=False, name="covariates")(static)
    model = keras.Model([seq, static], keras.layers.Add()([summed, covariates]))
    model.get_layer("per_step").set_weights([A.reshape(2, 1)])
    model.get_layer("sum_over_time").set_weights([np.ones((T, 1), np.float32)])
    model.get_layer("covariates").set_weights([B.reshape(3, 1)])
    return model


@pytest.fixture(scope="module")
def model():
    return two_input_linear_model()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    return {"seq": rng.random((N, T, 2), dtype=np.float32), "static": rng.normal(size=(N, 3)).astype(np.float32)}


def rms(change):
    return float(np.sqrt(np.mean(np.square(change))))


def run(model, X, **options):
    return sensitivity_importance(model, X, n_repeats=3, random_state=11, batch_size=32, shard_size=64, **options)


def test_model_is_what_the_answers_assume(model, data):
    expected = (data["seq"] @ A).sum(axis=1) + data["static"] @ B
    np.testing.assert_allclose(model.predict(data, verbose=0)[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_noise_known_answer_for_sequence_and_static_features(model, data):
    result = run(model, data, noise_scale=0.3)
    assert result.target_names == ["seq.x1", "seq.x2", "static.x1", "static.x2", "static.x3"]
    for repeat in range(3):
        for f in range(2):  # sequence: Δy = a_f σ Σ_t z[t], drawn in input 0's region of the stream
            z = sample_noise(noise_key(11, f, repeat), 0, N, T, 1, region=0)[:, :, 0]
            assert result.effects[f, repeat] == pytest.approx(abs(A[f]) * 0.3 * rms(z.sum(axis=1)), rel=1e-5)
        for j in range(3):  # static: Δy = b_j σ z, one draw per series in input 1's region
            z = sample_noise(noise_key(11, 2 + j, repeat), 0, N, 1, 1, region=1)[:, 0, 0]
            assert result.effects[2 + j, repeat] == pytest.approx(abs(B[j]) * 0.3 * rms(z), rel=1e-5, abs=1e-12)
    # and the expectations: |a_f| σ √T for the sequence, |b_j| σ for the static features
    np.testing.assert_allclose(result.importances_mean[:2], np.abs(A) * 0.3 * np.sqrt(T), rtol=0.25)
    np.testing.assert_allclose(result.importances_mean[2:], np.abs(B) * 0.3, rtol=0.25)
    assert (result.effects[3] == 0).all()


def test_permutation_known_answer(model, data):
    result = run(model, data, perturbation="permute")
    for repeat in range(3):
        for f in range(2):
            source = permutation(noise_key(11, f, repeat), N)
            change = A[f] * (data["seq"][source, :, f] - data["seq"][:, :, f]).sum(axis=1)
            assert result.effects[f, repeat] == pytest.approx(rms(change), rel=1e-5)
        for j in range(3):  # a series' covariate is exchanged with its donor's
            source = permutation(noise_key(11, 2 + j, repeat), N)
            change = B[j] * (data["static"][source, j] - data["static"][:, j])
            assert result.effects[2 + j, repeat] == pytest.approx(rms(change), rel=1e-5, abs=1e-12)


def test_ablation_known_answer(model, data):
    result = run(model, data, perturbation="ablate")
    for f in range(2):
        mean = data["seq"][:, :, f].astype(np.float64).mean()
        expected = rms(A[f] * (mean - data["seq"][:, :, f]).sum(axis=1))
        np.testing.assert_allclose(result.effects[f], expected, rtol=1e-5)
    for j in range(3):
        mean = data["static"][:, j].astype(np.float64).mean()
        np.testing.assert_allclose(result.effects[2 + j], rms(B[j] * (mean - data["static"][:, j])),
                                   rtol=1e-5, atol=1e-12)


def test_group_across_inputs_draws_independent_noise_per_input(model, data):
    result = run(model, data, groups={"mixed": ["seq.x1", "static.x3"]}, noise_scale=0.3)
    assert result.target_names[-1] == "mixed"
    for repeat in range(3):
        key = noise_key(11, 5, repeat)
        z_seq = sample_noise(key, 0, N, T, 1, region=0)[:, :, 0]
        z_static = sample_noise(key, 0, N, 1, 1, region=1)[:, 0, 0]
        change = A[0] * 0.3 * z_seq.sum(axis=1) + B[2] * 0.3 * z_static
        assert result.effects[5, repeat] == pytest.approx(rms(change), rel=1e-5)
    # the static draws are not the sequence draws of the same positions
    key = noise_key(11, 5, 0)
    assert not np.allclose(sample_noise(key, 0, N, 1, 1, region=1)[:, 0, 0],
                           sample_noise(key, 0, N, 1, 1, region=0)[:, 0, 0])


def test_list_in_model_input_order_equals_dict(model, data):
    a = run(model, data)
    b = run(model, [data["seq"], data["static"]])
    np.testing.assert_array_equal(a.effects, b.effects)


def test_batch_and_shard_sizes_do_not_change_multi_input_effects(model, data):
    a = sensitivity_importance(model, data, n_repeats=2, random_state=1, batch_size=16, shard_size=32)
    b = sensitivity_importance(model, data, n_repeats=2, random_state=1, batch_size=64, shard_size=128)
    np.testing.assert_array_equal(a.effects, b.effects)


def test_tables_carry_the_input_column_and_unique_names(model, data):
    result = run(model, data, feature_names={"seq": ["price", "volume"], "static": ["age", "price", "size"]},
                 groups={"both": ["seq.price", "age"]})
    assert result.target_names == ["seq.price", "volume", "age", "static.price", "size", "both"]
    table = result.summary_table()
    assert table.column_names[:4] == ["feature_index", "feature", "input", "features"]
    assert table.column("input").to_pylist() == ["seq", "seq", "static", "static", "static", "seq,static"]
    assert result.effects_table().column("input").to_pylist()[:3] == ["seq"] * 3


def test_per_step_map_covers_sequence_features_and_static_features_once(model, data):
    result = run(model, data, per_step=True, noise_scale=0.3)
    table = result.summary_table()
    steps = table.column("step").to_pylist()
    features = table.column("feature").to_pylist()
    assert [s for s, f in zip(steps, features) if f == "seq.x1"] == list(range(T))
    assert [s for s, f in zip(steps, features) if f.startswith("static")] == [None, None, None]
    assert result.effects.shape == (5, T, 3)
    assert np.isnan(result.effects[2:, 1:]).all() and np.isfinite(result.effects[2:, 0]).all()
    # sequence feature at step t: Δy = a_f σ z_t
    for repeat in range(3):
        z = sample_noise(noise_key(11, 0, repeat, 2), 0, N, 1, 1, region=0)[:, 0, 0]
        assert result.effects[0, 2, repeat] == pytest.approx(abs(A[0]) * 0.3 * rms(z), rel=1e-5)
        z = sample_noise(noise_key(11, 2, repeat), 0, N, 1, 1, region=1)[:, 0, 0]
        assert result.effects[2, 0, repeat] == pytest.approx(abs(B[0]) * 0.3 * rms(z), rel=1e-5)
    assert len(result.effects_table()) == (2 * T + 3) * 3


def test_per_step_refuses_a_group_of_static_and_sequence_features(model, data):
    with pytest.raises(InvalidParameterError, match="must not mix static and sequence"):
        run(model, data, per_step=True, groups={"g": ["seq.x1", "static.x1"]})


@pytest.mark.parametrize("X, message", [
    (lambda d: {**d, "other": d["static"]}, "must name inputs of the model .*'other'"),
    (lambda d: {"seq": d["seq"]}, "no data for input 'static'"),
    (lambda d: {"seq": d["seq"], "static": d["static"][:50]}, "same number of series.*seq: 90, static: 50"),
    (lambda d: {"seq": d["static"], "static": d["static"]}, "input 'seq' is a sequence input.*static array"),
    (lambda d: {"seq": d["seq"], "static": d["seq"]}, "input 'static' is a static input.*sequence array"),
    (lambda d: d["seq"], "must be a dict"),
    (lambda d: [d["seq"]], "one array per model input"),
])
def test_refusals(model, data, X, message):
    with pytest.raises(InvalidParameterError, match=message):
        run(model, X(data))


def test_nan_mask_value_and_bad_padding_are_refused(model, data):
    with pytest.raises(InvalidParameterError, match="mask_value: must be a finite number"):
        run(model, data, mask_value=float("nan"))
    with pytest.raises(InvalidParameterError, match="mask_value: applies to sequence inputs only"):
        run(model, data, mask_value={"static": 0.0})
    with pytest.raises(InvalidParameterError, match="padding: must be one of post, pre"):
        run(model, data, padding="middle")


def test_per_step_results_write_and_print_with_static_features(model, data, tmp_path):
    result = run(model, data, per_step=True)
    paths = result.write(str(tmp_path / "out"))
    assert set(paths) >= {"effects", "summary", "chart"}
    text = result.format_summary()
    assert "static.x1 " in text and "static.x1[" not in text and "seq.x1[3]" in text


def test_merged_runs_of_a_multi_input_time_step_map_equal_one_run(model, data, tmp_path):
    from rnnimp.merge import merge_runs

    whole = sensitivity_importance(model, data, n_repeats=4, random_state=2, per_step=True)
    parts = [sensitivity_importance(model, data, n_repeats=2, first_repeat=first, random_state=2, per_step=True)
             for first in (0, 2)]
    folders = [str(tmp_path / f"part{i}") for i in range(2)]
    for part, folder in zip(parts, folders):
        part.write(folder, chart=False)
    merged = merge_runs(folders)
    np.testing.assert_array_equal(merged.effects, whole.effects)
    assert merged.summary_table().column("input").to_pylist() == whole.summary_table().column("input").to_pylist()
    assert merged.summary_table().column("step").to_pylist() == whole.summary_table().column("step").to_pylist()
