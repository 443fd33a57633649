import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rnnimp import data
from rnnimp.errors import InvalidParameterError


def long_table(series: np.ndarray, ids, times, names=("x1", "x2")) -> pa.Table:
    """The long form of ``series`` (series, time, features) with the given ids and times."""
    n_series, n_time, n_features = series.shape
    columns = {
        "series": pa.array(np.repeat(np.asarray(ids), n_time)),
        "time": pa.array(np.tile(np.asarray(times), n_series)),
    }
    flat = series.reshape(-1, n_features)
    columns.update({name: pa.array(flat[:, j]) for j, name in enumerate(names)})
    return pa.table(columns)


def write(table: pa.Table, tmp_path, name: str = "data.parquet") -> str:
    path = str(tmp_path / name)
    pq.write_table(table, path)
    return path


def shuffled(table: pa.Table, seed: int = 0) -> pa.Table:
    return table.take(np.random.default_rng(seed).permutation(table.num_rows))


def refused(match: str, load, *args, **kwargs) -> InvalidParameterError:
    with pytest.raises(InvalidParameterError, match=match) as caught:
        load(*args, **kwargs)
    return caught.value


@pytest.fixture
def sample() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(3, 4, 2))


def test_npy_round_trip(tmp_path, sample):
    path = str(tmp_path / "x.npy")
    np.save(path, sample)
    array, names = data.load_series(path)
    assert names is None
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, sample.astype(np.float32))


def test_parquet_round_trip_with_names(tmp_path, sample):
    path = str(tmp_path / "x.parquet")
    data.write_long_parquet(sample, path, ["speed", "load"])
    array, names = data.load_series(path)
    assert names == ["speed", "load"]
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, sample.astype(np.float32))


def test_parquet_shuffled_rows_and_sparse_ids(tmp_path, sample):
    table = shuffled(long_table(sample, ids=[10, 3, 7], times=[0, 5, 9, 20]))
    assert table.schema.field("x1").type == pa.float64()
    array, names = data.load_series(write(table, tmp_path))
    assert names == ["x1", "x2"]
    np.testing.assert_array_equal(array, sample[[1, 2, 0]].astype(np.float32))


def test_parquet_string_ids_timestamps_and_columns_in_file_order(tmp_path, sample):
    times = np.array(["2024-01-02", "2024-01-01", "2024-01-04", "2024-01-03"], dtype="datetime64[s]")
    table = shuffled(long_table(sample, ids=["b", "a", "c"], times=times, names=("z", "a")))
    table = table.select(["z", "time", "a", "series"])
    array, names = data.load_series(write(table, tmp_path), series_column="series", time_column="time")
    assert names == ["z", "a"]
    np.testing.assert_array_equal(array, sample[[1, 0, 2]][:, [1, 0, 3, 2]].astype(np.float32))


def test_parquet_integer_and_dictionary_columns(tmp_path):
    table = pa.table({
        "series": pa.array(["s1", "s1", "s0", "s0"]).dictionary_encode(),
        "time": [1, 0, 1, 0],
        "count": pa.array([4, 3, 2, 1], pa.int16()),
    })
    array, names = data.load_series(write(table, tmp_path))
    assert names == ["count"]
    np.testing.assert_array_equal(array[:, :, 0], [[1, 2], [3, 4]])


def test_parquet_boolean_column_and_repeated_column_names(tmp_path):
    table = pa.table({"series": [0, 0], "time": [1, 0], "on": [True, False]})
    array, names = data.load_series(write(table, tmp_path))
    assert names == ["on"] and array.tolist() == [[[0.0], [1.0]]]
    repeated = pa.Table.from_arrays([table["series"], table["time"], table["on"], table["on"]],
                                    names=["series", "time", "on", "on"])
    refused(re.escape("--data: must not repeat a column name, got ['on']"), data.load_series, write(repeated, tmp_path))


def test_custom_column_names(tmp_path, sample):
    path = str(tmp_path / "x.parquet")
    data.write_long_parquet(sample, path, ["a", "b"], series_column="unit", time_column="step")
    array, _ = data.load_series(path, series_column="unit", time_column="step")
    np.testing.assert_array_equal(array, sample.astype(np.float32))
    refused(r"--data: must have a series id column named 'series', got \['unit', 'step', 'a', 'b'\]", data.load_series, path)


def test_file_uri(tmp_path, sample):
    path = str(tmp_path / "x.parquet")
    data.write_long_parquet(sample, "file://" + path, ["a", "b"])
    array, _ = data.load_series("file://" + path)
    np.testing.assert_array_equal(array, sample.astype(np.float32))


