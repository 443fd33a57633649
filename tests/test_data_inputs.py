"""Loading several inputs, static covariates and series of different lengths; their refusals."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobtools import call_job
from rnnimp import InvalidParameterError, data, sensitivity_importance
from test_inputs import two_input_linear_model

T, F = 6, 2


@pytest.fixture(scope="module")
def uneven():
    """Series of 2..6 steps, values in [0.5, 1.5) (never the mask value 0), and their lengths."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, size=(40, T, F)).astype(np.float32)
    lengths = rng.integers(2, T + 1, size=40)
    lengths[0] = T
    return x, lengths


def padded(x, lengths, padding, value=0.0):
    out = np.full_like(x, value)
    for s, n in enumerate(lengths):
        if padding == "post":
            out[s, :n] = x[s, :n]
        else:
            out[s, T - n:] = x[s, :n]
    return out


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_long_form_of_uneven_series_equals_the_padded_array(tmp_path, uneven, padding):
    x, lengths = uneven
    path = str(tmp_path / "uneven.parquet")
    data.write_long_parquet(x, path, ["a", "b"], lengths=lengths)
    table = pq.read_table(path)
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), path)  # any row order
    loaded, names = data.load_series(path, mask_value=0.0, padding=padding)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(loaded, padded(x, lengths, padding))
    np.save(tmp_path / "padded.npy", padded(x, lengths, padding))
    from_npy, _ = data.load_series(str(tmp_path / "padded.npy"))
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((T, F)), keras.layers.Masking(0.0), keras.layers.GRU(3),
                              keras.layers.Dense(1)])
    a = sensitivity_importance(model, loaded, n_repeats=2, padding=padding, perturbation="permute")
    b = sensitivity_importance(model, from_npy, n_repeats=2, padding=padding, perturbation="permute")
    np.testing.assert_array_equal(a.effects, b.effects)
    assert (a.effects > 0).all()


def test_uneven_series_without_a_mask_value_are_refused_naming_it(tmp_path, uneven):
    x, lengths = uneven
    path = str(tmp_path / "uneven.parquet")
    data.write_long_parquet(x, path, ["a", "b"], lengths=lengths)
    with pytest.raises(InvalidParameterError, match=r"--data: must have the same time steps in every series "
                       r"\(or give --mask-value to pad series of different lengths\)"):
        data.load_series(path)


