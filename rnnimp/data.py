"""Loading user data for the jobs: ``.npy`` arrays or long-form Parquet tables.

A long-form table has one row per (series, time) step: a series id column, a
time column, and one numeric column per feature (every other column), e.g.::

    series  time   x1    x2
    10      0      0.3   1.2
    10      1      0.1   0.9
    3       0      ...

Rows may come in any order; series are ordered by their sorted id and steps
by their sorted time. Every series must have the same set of time values,
unless a mask value is given: series of different lengths are then padded
with it to the longest series, at the end (``padding="post"``) or at the
start (``"pre"``), each series' rows in time order.

A static input (one row of covariates per series) is a ``.npy`` array
(series, features) or a Parquet table with the series id column and one
column per feature. Series of Parquet inputs are matched by id across inputs.

Paths are local or any URI that ``pyarrow.fs`` understands (``s3://...``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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
    path: str, *, parameter: str = "--data", series_column: str = "series", time_column: str = "time",
    mask_value: float | None = None, padding: str = "post",
) -> tuple[np.ndarray, list[str] | None]:
    """The series in ``path`` as C-contiguous float32 (series, time, features), and the feature names.

    The names are None for ``.npy`` and the feature columns, in file order,
    for Parquet. With ``mask_value``, long-form series may have different
    lengths: they are padded with it (see the module's notes).
    """
    loaded = load_input(path, SEQUENCE, parameter=parameter, series_column=series_column,
                        time_column=time_column, mask_value=mask_value, padding=padding)
    return loaded.array, loaded.feature_names


SEQUENCE, STATIC = "sequence", "static"


@dataclass(frozen=True)
class LoadedInput:
    """One model input's data: float32 (series, time, features) or (series, features).

    ``feature_names`` and ``series_ids`` (sorted) come from Parquet files; None for ``.npy``.
    """

    array: np.ndarray
    feature_names: list[str] | None
    series_ids: pa.Array | None


def load_input(
    path: str, kind: str, *, parameter: str = "--data", series_column: str = "series",
    time_column: str = "time", mask_value: float | None = None, padding: str = "post",
    drop_columns: Sequence[str] = (),
) -> LoadedInput:
    """A sequence input (``kind="sequence"``) or a static input (``"static"``) read from ``path``.

    ``drop_columns``: Parquet columns that are not features (e.g. a segment column), left out if present.
    """
    extension, filesystem, resolved = _locate(parameter, path)
    if extension == NPY:
        array = _read_npy(parameter, path, filesystem, resolved)
        if kind == SEQUENCE:
            if array.ndim == 2 and " " in parameter:  # --data NAME: one input of several
                raise InvalidParameterError(parameter, "is for a sequence input and needs (series, time, features)",
                                            f"a static array of shape {array.shape}")
            return LoadedInput(validation.series_array(parameter, array), None, None)
        if array.ndim != 2:
            raise InvalidParameterError(parameter, "is for a static input and needs (series, features)",
                                        f"an array of shape {array.shape}")
        flat = validation.series_array(parameter, array[:, None, :])
        return LoadedInput(np.ascontiguousarray(flat[:, 0, :]), None, None)
    table = _read_parquet(parameter, path, filesystem, resolved)
    table = table.drop_columns([name for name in drop_columns if name in table.column_names])
    if kind == STATIC:
        return _static_table(parameter, table, series_column, time_column)
    if mask_value is None:
        array, names, ids = _long_to_array(parameter, table, series_column, time_column, with_ids=True)
    else:
        array, names, ids = _long_to_padded(parameter, table, series_column, time_column, mask_value, padding)
    return LoadedInput(array, names, ids)


def match_series(loaded: Mapping[str, LoadedInput], parameter: str = "--data") -> None:
    """Refuse inputs whose series do not match: ids across Parquet inputs, then counts.

    The message names the input and an example series id.
    """
    items = list(loaded.items())
    with_ids = [(name, item.series_ids) for name, item in items if item.series_ids is not None]
    for (name_a, ids_a), (name_b, ids_b) in zip(with_ids, with_ids[1:]):
        if ids_a.type != ids_b.type:
            raise InvalidParameterError(f"{parameter} {name_b}", f"must use series ids of the type of input "
                                        f"{name_a!r} ({ids_a.type})", str(ids_b.type))
        if not ids_a.equals(ids_b):
            a, b = set(ids_a.to_pylist()), set(ids_b.to_pylist())
            if a - b:
                raise InvalidParameterError(f"{parameter} {name_b}", f"must hold every series of input {name_a!r} "
                                            "(series are matched by id)", f"series {sorted(a - b)[0]!r} is missing "
                                            f"({len(a - b)} missing)")
            raise InvalidParameterError(f"{parameter} {name_b}", f"must hold only series of input {name_a!r} "
                                        "(series are matched by id)", f"series {sorted(b - a)[0]!r}, "
                                        f"absent from {name_a} ({len(b - a)} such series)")
    first_name, first = items[0]
    for name, other in items[1:]:
        if len(other.array) != len(first.array):
            raise InvalidParameterError(
                f"{parameter} {name}", f"must hold the same number of series as input {first_name!r} "
                f"({len(first.array)})", f"{len(other.array)} series")


def parse_data_options(values: Sequence[str], input_names: Sequence[str], parameter: str = "--data") -> dict[str, str]:
    """``--data`` values as {input name: path}.

    ``PATH`` for a single-input model, else ``NAME=PATH`` once per model input.
    """
    names = list(input_names)
    if not values:
        raise InvalidParameterError(parameter, "is required", None)
    paths: dict[str, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if separator and name in names:
            if name in paths:
                raise InvalidParameterError(parameter, "must name each model input once", value)
            paths[name] = path
        elif len(names) == 1 and len(values) == 1:
            paths[names[0]] = value
        else:
            raise InvalidParameterError(
                parameter, f"must be NAME=PATH with NAME an input of the model ({', '.join(names)})", value)
    missing = [name for name in names if name not in paths]
    if missing:
        raise InvalidParameterError(parameter, f"must give data for every model input ({', '.join(names)})",
                                    f"no --data {missing[0]}=PATH")
    return {name: paths[name] for name in names}


def write_static_parquet(array: np.ndarray, path: str, feature_names: Sequence[str],
                         series_column: str = "series", series_ids: Sequence | None = None) -> None:
    """Write static covariates (series, features) as one row per series: the id column, one column per feature."""
    values = np.asarray(array, dtype=np.float32)
    ids = np.arange(len(values), dtype=np.int64) if series_ids is None else series_ids
    columns = {series_column: pa.array(ids)}
    columns.update({str(name): pa.array(values[:, j]) for j, name in enumerate(feature_names)})
    filesystem, resolved = resolve(path)
    pq.write_table(pa.table(columns), resolved, filesystem=filesystem)


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
    lengths: Sequence[int] | None = None,
) -> None:
    """Write ``series`` (series, time, features) to ``path`` in the long form :func:`load_series` reads.

    Series ids are 0..series-1, times 0..time-1, one float32 column per
    feature. ``lengths``: write only the first ``lengths[s]`` steps of series s
    (series of different lengths; their padding is left out).
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
    table = pa.table(columns)
    if lengths is not None:
        keep = np.tile(np.arange(n_time), n_series) < np.repeat(np.asarray(lengths), n_time)
        table = table.filter(pa.array(keep))
    filesystem, resolved = resolve(path)
    pq.write_table(table, resolved, filesystem=filesystem)


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


def _value_columns(parameter: str, table: pa.Table, series_column: str, columns: Sequence[str]) -> list[str]:
    """The value columns of ``table`` (all but the id ones), refusing a table without any or without rows."""
    if validation.repeated(table.column_names):
        raise InvalidParameterError(parameter, "must not repeat a column name", validation.repeated(table.column_names))
    names = [name for name in table.column_names if name not in columns]
    if not names:
        raise InvalidParameterError(
            parameter, f"must have value columns besides {', '.join(map(repr, columns))}", table.column_names)
    if table.num_rows == 0:
        raise InvalidParameterError(parameter, "must not be empty", "0 rows")
    return names


def _static_table(parameter: str, table: pa.Table, series_column: str, time_column: str) -> LoadedInput:
    """A static input's table: one row per series, the series id column and one column per feature."""
    if series_column not in table.column_names:
        raise InvalidParameterError(parameter, f"must have a series id column named {series_column!r}",
                                    table.column_names)
    if time_column in table.column_names:
        raise InvalidParameterError(parameter, f"is for a static input and needs one row per series, without a "
                                    f"{time_column!r} column", table.column_names)
    names = _value_columns(parameter, table, series_column, [series_column])
    ids, codes = _sorted_codes(parameter, table[series_column], series_column, ID_KINDS)
    counts = np.bincount(codes, minlength=len(ids))
    if counts.max() > 1:
        first = int(np.argmax(counts > 1))
        raise InvalidParameterError(parameter, "must have one row per series (a static input)",
                                    f"series {ids[first].as_py()!r} has {counts[first]} rows")
    values = np.empty((len(ids), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values[codes, j] = _finite_column(parameter, table[name], name)
    return LoadedInput(values, names, ids)


def _long_to_padded(
    parameter: str, table: pa.Table, series_column: str, time_column: str, mask_value: float, padding: str
) -> tuple[np.ndarray, list[str], pa.Array]:
    """Long-form series of any lengths as float32 (series, longest, values), padded with ``mask_value``.

    Each series' rows in time order; padding at the end (``post``) or the start (``pre``).
    """
    for column, role in ((series_column, "series id"), (time_column, "time")):
        if column not in table.column_names:
            raise InvalidParameterError(parameter, f"must have a {role} column named {column!r}", table.column_names)
    names = _value_columns(parameter, table, series_column, [series_column, time_column])
    values = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values[:, j] = _finite_column(parameter, table[name], name)
    series_ids, series_codes = _sorted_codes(parameter, table[series_column], series_column, ID_KINDS)
    times, time_codes = _sorted_codes(parameter, table[time_column], time_column, TIME_KINDS)
    order = np.lexsort((time_codes, series_codes))
    series_sorted, times_sorted = series_codes[order], time_codes[order]
    repeated = np.flatnonzero((series_sorted[1:] == series_sorted[:-1]) & (times_sorted[1:] == times_sorted[:-1]))
    if len(repeated):
        first = repeated[0]
        raise InvalidParameterError(
            parameter, f"must have one row per ({series_column}, {time_column})",
            f"series {series_ids[series_sorted[first]].as_py()!r} has several rows at time "
            f"{times[times_sorted[first]].as_py()!r} ({len(repeated)} repeated rows in all)")
    lengths = np.bincount(series_sorted, minlength=len(series_ids))
    longest = int(lengths.max())
    starts = np.cumsum(lengths) - lengths
    position = np.arange(len(order)) - starts[series_sorted]
    if padding == "pre":
        position += longest - lengths[series_sorted]
    array = np.full((len(series_ids), longest, len(names)), np.float32(mask_value), dtype=np.float32)
    array[series_sorted, position] = values[order]
    return array, names, series_ids


def _long_to_array(
    parameter: str, table: pa.Table, series_column: str, time_column: str, with_ids: bool = False
):
    """The long-form ``table`` as float32 (series, time, value columns) and the value column names.

    With ``with_ids``, also the sorted series ids.
    """
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
            parameter, "must have the same time steps in every series (or give --mask-value to pad series of "
            "different lengths)",
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
    if with_ids:
        return array.reshape(n_series, n_time, len(names)), names, series_ids
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


def parquet_columns(path: str, parameter: str = "--data") -> list[str]:
    """The column names of a Parquet file ([] for a .npy file)."""
    extension, filesystem, resolved = _locate(parameter, path)
    if extension != PARQUET:
        return []
    with filesystem.open_input_file(resolved) as stream:
        return list(pq.ParquetFile(stream).schema_arrow.names)


def segment_labels(path: str, segment_column: str, *, parameter: str = "--segment-column",
                   series_column: str = "series") -> np.ndarray:
    """The segment of each series, in sorted series-id order (the order of the loaded arrays).

    ``segment_column`` must be constant within each series and hold no nulls;
    refused otherwise, naming a series whose rows disagree.
    """
    extension, filesystem, resolved = _locate(parameter, path)
    table = _read_parquet(parameter, path, filesystem, resolved)
    column = table[segment_column]
    if column.null_count:
        raise InvalidParameterError(parameter, f"column {segment_column!r} must not hold nulls",
                                    f"{column.null_count} rows")
    ids, codes = _sorted_codes(parameter, table[series_column], series_column, ID_KINDS)
    segments, segment_codes = _sorted_codes(parameter, column, segment_column,
                                            (lambda data_type: not pa.types.is_nested(data_type), "plain values"))
    first = np.full(len(ids), -1, dtype=np.int64)
    first[codes[::-1]] = segment_codes[::-1]  # each series' segment in its first row
    varying = np.flatnonzero(first[codes] != segment_codes)
    if varying.size:
        series = codes[varying[0]]
        values = sorted({segments[c].as_py() for c in segment_codes[codes == series]}, key=str)
        raise InvalidParameterError(parameter, f"column {segment_column!r} must be constant within each series "
                                    f"(one segment per series)", f"series {ids[series].as_py()!r} has "
                                    f"{', '.join(map(repr, values[:3]))}")
    return np.asarray(segments.to_pylist(), dtype=object)[first]
