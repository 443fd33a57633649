"""Loading user data for the jobs: ``.npy`` arrays or long-form Parquet tables.

A long-form table has one row per (series, time) step: a series id column, a
time column, and one numeric column per feature (every other column), e.g.::

    series  time   x1    x2
    10      0      0.3   1.2
    10      1      0.1   0.9
    3       0      ...

Rows may come in any order; series are ordered by their sorted id and steps
by their sorted time. Every series must have the same set of time values.
Paths are local or any URI that ``pyarrow.fs`` understands (``s3://...``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import validation
from .errors import InvalidParameterError
from .output import resolve

NPY = ".npy"
PARQUET = ".parquet"
EXTENSIONS = (NPY, PARQUET)


def load_series(
    path: str, *, parameter: str = "--data", series_column: str = "series", time_column: str = "time"
) -> tuple[np.ndarray, list[str] | None]:
    """The series in ``path`` as C-contiguous float32 (series, time, features), and the feature names.

    The names are None for ``.npy`` and the feature columns, in file order, for Parquet.
    """
    extension, filesystem, resolved = _locate(parameter, path)
    if extension == NPY:
        return validation.series_array(parameter, _read_npy(parameter, path, filesystem, resolved)), None
    table = _read_parquet(parameter, path, filesystem, resolved)
    return _long_to_array(parameter, table, series_column, time_column)


def load_labels(
    path: str,
    n_series: int,
    *,
    parameter: str = "--labels",
    series_column: str = "series",
    time_column: str = "time",
) -> np.ndarray:
    """The labels in ``path`` as C-contiguous float32 with first dimension ``n_series``.

    ``.npy``: any numeric, finite array of shape (n_series, ...). Parquet: the
    long form of :func:`load_series` with one or more label columns, returned
    as (series, time, label columns).
    """
    extension, filesystem, resolved = _locate(parameter, path)
    if extension == NPY:
        array = _read_npy(parameter, path, filesystem, resolved)
        if array.ndim == 0:
            raise InvalidParameterError(parameter, f"must have a first dimension of {n_series} series", array.shape)
        if array.size == 0:
            raise InvalidParameterError(parameter, "must not be empty", array.shape)
        labels = validation.series_array(parameter, array.reshape(array.shape[0], -1, 1)).reshape(array.shape)
    else:
        table = _read_parquet(parameter, path, filesystem, resolved)
        labels, _ = _long_to_array(parameter, table, series_column, time_column)
    if labels.shape[0] != n_series:
        raise InvalidParameterError(
            parameter, f"must hold labels for the {n_series} series of the data", f"{labels.shape[0]} series"
        )
    return labels


def feature_names_from_option(
    value: str | None, n_features: int, parameter: str = "--feature-names"
) -> list[str] | None:
    """The names in the comma-separated ``value`` (None stays None): ``n_features`` distinct, non-empty."""
    if value is None:
        return None
    return validation.distinct_names(parameter, [name.strip() for name in value.split(",")], n_features, value)


def write_long_parquet(
    series: np.ndarray,
    path: str,
    feature_names: Sequence[str],
    series_column: str = "series",
    time_column: str = "time",
) -> None:
    """Write ``series`` (series, time, features) to ``path`` in the long form :func:`load_series` reads.

    Series ids are 0..series-1, times 0..time-1, one float32 column per feature.
    """
    array = validation.series_array("series", series)
    n_series, n_time, n_features = array.shape
    names = validation.distinct_names("feature_names", [str(name) for name in feature_names], n_features,
                                      list(feature_names))
    if {series_column, time_column} & set(names) or series_column == time_column:
        raise InvalidParameterError(
            "feature_names", "must differ from the series and time columns and those from each other",
            [series_column, time_column, *names],
        )
    columns = {
        series_column: pa.array(np.repeat(np.arange(n_series, dtype=np.int64), n_time)),
        time_column: pa.array(np.tile(np.arange(n_time, dtype=np.int64), n_series)),
    }
    flat = array.reshape(n_series * n_time, n_features)
    columns.update({name: pa.array(flat[:, j]) for j, name in enumerate(names)})
    filesystem, resolved = resolve(path)
    pq.write_table(pa.table(columns), resolved, filesystem=filesystem)


def _locate(parameter: str, path: str) -> tuple[str, pafs.FileSystem, str]:
    """The extension, filesystem and resolved path of an existing file ``path``, else raise."""
    extension = os.path.splitext(path.split("?", 1)[0])[1].lower()
    if extension not in EXTENSIONS:
        raise InvalidParameterError(parameter, f"must be a file ending in {' or '.join(EXTENSIONS)}", path)
    try:
        filesystem, resolved = resolve(path)
        exists = filesystem.get_file_info(resolved).type == pafs.FileType.File
    except (OSError, pa.ArrowException) as error:
        raise InvalidParameterError(parameter, "must be an existing readable file", f"{path} ({error})") from error
    if not exists:
        raise InvalidParameterError(parameter, "must be an existing readable file", path)
    return extension, filesystem, resolved


def _read_npy(parameter: str, path: str, filesystem: pafs.FileSystem, resolved: str) -> np.ndarray:
    """The array in the ``.npy`` file, never unpickling: object arrays are refused."""
    try:
        with filesystem.open_input_file(resolved) as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(stream)
            if dtype.hasobject:
                raise InvalidParameterError(
                    parameter, "must hold numbers, not Python objects (pickled .npy files are not loaded)", str(dtype)
                )
            stream.seek(0)
            return np.load(stream, allow_pickle=False)
    except OSError as error:
        raise InvalidParameterError(parameter, "must be an existing readable file", f"{path} ({error})") from error
    except ValueError as error:
        if isinstance(error, InvalidParameterError):
            raise
        raise InvalidParameterError(parameter, "must be a valid .npy file", f"{path} ({error})") from error


def _read_parquet(parameter: str, path: str, filesystem: pafs.FileSystem, resolved: str) -> pa.Table:
    """The table in the Parquet file, dictionary columns decoded."""
    try:
        with filesystem.open_input_file(resolved) as stream:
            table = pq.ParquetFile(stream).read()
    except OSError as error:
        raise InvalidParameterError(parameter, "must be an existing readable file", f"{path} ({error})") from error
    except pa.ArrowException as error:
        raise InvalidParameterError(parameter, "must be a valid Parquet file", f"{path} ({error})") from error
    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _long_to_array(
    parameter: str, table: pa.Table, series_column: str, time_column: str
) -> tuple[np.ndarray, list[str]]:
    """The long-form ``table`` as float32 (series, time, value columns) and the value column names."""
    if validation.repeated(table.column_names):
        raise InvalidParameterError(parameter, "must not repeat a column name", validation.repeated(table.column_names))
    for column, role in ((series_column, "series id"), (time_column, "time")):
        if column not in table.column_names:
            raise InvalidParameterError(
                parameter, f"must have a {role} column named {column!r}", table.column_names
            )
    names = [name for name in table.column_names if name not in (series_column, time_column)]
    if not names:
        raise InvalidParameterError(
            parameter, f"must have value columns besides {series_column!r} and {time_column!r}", table.column_names
        )
    if table.num_rows == 0:
        raise InvalidParameterError(parameter, "must not be empty", "0 rows")
    values = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values[:, j] = _finite_column(parameter, table[name], name)
    series_ids, series_codes = _sorted_codes(parameter, table[series_column], series_column, ID_KINDS)
    times, time_codes = _sorted_codes(parameter, table[time_column], time_column, TIME_KINDS)
    n_series, n_time = len(series_ids), len(times)
    if table.num_rows < n_series * n_time:
        raise InvalidParameterError(
            parameter, "must have the same time steps in every series",
            _missing_step(series_ids, times, series_codes, time_codes),
        )
    cells = series_codes * n_time + time_codes
    rows_per_cell = np.bincount(cells, minlength=n_series * n_time)
    if table.num_rows > n_series * n_time or rows_per_cell.max() > 1:
        first = int(np.argmax(rows_per_cell > 1))
        raise InvalidParameterError(
            parameter, f"must have one row per ({series_column}, {time_column})",
            f"series {series_ids[first // n_time].as_py()!r} has {rows_per_cell[first]} rows at time "
            f"{times[first % n_time].as_py()!r} ({table.num_rows - np.count_nonzero(rows_per_cell)} repeated rows in all)",
        )
    array = np.empty_like(values)
    array[cells] = values
    return array.reshape(n_series, n_time, len(names)), names


def _is_id_type(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _is_time_type(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_temporal(data_type)


ID_KINDS = (_is_id_type, "integers or strings")
TIME_KINDS = (_is_time_type, "integers, floats, dates or timestamps")


def _sorted_codes(
    parameter: str, column: pa.ChunkedArray, name: str, kinds: tuple[Callable[[pa.DataType], bool], str]
) -> tuple[pa.Array, np.ndarray]:
    """The sorted distinct values of ``column`` and each row's index into them (int64, rows)."""
    accepts, described = kinds
    if not accepts(column.type):
        raise InvalidParameterError(parameter, f"column {name!r} must hold {described}", str(column.type))
    invalid = column.null_count
    if pa.types.is_floating(column.type):
        invalid += pc.sum(pc.is_nan(column)).as_py() or 0
    if invalid:
        raise InvalidParameterError(parameter, f"column {name!r} must not hold null or NaN values", f"{invalid} rows")
    encoded = pc.dictionary_encode(column.combine_chunks())
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy()]
    distinct = encoded.dictionary.take(order)
    return distinct, codes