def test_static_parquet_and_npy(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = str(tmp_path / "static.parquet")
    data.write_static_parquet(values[::-1], path, ["age", "size", "dose"], series_ids=[13, 12, 11, 10])
    loaded = data.load_input(path, data.STATIC)
    np.testing.assert_array_equal(loaded.array, values)  # ordered by sorted id
    assert loaded.feature_names == ["age", "size", "dose"]
    assert loaded.series_ids.to_pylist() == [10, 11, 12, 13]
    np.save(tmp_path / "static.npy", values)
    np.testing.assert_array_equal(data.load_input(str(tmp_path / "static.npy"), data.STATIC).array, values)
    with pytest.raises(InvalidParameterError, match="is for a sequence input and needs \\(series, time, features\\)"):
        data.load_input(str(tmp_path / "static.npy"), data.SEQUENCE, parameter="--data seq")
    np.save(tmp_path / "seq.npy", values[:, :, None])
    with pytest.raises(InvalidParameterError, match="is for a static input and needs \\(series, features\\)"):
        data.load_input(str(tmp_path / "seq.npy"), data.STATIC)
    pq.write_table(pa.table({"series": [1, 1], "age": [1.0, 2.0]}), str(tmp_path / "twice.parquet"))
    with pytest.raises(InvalidParameterError, match="must have one row per series .*'series 1 has 2 rows'"):
        data.load_input(str(tmp_path / "twice.parquet"), data.STATIC)


def test_series_are_matched_by_id_across_parquet_inputs(tmp_path):
    seq = np.random.default_rng(0).random((3, 2, 1), dtype=np.float32)
    data.write_long_parquet(seq, str(tmp_path / "seq.parquet"), ["x"])
    data.write_static_parquet(np.ones((3, 1)), str(tmp_path / "ok.parquet"), ["c"])
    data.write_static_parquet(np.ones((4, 1)), str(tmp_path / "other.parquet"), ["c"], series_ids=[0, 1, 2, 7])
    data.write_static_parquet(np.ones((2, 1)), str(tmp_path / "short.parquet"), ["c"])
    load = lambda name, kind: data.load_input(str(tmp_path / f"{name}.parquet"), kind)  # noqa: E731
    data.match_series({"seq": load("seq", data.SEQUENCE), "static": load("ok", data.STATIC)})
    with pytest.raises(InvalidParameterError, match=r"--data static: must hold only series of input 'seq' "
                       r"\(series are matched by id\), got 'series 7, absent from seq \(1 such series\)'"):
        data.match_series({"seq": load("seq", data.SEQUENCE), "static": load("other", data.STATIC)})
    with pytest.raises(InvalidParameterError, match=r"--data static: must hold every series of input 'seq' "
                       r"\(series are matched by id\), got 'series 2 is missing \(1 missing\)'"):
        data.match_series({"seq": load("seq", data.SEQUENCE), "static": load("short", data.STATIC)})
    data.write_static_parquet(np.ones((4, 1)), str(tmp_path / "more.parquet"), ["c"], series_ids=[0, 1, 2, 3])
    data.write_static_parquet(np.ones((4, 1)), str(tmp_path / "fewer.parquet"), ["c"], series_ids=[0, 1, 2, 9])
    with pytest.raises(InvalidParameterError, match=r"--data b: must hold every series of input 'a' .* "
                       r"got 'series 3 is missing \(1 missing\)'"):
        data.match_series({"a": load("more", data.STATIC), "b": load("fewer", data.STATIC)})
    np.save(tmp_path / "short.npy", np.ones((2, 1), np.float32))
    with pytest.raises(InvalidParameterError, match=r"--data static: must hold the same number of series as "
                       r"input 'seq' \(3\), got '2 series'"):
        data.match_series({"seq": load("seq", data.SEQUENCE),
                           "static": data.load_input(str(tmp_path / "short.npy"), data.STATIC)})


def test_parse_data_options():
    assert data.parse_data_options(["x.npy"], ["seq"]) == {"seq": "x.npy"}
    assert data.parse_data_options(["static=c.npy", "seq=s.parquet"], ["seq", "static"]) == {
        "seq": "s.parquet", "static": "c.npy"}
    assert data.parse_data_options(["s3://b/x.parquet?endpoint_override=h:1"], ["seq"]) == {
        "seq": "s3://b/x.parquet?endpoint_override=h:1"}


@pytest.fixture(scope="module")
def two_input_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    two_input_linear_model().save(folder / "model.keras")
    rng = np.random.default_rng(0)
    np.save(folder / "seq.npy", rng.random((20, 4, 2), dtype=np.float32))
    np.save(folder / "static.npy", rng.random((20, 3), dtype=np.float32))
    np.save(folder / "static_short.npy", rng.random((10, 3), dtype=np.float32))
    return folder


@pytest.mark.parametrize("args, message", [
    (["--data", "seq={f}/seq.npy", "--data", "extra={f}/static.npy"],
     "--data: must be NAME=PATH with NAME an input of the model (seq, static), got 'extra="),
    (["--data", "seq={f}/seq.npy"], "--data: must give data for every model input (seq, static), "
     "got 'no --data static=PATH'"),
    (["--data", "{f}/seq.npy"], "--data: must be NAME=PATH with NAME an input of the model"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static_short.npy"],
     "--data static: must hold the same number of series as input 'seq' (20), got '10 series'"),
    (["--data", "seq={f}/static.npy", "--data", "static={f}/static.npy"],
     "--data seq: is for a sequence input and needs (series, time, features), got 'a static array of shape (20, 3)'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/seq.npy"],
     "--data static: is for a static input and needs (series, features), got 'an array of shape (20, 4, 2)'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static.npy", "--mask-value", "nan"],
     "--mask-value: must be a finite number, or NAME=number, got 'nan'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static.npy", "--mask-value", "other=0"],
     "--mask-value: must name inputs of the model (seq, static), got 'other'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static.npy", "--mask-value", "static=0"],
     "--mask-value: applies to sequence inputs only, got 'static is a static input'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static.npy", "--padding", "middle"],
     "argument --padding: invalid choice: 'middle'"),
    (["--data", "seq={f}/seq.npy", "--data", "static={f}/static.npy", "--per-step", "--group", "g=seq.x1,static.x1"],
     "--group: must not mix static and sequence features in a time-step map (per_step), got 'g'"),
])
def test_cli_refusals_are_one_line_exit_2_and_nothing_written(two_input_files, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.replace("{f}", str(two_input_files)) for a in args]
    done = call_job("jobs.importance", "--model", str(two_input_files / "model.keras"), *args, "--out", str(out),
                    ray=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
