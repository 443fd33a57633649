"""Several metrics, per-output effects, conditional permutation and segments from one set of forward passes."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pngtools import PNG_SIGNATURE
from rnnimp import InvalidParameterError, sensitivity_importance
from rnnimp.perturb import sample_noise
from rnnimp.seeding import noise_key

def decoded_png(path) -> np.ndarray:
    """The PNG file at ``path`` decoded: (height, width, channels); checks the signature and a sensible size."""
    import io

    import matplotlib.image

    data = open(path, "rb").read()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert len(data) < 400_000
    return image


WEIGHTS = np.array([[1.0, 0.0], [-2.0, 3.0], [0.0, 0.5]], dtype=np.float32)  # (features, outputs)


def two_output_model(weights: np.ndarray = WEIGHTS, time_steps: int = 1):
    """y[s, o] = sum_t sum_f W[f, o] x[s, t, f]: two outputs whose per-output effects are known by hand."""
    import keras

    n_features, n_outputs = weights.shape
    model = keras.Sequential([keras.Input((time_steps, n_features)), keras.layers.Flatten(),
                              keras.layers.Dense(n_outputs, use_bias=False)])
    model.layers[-1].set_weights([np.tile(weights, (time_steps, 1))])
    return model


def sum_model(weights, time_steps: int):
    """y[s] = sum_t sum_f w_f x[s, t, f] (one output)."""
    return two_output_model(np.asarray(weights, dtype=np.float32).reshape(-1, 1), time_steps)


@pytest.fixture(scope="module")
def model():
    return two_output_model()


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((200, 1, 3), dtype=np.float32)


def test_per_output_effects_are_known_by_hand_and_pool_to_the_pooled_effect(model, sample):
    result = sensitivity_importance(model, sample, n_repeats=3, noise_scale=0.2, random_state=5, per_output=True,
                                    output_names=["a", "b"], batch_size=64, shard_size=128)
    assert [p.labels for p in result.panels] == [{"output": -1, "output_name": None},
                                                 {"output": 0, "output_name": "a"},
                                                 {"output": 1, "output_name": "b"}]
    pooled = sensitivity_importance(model, sample, n_repeats=3, noise_scale=0.2, random_state=5,
                                    batch_size=64, shard_size=128)
    np.testing.assert_array_equal(result.effects, pooled.effects)  # pooled rows unchanged, bit for bit
    for feature in range(3):
        for repeat in range(3):
            noise_rms = 0.2 * np.sqrt(np.mean(sample_noise(noise_key(5, feature, repeat), 0, 200, 1) ** 2))
            for output in range(2):
                effect = result.panel(output=output).effects[feature, repeat]
                assert effect == pytest.approx(abs(WEIGHTS[feature, output]) * noise_rms, rel=1e-5, abs=1e-9)
    per_output = np.stack([result.panel(output=o).effects for o in range(2)])
    np.testing.assert_allclose(np.sqrt(np.mean(per_output ** 2, axis=0)), result.effects, rtol=1e-12)
    summary = result.summary_table()
    assert summary.column_names[:2] == ["output", "output_name"]
    assert summary.num_rows == 9
    assert summary.schema.field("output").type == "int32"


def test_per_output_with_per_step_gives_a_map_per_output(sample):
    series = np.random.default_rng(1).random((50, 3, 3), dtype=np.float32)
    result = sensitivity_importance(two_output_model(time_steps=3), series, n_repeats=2, per_output=True,
                                    per_step=True)
    assert len(result.panels) == 3 and result.panel(output=1).effects.shape == (3, 3, 2)
    assert result.summary_table().num_rows == 3 * 3 * 3


def test_several_metrics_are_bit_identical_to_single_metric_runs(model, sample):
    labels = sample[:, 0, :] @ WEIGHTS + 0.1
    options = dict(n_repeats=4, random_state=3, batch_size=32, shard_size=64, resample=True)
    both = sensitivity_importance(model, sample, labels, metric=("rms", "mae", "loss-increase"), **options)
    assert [p.labels for p in both.panels] == [{"metric": m} for m in ("rms", "mae", "loss-increase")]
    for name in ("rms", "mae", "loss-increase"):
        alone = sensitivity_importance(model, sample, labels, metric=name, **options)
        panel = both.panel(metric=name)
        np.testing.assert_array_equal(panel.effects, alone.effects)
        for field in ("mean", "t_low", "t_high", "bootstrap_low", "bootstrap_high"):
            np.testing.assert_array_equal(getattr(panel.summary, field), getattr(alone.summary, field))
    summary = both.summary_table()
    assert summary.column_names[0] == "metric" and summary.num_rows == 9
    comparisons = both.comparisons_table()
    assert set(comparisons["metric"].to_pylist()) == {"rms", "mae", "loss-increase"}
    assert set(both.rank_probabilities_table()["metric"].to_pylist()) == {"rms", "mae", "loss-increase"}


def test_several_metrics_write_files_with_a_metric_column(model, sample, tmp_path):
    result = sensitivity_importance(model, sample, n_repeats=3, metric=("rms", "mae"), per_output=True)
    paths = result.write(str(tmp_path / "out"))
    effects = pq.read_table(paths["effects"])
    assert effects.column_names[:2] == ["metric", "output"]
    assert effects.num_rows == 2 * 3 * 3 * 3
    decoded_png(paths["outputs_chart"])
    decoded_png(paths["chart"])


@pytest.mark.parametrize("options, parameter", [
    (dict(metric=("rms", "rms")), "metric"),
    (dict(metric=("rms", "nope")), "metric"),
    (dict(metric=()), "metric"),
    (dict(output_names=["a", "b"]), "output_names"),
    (dict(per_output=True, output_names=["a"]), "output_names"),
    (dict(per_output=True, output_names=["a", "a"]), "output_names"),
])
def test_refusals(model, sample, options, parameter):
    with pytest.raises(InvalidParameterError) as error:
        sensitivity_importance(model, sample, n_repeats=2, **options)
    assert error.value.parameter == parameter


@pytest.fixture(scope="module")
def correlated():
    """x1 and x2 nearly equal (correlation 0.999), x3 independent; the model uses x1 and x3 only."""
    rng = np.random.default_rng(11)
    x1 = rng.normal(size=2000)
    series = np.column_stack([x1, x1 + 0.05 * rng.normal(size=2000), rng.normal(size=2000)])
    return sum_model([1.0, 0.0, 1.0], time_steps=1), series[:, None, :].astype(np.float32)


def test_conditional_permutation_credits_the_used_twin_only_beyond_its_twin(correlated):
    model, series = correlated
    options = dict(n_repeats=8, random_state=2, feature_names=["x1", "x2", "x3"])
    marginal = sensitivity_importance(model, series, perturbation="permute", **options)
    conditional = sensitivity_importance(model, series, perturbation="conditional-permute", condition_on=["x2"],
                                         strata=20, **options)
    m, c = marginal.summary, conditional.summary
    assert m.mean[0] > 1.2  # about sqrt(2): x1's values exchanged with any other series'
    assert c.mean[0] < 0.2 * m.mean[0]  # within a stratum of x2, x1 barely changes
    assert m.mean[1] == 0 and c.mean[1] == 0  # the model never reads x2
    # x3 is independent of x2: conditioning changes nothing beyond chance
    assert c.t_low[2] <= m.t_high[2] and m.t_low[2] <= c.t_high[2]
    assert conditional.metadata["configuration"]["condition_on"] == ["x2"]
    assert conditional.metadata["configuration"]["strata"] == 20


def test_conditional_permutation_exchanges_values_only_within_strata(correlated):
    from rnnimp import conditional
    from rnnimp.options import Options, prepare

    model, series = correlated
    request = prepare(model, series, options=Options(perturbation="conditional-permute", condition_on=["x2"],
                                                     strata=4, feature_names=["x1", "x2", "x3"]))
    strata_x1 = request.settings.measures.donor_strata[0]
    expected = conditional.strata(conditional.per_series_means(series, [1]), 4)
    np.testing.assert_array_equal(strata_x1, expected)
    # x2's own row is not conditioned on itself: with no other conditioning feature, one stratum
    assert (request.settings.measures.donor_strata[1] == 0).all()


@pytest.fixture(scope="module")
def drifting():
    """Segment "a": x1 varies; segment "b": x1 nearly constant. Model y = x1 + x2."""
    rng = np.random.default_rng(4)
    n = 600
    segment = np.array(["a"] * (n // 2) + ["b"] * (n // 2))
    x1 = np.where(segment == "a", rng.normal(size=n), 0.5 + 0.001 * rng.normal(size=n))
    series = np.column_stack([x1, rng.normal(size=n)])[:, None, :].astype(np.float32)
    order = rng.permutation(n)  # segments interleaved across batches and shards
    return sum_model([1.0, 1.0], time_steps=1), series[order], segment[order]


def test_segments_show_drift(drifting, tmp_path):
    model, series, segment = drifting
    result = sensitivity_importance(model, series, perturbation="permute", segments=segment, n_repeats=6,
                                    random_state=1, batch_size=32, shard_size=128)
    a, b = result.panel(segment="a"), result.panel(segment="b")
    assert a.summary.mean[0] > 1.0 and b.summary.mean[0] < 0.01
    assert a.summary.mean[1] > 1.0 and b.summary.mean[1] > 1.0
    drift = result.segment_comparisons_table().to_pylist()
    x1 = next(row for row in drift if row["name"] == "x1")
    assert (x1["segment_a"], x1["segment_b"]) == ("a", "b")
    assert x1["settled"] and x1["welch_high"] < 0
    paths = result.write(str(tmp_path / "out"))
    assert pq.read_table(paths["summary"]).column("segment").to_pylist() == ["a", "a", "b", "b"]
    assert pq.read_table(paths["segment_comparisons"]).num_rows == 2
    decoded_png(paths["segments_chart"])
    # the same effects whatever the sharding
    again = sensitivity_importance(model, series, perturbation="permute", segments=segment, n_repeats=6,
                                   random_state=1, batch_size=50, shard_size=600)
    for label in ("a", "b"):
        np.testing.assert_array_equal(again.panel(segment=label).effects, result.panel(segment=label).effects)


def test_segments_with_noise_split_the_pooled_sums(drifting):
    model, series, segment = drifting
    result = sensitivity_importance(model, series, segments=segment, n_repeats=3, random_state=1)
    pooled = sensitivity_importance(model, series, n_repeats=3, random_state=1)
    counts = np.array([(segment == label).sum() for label in ("a", "b")])
    squares = np.stack([result.panel(segment=label).effects ** 2 for label in ("a", "b")])
    np.testing.assert_allclose(np.sqrt(np.tensordot(counts, squares, 1) / counts.sum()), pooled.effects, rtol=1e-10)


@pytest.mark.parametrize("options, parameter", [
    (dict(perturbation="permute", condition_on=["x2"]), "condition_on"),
    (dict(perturbation="conditional-permute"), "condition_on"),
    (dict(perturbation="conditional-permute", condition_on=["nope"]), "condition_on"),
    (dict(perturbation="conditional-permute", condition_on=["x2"], strata=0), "strata"),
    (dict(perturbation="conditional-permute", condition_on=["x2", "x3"], strata=60), "strata"),
    (dict(segments=["a", "b"]), "segments"),
    (dict(perturbation="permute", segments=["a"] + ["b"] * 1999), "segments"),
])
def test_conditional_and_segment_refusals(correlated, options, parameter):
    model, series = correlated
    with pytest.raises(InvalidParameterError) as error:
        sensitivity_importance(model, series, n_repeats=2, feature_names=["x1", "x2", "x3"], **options)
    assert error.value.parameter == parameter
    assert "got" in str(error.value)


def test_merge_of_runs_with_panels_equals_one_run(model, sample, tmp_path):
    from rnnimp.merge import merge_runs

    options = dict(metric=("rms", "mae"), per_output=True, random_state=9)
    folders = []
    for first in (0, 2):
        part = sensitivity_importance(model, sample, n_repeats=2, first_repeat=first, **options)
        folders.append(str(tmp_path / f"part{first}"))
        part.write(folders[-1], chart=False)
    merged = merge_runs(folders)
    whole = sensitivity_importance(model, sample, n_repeats=4, **options)
    assert [p.labels for p in merged.panels] == [p.labels for p in whole.panels]
    for a, b in zip(merged.panels, whole.panels):
        np.testing.assert_array_equal(a.effects, b.effects)
        np.testing.assert_array_equal(a.summary.mean, b.summary.mean)
    assert merged.summary_table().column_names[:2] == ["metric", "output"]


def test_a_checkpoint_keeps_every_column_of_the_sums(model, sample, tmp_path):
    options = dict(n_repeats=2, metric=("rms", "mae"), per_output=True, segments=np.arange(200) % 2,
                   checkpoint=str(tmp_path / "run"))
    first = sensitivity_importance(model, sample, **options)  # not written: the checkpoint stays
    again = sensitivity_importance(model, sample, **options)
    assert again.metadata["units_from_checkpoint"] == again.metadata["n_units"] > 0
    for a, b in zip(first.panels, again.panels):
        assert a.labels == b.labels
        np.testing.assert_array_equal(a.effects, b.effects)


def test_adaptive_repeats_wait_for_every_panel(model, sample):
    result = sensitivity_importance(model, sample, n_repeats=3, metric=("rms", "mae"), per_output=True,
                                    target_halfwidth=1e-3, max_repeats=6, wave_repeats=3)
    for panel in result.panels:
        assert panel.metadata["adaptive"]["met"] == result.metadata["adaptive"]["met"]
        assert panel.effects.shape == result.effects.shape


def test_segments_with_a_time_step_map_name_the_steps_in_the_comparisons():
    series = np.random.default_rng(2).random((40, 2, 3), dtype=np.float32)
    result = sensitivity_importance(two_output_model(time_steps=2), series, n_repeats=2, per_step=True,
                                    segments=np.repeat(["early", "late"], 20))
    drift = result.segment_comparisons_table()
    assert drift["name"].to_pylist()[:2] == ["x1[0]", "x1[1]"] and drift.num_rows == 3 * 2
    assert result.segments_chart_png() is None  # a map per segment: the tables, no line chart


def test_per_output_leaves_masked_outputs_out_of_each_output():
    from rnnimp.perturb import sample_noise as noise
    from test_masks import T, masked_lstm

    rng = np.random.default_rng(8)
    x = rng.uniform(0.2, 1.0, size=(40, T, 3)).astype(np.float32)
    lengths = rng.integers(3, T + 1, size=40)
    for s, length in enumerate(lengths):
        x[s, :T - length] = 0.0  # pre-padded: the outputs at padded steps are masked
    model = masked_lstm(True)
    result = sensitivity_importance(model, x, n_repeats=2, random_state=3, per_output=True, batch_size=16,
                                    shard_size=32)
    pooled = sensitivity_importance(model, x, n_repeats=2, random_state=3, batch_size=16, shard_size=32)
    np.testing.assert_array_equal(result.effects, pooled.effects)
    real = np.any(x != 0.0, axis=-1)
    perturbed = x.copy()
    z = noise(noise_key(3, 0, 0), 0, len(x), T, 1)[:, :, 0]
    perturbed[..., 0] += np.where(real, 0.2 * z, 0.0).astype(np.float32)
    change = np.square(model.predict(perturbed, verbose=0)[..., 0].astype(np.float64)
                       - model.predict(x, verbose=0)[..., 0])
    for step in (0, T - 1):
        expected = np.sqrt(change[real[:, step], step].mean())
        assert result.panel(output=step).effects[0, 0] == pytest.approx(expected, rel=2e-4)