def _missing_step(
    series_ids: pa.Array, times: pa.Array, series_codes: np.ndarray, time_codes: np.ndarray
) -> str:
    """Which series lacks which time step, for a table with fewer rows than series × steps."""
    n_series, n_time = len(series_ids), len(times)
    n_missing = n_series * n_time - len(np.unique(series_codes * n_time + time_codes))
    steps_per_series = np.bincount(series_codes, minlength=n_series)
    short = int(np.flatnonzero(steps_per_series < n_time)[0])
    present = np.zeros(n_time, dtype=bool)
    present[time_codes[series_codes == short]] = True
    absent = int(np.flatnonzero(~present)[0])
    holders = int(np.count_nonzero(time_codes == absent))
    return (
        f"series {series_ids[short].as_py()!r} has no row at time {times[absent].as_py()!r}, "
        f"which {holders} of {n_series} series have ({n_missing} steps missing in all)"
    )


def _finite_column(parameter: str, column: pa.ChunkedArray, name: str) -> np.ndarray:
    """``column`` as float32 (rows), refused unless numeric with only finite values."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
        raise InvalidParameterError(parameter, f"column {name!r} must be numeric", str(column.type))
    if column.null_count:
        raise InvalidParameterError(parameter, f"column {name!r} must hold only finite values", f"{column.null_count} nulls")
    original = column.to_numpy()
    with np.errstate(over="ignore"):
        values = original.astype(np.float32)
    if not np.isfinite(values).all():
        counts = {
            "NaN": np.count_nonzero(np.isnan(values)),
            "infinite": np.count_nonzero(np.isinf(original)) if pa.types.is_floating(column.type) else 0,
        }
        counts["beyond the float32 range"] = np.count_nonzero(np.isinf(values)) - counts["infinite"]
        raise InvalidParameterError(
            parameter, f"column {name!r} must hold only finite values",
            ", ".join(f"{count} {kind}" for kind, count in counts.items() if count),
        )
    return values
