"""Dataset input end to end: a dataset run gives the in-memory run's effects, bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.dataset as pads
import pytest

from rnnimp import InvalidParameterError
from rnnimp.api import sensitivity_importance
from rnnimp.dataset import Moments, write_dataset
from rnnimp.options import Options, input_moments, prepare

N_SERIES, N_TIME, N_FEATURES = 150, 4, 3


def small_lstm(n_time: int = N_TIME, n_features: int = N_FEATURES, outputs: int = 2):
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((n_time, n_features)), keras.layers.LSTM(5),
                             keras.layers.Dense(outputs)])


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(11)
    values = rng.normal(size=(N_SERIES, N_TIME, N_FEATURES)) * [1.0, 30.0, 0.01] + [0.0, 100.0, -1.0]
    return values.astype(np.float32)


@pytest.fixture(scope="module")
def dataset(sample, tmp_path_factory):
    """Files of 40 series (shards of 32 cross file boundaries), several row groups, shuffled rows."""
    folder = str(tmp_path_factory.mktemp("dw") / "data")
    ids = np.arange(N_SERIES) * 3 + 7
    write_dataset(sample, folder, series_per_file=40, series_ids=ids, rows_per_group=50, shuffle_seed=3)
    return folder


@pytest.fixture(scope="module")
def model():
    return small_lstm()


CASES = {
    "noise-relative": dict(perturbation="noise", noise_relative=0.5),
    "ablate-mean": dict(perturbation="ablate", groups={"g": ["x1", "x3"]}),
    "per-step": dict(perturbation="noise", noise_relative=0.3, per_step=True),
    "permute": dict(perturbation="permute"),
    "resample": dict(perturbation="noise", resample=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_dataset_gives_the_in_memory_effects(model, sample, dataset, case):
    options = dict(n_repeats=3, batch_size=16, shard_size=32, random_state=5, **CASES[case])
    in_memory = sensitivity_importance(model, sample, **options)
    from_dataset = sensitivity_importance(model, dataset, **options)
    np.testing.assert_array_equal(from_dataset.effects, in_memory.effects)
    assert from_dataset.metadata["configuration"] == in_memory.metadata["configuration"]
    assert from_dataset.metadata["data_fingerprint"] != in_memory.metadata["data_fingerprint"]


def test_pyarrow_dataset_and_dict_inputs(model, sample, dataset):
    options = dict(n_repeats=2, batch_size=16, shard_size=48, perturbation="ablate")
    expected = sensitivity_importance(model, sample, **options).effects
    np.testing.assert_array_equal(sensitivity_importance(model, pads.dataset(dataset), **options).effects, expected)
    name = model.inputs[0].name
    np.testing.assert_array_equal(sensitivity_importance(model, {name: dataset}, **options).effects, expected)


def test_statistics_are_the_exact_moments(model, sample, dataset):
    """Both paths record the correctly rounded exact statistics, not numpy's float64 sums."""
    exact = Moments.of(sample)
    for X in (sample, dataset):
        request = prepare(model, X, None, Options(perturbation="ablate", batch_size=16, shard_size=32))
        assert request.configuration["ablate_values"] == exact.means().tolist()
        request = prepare(model, X, None, Options(noise_relative=1.0, batch_size=16, shard_size=32))
        assert request.configuration["scales"] == exact.stds().tolist()
    assert input_moments([sample]) == [exact]


def test_the_driver_reads_no_rows_for_noise_with_a_fixed_scale(model, dataset, monkeypatch):
    from rnnimp import dataset as dataset_module

    def refuse(*args, **kwargs):
        raise AssertionError("the driver read a shard")

    monkeypatch.setattr(dataset_module, "read_shard", refuse)
    request = prepare(model, dataset, None, Options(noise_scale=0.1, batch_size=16, shard_size=32))
    assert request.sample.shape == (N_SERIES, N_TIME, N_FEATURES)


def test_bad_dataset_input_is_refused(model, tmp_path):
    with pytest.raises(InvalidParameterError, match="X: must be an existing directory"):
        prepare(model, str(tmp_path / "missing"), None, Options())
    write_dataset(np.zeros((4, N_TIME + 1, N_FEATURES), np.float32), str(tmp_path / "long"), 2)
    with pytest.raises(InvalidParameterError, match="input shape"):
        prepare(model, str(tmp_path / "long"), None, Options())
    with pytest.raises(InvalidParameterError, match="shard_cache_mib"):
        prepare(model, str(tmp_path / "long"), None, Options(shard_cache_mib=0))


