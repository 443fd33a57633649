"""The public API with the in-process executor, on Keras models built here."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import linear_lstm_free_model
from rnnimp import InvalidParameterError, sensitivity_importance
from rnnimp.output import read_metadata
from rnnimp.perturb import sample_noise
from rnnimp.seeding import noise_key


@pytest.fixture(scope="module")
def linear_model():
    return linear_lstm_free_model([1.0, -3.0, 0.0], time_steps=4)


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((300, 4, 3), dtype=np.float32)


def test_known_answer_on_a_linear_model(linear_model, sample):
    result = sensitivity_importance(linear_model, sample, n_repeats=4, noise_scale=0.2, random_state=7,
                                    batch_size=64, shard_size=128)
    assert result.effects.shape == (3, 4)
    for feature, weight in enumerate([1.0, -3.0, 0.0]):
        for repeat in range(4):
            noise = sample_noise(noise_key(7, feature, repeat), 0, 300, 4)
            expected = abs(weight) * 0.2 * np.sqrt(np.mean(noise**2))
            assert result.effects[feature, repeat] == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert (result.effects[2] == 0).all()
    np.testing.assert_array_equal(result.summary.rank, [2, 1, 3])
    # true importance |w| * scale lies in both intervals
    for feature, weight in enumerate([1.0, 3.0]):
        s = result.summary
        assert s.t_low[feature] <= weight * 0.2 <= s.t_high[feature]


def test_same_seed_same_effects_other_seed_other_effects(linear_model, sample):
    a = sensitivity_importance(linear_model, sample, n_repeats=3, random_state=1)
    b = sensitivity_importance(linear_model, sample, n_repeats=3, random_state=1)
    c = sensitivity_importance(linear_model, sample, n_repeats=3, random_state=2)
    np.testing.assert_array_equal(a.effects, b.effects)
    assert not np.array_equal(a.effects[:2], c.effects[:2])


def test_batch_and_shard_sizes_do_not_change_the_effects(linear_model, sample):
    a = sensitivity_importance(linear_model, sample, n_repeats=3, batch_size=32, shard_size=64)
    b = sensitivity_importance(linear_model, sample, n_repeats=3, batch_size=32, shard_size=300)
    np.testing.assert_allclose(a.effects, b.effects, rtol=1e-9)


def test_write_produces_readable_parquet_with_provenance(linear_model, sample, tmp_path):
    result = sensitivity_importance(linear_model, sample, n_repeats=3, feature_names=["a", "b", "c"],
                                    metadata={"job_configuration": {"note": "test"}})
    paths = result.write(str(tmp_path / "out"), model_bytes=b"not really a model")
    effects = pq.read_table(paths["effects"])
    assert effects.column_names == ["feature_index", "feature", "features", "repeat", "effect"]
    assert effects.num_rows == 9
    np.testing.assert_array_equal(np.asarray(effects["effect"]).reshape(3, 3), result.effects)
    summary = pq.read_table(paths["summary"]).to_pylist()
    assert [row["feature"] for row in summary] == ["a", "b", "c"]
    assert summary[1]["rank"] == 1 and summary[0]["n_repeats"] == 3
    metadata = read_metadata(paths["summary"])
    assert metadata["seed"] == 0 and metadata["configuration"]["noise_scale"] == 0.2
    assert metadata["job_configuration"] == {"note": "test"}
    assert len(metadata["model_fingerprint"]) == 64
    assert metadata["forward"] == "keras-xla"  # a Dense model: nothing for the fused LSTM program
    assert {"numpy", "pyarrow", "keras"} <= set(metadata["versions"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparisons.parquet", "effects.parquet", "effects.png", "model.keras", "rank_probabilities.parquet",
        "summary.parquet"]


def test_output_is_readable_by_pandas_duckdb_and_polars(linear_model, sample, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    result = sensitivity_importance(linear_model, sample, n_repeats=2)
    paths = result.write(str(tmp_path))
    assert len(pd.read_parquet(paths["summary"])) == 3
    assert pl.read_parquet(paths["effects"]).height == 6
    top = duckdb.sql(f"select feature from '{paths['summary']}' where rank = 1").fetchall()
    assert top == [("x2",)]


def test_bad_parameters_are_refused_with_their_name(linear_model, sample):
    cases = [
        (dict(n_repeats=1), "n_repeats: must be at least 2"),
        (dict(noise_scale=-1.0), "noise_scale: must be a finite number > 0"),
        (dict(confidence=1.0), "confidence: must be strictly between 0 and 1"),
        (dict(feature_names=["a"]), "feature_names: must give 3 names, one per feature"),
        (dict(perturbation="shuffle"), "perturbation: must be one of noise, permute, ablate"),
        (dict(metric="r2"), "metric: must be one of rms, mae, loss-increase"),
        (dict(metric="loss-increase"), "y: labels are required for the loss-increase metric"),
        (dict(groups={"g": ["x1", "x9"]}), "groups: must name known features"),
        (dict(groups={"x1": ["x2"]}), "groups: need a new non-empty name"),
        (dict(ablate_value="median", perturbation="ablate"), "ablate_value: must be 'mean', 'zero' or a finite number"),
        (dict(interval="jackknife"), "interval: must be one of t, percentile, bca"),
        (dict(target_halfwidth=0.01, max_repeats=1), "max_repeats: must be at least n_repeats"),
        (dict(n_repeat=3), "options: must be fields of rnnimp.api.Options"),
        (dict(executor="spark"), "executor: must be 'local', 'ray'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidParameterError, match=message):
            sensitivity_importance(linear_model, sample, **kwargs)
    with pytest.raises(InvalidParameterError, match="X: must match the model's input shape"):
        sensitivity_importance(linear_model, sample[:, :3, :])


def test_format_summary_lists_features_by_rank(linear_model, sample):
    text = sensitivity_importance(linear_model, sample, n_repeats=2).format_summary()
    rows = text.splitlines()[2:]
    assert [row.split()[1] for row in rows] == ["x2", "x1", "x3"]