def grid(ids=(0, 1), times=(0, 1, 2)) -> pa.Table:
    return long_table(np.arange(len(ids) * len(times) * 2, dtype=np.float64).reshape(len(ids), len(times), 2), ids, times)


def without(table: pa.Table, series, time) -> pa.Table:
    drop = pc.and_(pc.equal(table["series"], series), pc.equal(table["time"], time))
    return table.filter(pc.invert(drop))


@pytest.mark.parametrize(
    "table, message",
    [
        (without(grid(), 1, 2), "must have the same time steps in every series (or give --mask-value to pad series of "
         "different lengths), got "
         "'series 1 has no row at time 2, which 1 of 2 series have (1 steps missing in all)'"),
        (pa.concat_tables([grid(), grid(ids=(1,), times=(3,))]), "must have the same time steps in every series (or give --mask-value to pad series of "
         "different lengths), got 'series 0 has no row at time 3, which 1 of 2 series have (1 steps missing in all)'"),
        (pa.concat_tables([grid(), grid().slice(4, 1)]),
         "must have one row per (series, time), got 'series 1 has 2 rows at time 1 (1 repeated rows in all)'"),
        (grid().append_column("label", pa.array(list("abcdef"))), "column 'label' must be numeric, got 'string'"),
        (grid().set_column(2, "x1", pa.array([0, 1, np.nan, 3, np.nan, 5.0])),
         "column 'x1' must hold only finite values, got '2 NaN'"),
        (grid().set_column(3, "x2", pa.array([0, 1, np.inf, 3, -np.inf, np.nan])),
         "column 'x2' must hold only finite values, got '1 NaN, 2 infinite'"),
        (grid().set_column(2, "x1", pa.array([0, 1, None, 3, 4, 5.0])),
         "column 'x1' must hold only finite values, got '1 nulls'"),
        (grid().set_column(2, "x1", pa.array([0, 1, 2, 3, 4, 1e39])),
         "column 'x1' must hold only finite values, got '1 beyond the float32 range'"),
        (grid().slice(0, 0), "must not be empty, got '0 rows'"),
        (grid().drop_columns(["series"]), "must have a series id column named 'series', got ['time', 'x1', 'x2']"),
        (grid().drop_columns(["time"]), "must have a time column named 'time', got ['series', 'x1', 'x2']"),
        (grid().select(["series", "time"]),
         "must have value columns besides 'series' and 'time', got ['series', 'time']"),
        (grid().set_column(0, "series", pa.array([0, 0, 0, None, 1, 1])),
         "column 'series' must not hold null or NaN values, got '1 rows'"),
        (grid().set_column(1, "time", pa.array([0, 1, np.nan, 0, 1, 2])),
         "column 'time' must not hold null or NaN values, got '1 rows'"),
        (grid().set_column(1, "time", pa.array(list("abcabc"))),
         "column 'time' must hold integers, floats, dates or timestamps, got 'string'"),
        (grid().set_column(0, "series", pa.array([0.5] * 3 + [1.5] * 3)),
         "column 'series' must hold integers or strings, got 'double'"),
    ],
    ids=["missing-step", "extra-step", "duplicate", "string-column", "nan", "inf", "null", "overflow",
         "empty", "no-series-column", "no-time-column", "no-features", "null-id", "nan-time",
         "string-time", "float-id"],
)
def test_malformed_parquet_refused(tmp_path, table, message):
    with pytest.raises(InvalidParameterError) as caught:
        data.load_series(write(table, tmp_path))
    assert str(caught.value) == f"--data: {message}"
    assert caught.value.parameter == "--data"


def test_missing_step_names_string_ids(tmp_path):
    table = without(grid(ids=("a", "b")).cast(pa.schema([("series", pa.string()), ("time", pa.int64()),
                                                           ("x1", pa.float64()), ("x2", pa.float64())])), "a", 0)
    refused(re.escape("""got "series 'a' has no row at time 0, which 1 of 2 series have"""),
            data.load_series, write(table, tmp_path))


def test_npy_refusals(tmp_path):
    objects = str(tmp_path / "objects.npy")
    np.save(objects, np.array([[[1.0, "a"]]], dtype=object), allow_pickle=True)
    refused("--data: must hold numbers, not Python objects \\(pickled .npy files are not loaded\\), got 'object'",
            data.load_series, objects)
    flat = str(tmp_path / "flat.npy")
    np.save(flat, np.zeros((4, 3)))
    refused("--data: must have 3 dimensions \\(series, time, features\\), got \\(4, 3\\)", data.load_series, flat)
    nan = str(tmp_path / "nan.npy")
    np.save(nan, np.array([[[1.0, np.nan]]]))
    refused("--data: must hold only finite values", data.load_series, nan)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an array")
    refused("--data: must be a valid .npy file", data.load_series, str(garbage))