def test_conditional_permutation_of_a_dataset_is_refused_naming_the_rule(model, dataset, sample):
    with pytest.raises(InvalidParameterError, match="perturbation: must not be conditional-permute for a dataset"):
        prepare(model, dataset, None, Options(perturbation="conditional-permute", condition_on=["x2"]))
    prepare(model, sample, None, Options(perturbation="conditional-permute", condition_on=["x2"]))  # in memory: fine


def test_masked_steps_are_left_out_of_the_dataset_statistics(model, sample, tmp_path):
    padded = sample.copy()
    padded[::3, -2:, :] = 0.0  # every third series ends with two padded steps
    folder = str(tmp_path / "padded")
    write_dataset(padded, folder, series_per_file=64)
    real = padded.reshape(-1, N_FEATURES)[np.any(padded.reshape(-1, N_FEATURES) != 0, axis=1)]
    options = Options(perturbation="ablate", mask_value=0.0, batch_size=16, shard_size=32)
    for X in (padded, folder):
        request = prepare(model, X, None, options)
        assert request.configuration["ablate_values"] == Moments.of(real).means().tolist()
    options = dict(n_repeats=2, batch_size=16, shard_size=32, noise_relative=0.5, mask_value=0.0)
    np.testing.assert_array_equal(sensitivity_importance(model, folder, **options).effects,
                                  sensitivity_importance(model, padded, **options).effects)


def test_the_fingerprint_follows_the_files_not_the_rows(model, sample, tmp_path):
    from rnnimp.runner import data_fingerprint

    folder = str(tmp_path / "fp")
    write_dataset(sample, folder, series_per_file=50)
    first = prepare(model, folder, None, Options()).sample
    assert data_fingerprint(prepare(model, folder, None, Options()).sample, None) == data_fingerprint(first, None)
    changed = sample.copy()
    changed[0, 0, 0] += 1.0
    write_dataset(changed[:50], str(tmp_path / "fp2"), series_per_file=50)
    os.replace(tmp_path / "fp2" / "part-00000.parquet", tmp_path / "fp" / "part-00000.parquet")
    assert data_fingerprint(prepare(model, folder, None, Options()).sample, None) != data_fingerprint(first, None)


def two_input_model():
    import keras

    keras.utils.set_random_seed(4)
    sequence = keras.Input((N_TIME, N_FEATURES), name="seq")
    static = keras.Input((2,), name="static")
    merged = keras.layers.Concatenate()([keras.layers.LSTM(4)(sequence), static])
    return keras.Model([sequence, static], keras.layers.Dense(1)(merged))


def test_a_dataset_input_beside_an_in_memory_static_input(sample, dataset):
    model = two_input_model()
    static = np.random.default_rng(2).normal(size=(N_SERIES, 2)).astype(np.float32)
    options = dict(n_repeats=2, batch_size=16, shard_size=32, perturbation="ablate", groups={"g": [0, 3]})
    expected = sensitivity_importance(model, {"seq": sample, "static": static}, **options).effects
    np.testing.assert_array_equal(
        sensitivity_importance(model, {"seq": dataset, "static": static}, **options).effects, expected)
    with pytest.raises(InvalidParameterError, match="static input"):
        prepare(model, {"seq": dataset, "static": dataset}, None, Options())


@pytest.fixture(scope="module")
def static_values():
    rng = np.random.default_rng(21)
    return (rng.normal(size=(N_SERIES, 2)) * [3.0, 0.1] + [5.0, -2.0]).astype(np.float32)


@pytest.fixture(scope="module")
def static_dataset(static_values, tmp_path_factory):
    """The dataset fixture's ids, files of 35 series (not the sequence files' 40), shuffled rows."""
    from rnnimp.dataset import write_static_dataset

    folder = str(tmp_path_factory.mktemp("dws") / "static")
    write_static_dataset(static_values, folder, series_per_file=35, series_ids=np.arange(N_SERIES) * 3 + 7,
                         rows_per_group=20, shuffle_seed=5, feature_names=["s1", "s2"])
    return folder


STATIC_CASES = {  # every case has a group mixing a sequence feature and a static one
    "noise-relative": dict(perturbation="noise", noise_relative=0.5, groups={"g": [1, 4]}),
    "ablate-mean": dict(perturbation="ablate", groups={"g": [0, 3]}),
    "permute": dict(perturbation="permute", groups={"g": [2, 3]}, resample=True),
}


@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_a_static_dataset_gives_the_in_memory_effects(sample, dataset, static_values, static_dataset, case):
    model = two_input_model()
    options = dict(n_repeats=2, batch_size=16, shard_size=32, random_state=5, **STATIC_CASES[case])
    expected = sensitivity_importance(model, {"seq": sample, "static": static_values}, **options)
    for X in ({"seq": dataset, "static": static_dataset}, {"seq": sample, "static": pads.dataset(static_dataset)}):
        result = sensitivity_importance(model, X, **options)
        np.testing.assert_array_equal(result.effects, expected.effects)
        assert result.metadata["configuration"] == expected.metadata["configuration"]


def test_static_dataset_statistics_and_cache_share(dataset, static_values, static_dataset):
    model = two_input_model()
    request = prepare(model, {"seq": dataset, "static": static_dataset}, None,
                      Options(perturbation="ablate", batch_size=16, shard_size=32, shard_cache_mib=1))
    seq, static = request.sample
    assert static.shape == (N_SERIES, 2) and static.ndim == 2 and request.inputs.kind(1) == "static"
    assert request.configuration["ablate_values"][3:] == Moments.of(static_values).means().tolist()
    assert static.budget_bytes == static.nbytes and seq.budget_bytes == (1 << 20) - static.nbytes


def test_a_static_dataset_of_other_series_is_refused(sample, dataset, static_values, tmp_path):
    from rnnimp.dataset import write_static_dataset

    model = two_input_model()
    write_static_dataset(static_values[1:], str(tmp_path / "fewer"), 50, series_ids=np.arange(1, N_SERIES) * 3 + 7)
    with pytest.raises(InvalidParameterError, match=r"X: must hold the same number of series in every input, "
                                                    r"got 'seq: 150, static: 149'"):
        prepare(model, {"seq": dataset, "static": str(tmp_path / "fewer")}, None, Options())
    write_static_dataset(static_values, str(tmp_path / "shifted"), 50, series_ids=np.arange(N_SERIES) * 3 + 8)
    with pytest.raises(InvalidParameterError, match=r"X static: must hold the series of input 'seq' \(150 series, "
                                                    r"ids 7..454\), got '150 series, ids 8..455'"):
        prepare(model, {"seq": dataset, "static": str(tmp_path / "shifted")}, None, Options())
    with pytest.raises(InvalidParameterError, match=r"same number of series"):
        prepare(model, {"seq": sample[:100], "static": str(tmp_path / "shifted")}, None, Options())
    from rnnimp.dataset import DatasetPlan

    with pytest.raises(InvalidParameterError, match=r"X\['seq'\]: input 'seq' is a sequence input and needs a "
                                                    r"long-form dataset.*of shape \(150, 2\)"):
        prepare(model, {"seq": DatasetPlan.open(str(tmp_path / "shifted"), static=True), "static": static_values},
                None, Options())
    with pytest.raises(InvalidParameterError, match=r"X\['seq'\]: must have a time column"):
        prepare(model, {"seq": str(tmp_path / "shifted"), "static": str(tmp_path / "shifted")}, None, Options())


def test_the_job_refuses_a_long_form_dataset_for_a_static_input(dataset, tmp_path):
    from jobtools import call_job

    two_input_model().save(tmp_path / "two.keras")
    done = call_job("jobs.importance", "--model", str(tmp_path / "two.keras"), "--data", f"seq={dataset}",
                    "--data", f"static={dataset}", "--out", str(tmp_path / "bad"), ray=False)
    assert done.returncode == 2
    assert "--data static: is for a static input and needs one row per series, without a 'time' column" in done.stderr
    assert not (tmp_path / "bad").exists()


def test_the_job_refuses_a_static_parquet_input_of_other_series(dataset, tmp_path):
    from jobtools import call_job
    from rnnimp.data import write_static_parquet

    two_input_model().save(tmp_path / "two.keras")
    static = np.zeros((N_SERIES, 2), np.float32)
    write_static_parquet(static, str(tmp_path / "static.parquet"), ["s1", "s2"], series_ids=np.arange(N_SERIES))
    done = call_job("jobs.importance", "--model", str(tmp_path / "two.keras"), "--data", f"seq={dataset}",
                    "--data", f"static={tmp_path / 'static.parquet'}", "--out", str(tmp_path / "out"), ray=False)
    assert done.returncode == 2
    assert "--data static: must hold the series of input 'seq' (150 series, ids 7..454)" in done.stderr


def test_the_job_refuses_a_segment_column_of_a_dataset_in_one_line(model, dataset, tmp_path):
    from jobtools import call_job

    model.save(tmp_path / "m.keras")
    done = call_job("jobs.importance", "--model", str(tmp_path / "m.keras"), "--data", dataset,
                    "--segment-column", "region", "--out", str(tmp_path / "out"), ray=False)
    assert done.returncode == 2
    assert "--segment-column: must name a column of a Parquet --data file read in memory" in done.stderr
    assert not (tmp_path / "out").exists()