def test_path_refusals(tmp_path):
    refused("--data: must be a file ending in .npy or .parquet, got '.*x.csv'", data.load_series, str(tmp_path / "x.csv"))
    refused("--data: must be an existing readable file, got '.*missing.npy'", data.load_series, str(tmp_path / "missing.npy"))
    (tmp_path / "folder.parquet").mkdir()
    refused("--data: must be an existing readable file", data.load_series, str(tmp_path / "folder.parquet"))
    refused("--data: must be an existing readable file", data.load_series, "nosuchscheme://bucket/x.npy")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    refused("--data: must be a valid Parquet file", data.load_series, str(garbage))


def test_labels_npy(tmp_path):
    path = str(tmp_path / "y.npy")
    np.save(path, np.arange(5, dtype=np.int64))
    labels = data.load_labels(path, 5)
    assert labels.dtype == np.float32 and labels.shape == (5,)
    np.testing.assert_array_equal(labels, np.arange(5))
    np.save(path, np.ones((5, 4, 2)))
    assert data.load_labels(path, 5).shape == (5, 4, 2)


def test_labels_parquet(tmp_path, sample):
    table = shuffled(long_table(sample[:, :, :1], ids=[10, 3, 7], times=[0, 1, 2, 3], names=("y",)))
    labels = data.load_labels(write(table, tmp_path), 3)
    assert labels.shape == (3, 4, 1)
    np.testing.assert_array_equal(labels, sample[[1, 2, 0], :, :1].astype(np.float32))


def test_labels_refusals(tmp_path, sample):
    path = str(tmp_path / "y.npy")
    np.save(path, np.arange(5.0))
    refused("--labels: must hold labels for the 4 series of the data, got '5 series'", data.load_labels, path, 4)
    np.save(path, np.float64(1.0))
    refused("--labels: must have a first dimension of 4 series, got \\(\\)", data.load_labels, path, 4)
    np.save(path, np.zeros((4, 0)))
    refused("--labels: must not be empty, got \\(4, 0\\)", data.load_labels, path, 4)
    np.save(path, np.array([1.0, np.inf, 2.0, 3.0]))
    refused("--labels: must hold only finite values", data.load_labels, path, 4)
    np.save(path, np.array(["a", "b", "c", "d"]))
    refused("--labels: must hold real numbers", data.load_labels, path, 4)
    table = long_table(sample, ids=[0, 1, 2], times=[0, 1, 2, 3], names=("y1", "y2"))
    parquet = write(table, tmp_path, "y.parquet")
    refused("--labels: must hold labels for the 2 series of the data, got '3 series'", data.load_labels, parquet, 2)
    refused("--labels: must have one row per", data.load_labels, write(pa.concat_tables([table, table]), tmp_path), 3)


@pytest.mark.parametrize(
    "value, match",
    [
        ("a,b", "--feature-names: must give 3 names, one per feature, got 'a,b'"),
        ("a,b,c,d", "--feature-names: must give 3 names, one per feature, got 'a,b,c,d'"),
        ("a,,c", "--feature-names: must not contain empty names, got 'a,,c'"),
        ("a,b, ", "--feature-names: must not contain empty names"),
        ("a,b,a", "--feature-names: must not repeat a name \\(repeated: a\\), got 'a,b,a'"),
    ],
)
def test_feature_names_refused(value, match):
    refused(match, data.feature_names_from_option, value, 3)


def test_feature_names_accepted():
    assert data.feature_names_from_option(None, 3) is None
    assert data.feature_names_from_option("speed, load ,temp", 3) == ["speed", "load", "temp"]


def test_write_long_parquet_refuses_bad_names(tmp_path, sample):
    refused("feature_names: must give 2 names", data.write_long_parquet, sample, str(tmp_path / "x.parquet"), ["a"])
    refused("feature_names: must differ from the series and time columns",
            data.write_long_parquet, sample, str(tmp_path / "x.parquet"), ["a", "time"])


def test_large_long_form_loads(tmp_path):
    n_series, n_time, n_features = 200_000, 10, 3
    series = np.random.default_rng(2).normal(size=(n_series, n_time, n_features)).astype(np.float32)
    table = long_table(series, ids=np.arange(n_series)[::-1] * 7, times=np.arange(n_time), names=("a", "b", "c"))
    array, names = data.load_series(write(shuffled(table), tmp_path))
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(array, series[::-1])
