"""Partitioned long-form Parquet datasets: planned on the driver, read by shard on the workers.

A dataset is a local directory or a ``pyarrow.fs`` URI prefix (``s3://bucket/prefix/``)
holding Parquet files in the long form :func:`rnnimp.data.load_series` reads: a
series id column, a time column and one numeric column per feature; rows in any
order within a file. Every series lies wholly inside one file. A static
input's dataset (``DatasetPlan.open(..., static=True)``) holds one row per
series instead: the series id column and one column per feature, no time
column; its shards are float32 (series, features), read the same way (each
file's rows ordered by id on reading; a repeated id is refused naming the
file and the id).

Series order: the same as the in-memory reader's, series sorted by id (steps by
time), so series index ``i`` (0..N-1) is the same series in a dataset run and in
an in-memory run of the same data, and the noise, permutation and bootstrap
streams (keyed by series index) match. To keep the driver free of per-series
data, files must hold disjoint id ranges: the files are ordered by their
smallest id and a file's series take the next consecutive indices. Files whose
id ranges interleave are refused (a series found in two files is refused
naming both files and the series).

Driver side (:class:`DatasetPlan`): only Parquet footers (schema, row counts,
the id column's row-group min/max statistics) and the time column of the first
file are read, never a value column; a file without statistics has its id
column read. Worker side (:class:`ShardReader`): one shard (a range of series
indices, the same fixed-size shards as the in-memory run's
:class:`rnnimp.method.Layout`, so batches and per-batch sums are the same) is
read from the file(s) that hold it, row groups pruned by the id range, into
float32 (series, time, features) (rows already in (id, time) order are
reshaped without sorting), and kept in a cache under a byte budget that
evicts the most recently used shard (units sweep the shards in order).

Statistics (:class:`Moments`): per-feature means and standard deviations from
per-shard partial sums that are exact (integers), so they combine in any order
and split to the same float64 result as the whole array.

Permutation (:func:`permutation_donors`): the donors of one shard under the
in-memory definition (one permutation of all series), grouped by the shard that
holds them, so a worker reads only those rows' shards; no gathering.

No Ray here: :mod:`rnnimp.distributed` runs these functions in its workers.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import validation
from .data import ID_KINDS, TIME_KINDS, _finite_column, _long_to_array, _sorted_codes
from .errors import InvalidParameterError
from .method import Shard
from .output import resolve

if TYPE_CHECKING:  # imported where used: pyarrow.dataset imports pandas (0.2 s of every job's start)
    import pyarrow.dataset as pads


def _pads():
    """``pyarrow.dataset``, imported on first use."""
    import pyarrow.dataset

    return pyarrow.dataset

# ---------------------------------------------------------------------------------------------
# Driver side: the plan


@dataclass(frozen=True)
class DatasetFile:
    """One Parquet file of a dataset: its series are indices ``first_series .. first_series+n_series-1``."""

    path: str
    n_rows: int
    n_series: int
    first_series: int
    min_id: Any
    max_id: Any
    n_row_groups: int

    @property
    def stop_series(self) -> int:
        return self.first_series + self.n_series


@dataclass(frozen=True)
class Piece:
    """Series ``start .. stop-1`` of file ``file`` (indices local to the file, in id order)."""

    file: int
    start: int
    stop: int


@dataclass(frozen=True)
class DatasetPlan:
    """What the driver knows of a dataset: files, counts, schema, feature names, time values.

    ``files`` are in series order; ``times`` the sorted time values every series has.
    Picklable: workers receive it and open the files themselves.
    """

    location: str
    filesystem: pafs.FileSystem
    files: tuple[DatasetFile, ...]
    schema: pa.Schema
    feature_names: tuple[str, ...]
    times: tuple[Any, ...]
    series_column: str = "series"
    time_column: str = "time"
    parameter: str = "--data"
    static: bool = False  # a static input: one row per series, no time column (``times`` is empty)

    @property
    def n_series(self) -> int:
        return self.files[-1].stop_series

    @property
    def n_time(self) -> int:
        return len(self.times)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def row_shape(self) -> tuple[int, ...]:
        """One series' shape: (time, features), or (features,) for a static input."""
        return (self.n_features,) if self.static else (self.n_time, self.n_features)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the whole sample: (series, time, features), or (series, features) for a static input."""
        return (self.n_series, *self.row_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole sample as float32."""
        return 4 * self.n_series * math.prod(self.row_shape)

    @classmethod
    def open(cls, source: str | pads.FileSystemDataset, *, parameter: str = "--data",
             series_column: str = "series", time_column: str = "time", static: bool = False) -> "DatasetPlan":
        """Plan the dataset at ``source`` (directory, URI prefix or pyarrow dataset) from its metadata.

        ``static``: the dataset holds a static input, one row per series (the
        series id column and one column per feature, no time column).
        """
        filesystem, paths, location = _list_files(parameter, source)
        footers = [_footer(parameter, filesystem, path) for path in paths]  # one read per file
        schema = _common_schema(parameter, paths, footers)
        if static:
            return cls._open_static(parameter, filesystem, paths, location, footers, schema, series_column,
                                    time_column)
        for column, role, kinds in ((series_column, "series id", ID_KINDS), (time_column, "time", TIME_KINDS)):
            if column not in schema.names:
                raise InvalidParameterError(parameter, f"must have a {role} column named {column!r}", schema.names)
            if not kinds[0](schema.field(column).type):
                raise InvalidParameterError(parameter, f"column {column!r} must hold {kinds[1]}",
                                            str(schema.field(column).type))
        feature_names = tuple(name for name in schema.names if name not in (series_column, time_column))
        if not feature_names:
            raise InvalidParameterError(
                parameter, f"must have value columns besides {series_column!r} and {time_column!r}", schema.names)
        times = _time_values(parameter, filesystem, paths[0], time_column)
        entries = [_describe_file(parameter, filesystem, path, footer, schema.get_field_index(series_column),
                                  series_column) for path, footer in zip(paths, footers)]
        entries.sort(key=lambda entry: entry[2])  # by smallest id
        for (previous, _, _, previous_max, _), (path, _, min_id, _, _) in zip(entries, entries[1:]):
            if not previous_max < min_id:
                _refuse_overlap(parameter, filesystem, previous, path, series_column)
        files: list[DatasetFile] = []
        first = 0
        for path, n_rows, min_id, max_id, n_groups in entries:
            if n_rows % len(times):
                raise InvalidParameterError(
                    parameter, f"must have the same {len(times)} time steps in every series",
                    f"{path} has {n_rows} rows, not a multiple of {len(times)}")
            files.append(DatasetFile(path, n_rows, n_rows // len(times), first, min_id, max_id, n_groups))
            first += n_rows // len(times)
        return cls(location, filesystem, tuple(files), schema, feature_names, tuple(times),
                   series_column, time_column, parameter)

    @classmethod
    def _open_static(cls, parameter: str, filesystem: pafs.FileSystem, paths: Sequence[str], location: str,
                     footers: Sequence[pq.FileMetaData], schema: pa.Schema, series_column: str,
                     time_column: str) -> "DatasetPlan":
        """The plan of a static input's dataset: each file's rows are its series (one row per id, checked
        by the workers when they read it), files ordered by their smallest id."""
        if series_column not in schema.names:
            raise InvalidParameterError(parameter, f"must have a series id column named {series_column!r}",
                                        schema.names)
        if not ID_KINDS[0](schema.field(series_column).type):
            raise InvalidParameterError(parameter, f"column {series_column!r} must hold {ID_KINDS[1]}",
                                        str(schema.field(series_column).type))
        if time_column in schema.names:
            raise InvalidParameterError(parameter, f"is for a static input and needs one row per series, without a "
                                        f"{time_column!r} column", schema.names)
        feature_names = tuple(name for name in schema.names if name != series_column)
        if not feature_names:
            raise InvalidParameterError(parameter, f"must have value columns besides {series_column!r}",
                                        schema.names)
        entries = [_describe_file(parameter, filesystem, path, footer, schema.get_field_index(series_column),
                                  series_column) for path, footer in zip(paths, footers)]
        entries.sort(key=lambda entry: entry[2])  # by smallest id
        for (previous, _, _, previous_max, _), (path, _, min_id, _, _) in zip(entries, entries[1:]):
            if not previous_max < min_id:
                _refuse_overlap(parameter, filesystem, previous, path, series_column)
        files, first = [], 0
        for path, n_rows, min_id, max_id, n_groups in entries:
            files.append(DatasetFile(path, n_rows, n_rows, first, min_id, max_id, n_groups))
            first += n_rows
        return cls(location, filesystem, tuple(files), schema, feature_names, (), series_column, time_column,
                   parameter, static=True)

    def pieces(self, shard: Shard) -> list[Piece]:
        """The file ranges that hold series ``shard.start .. shard.stop-1``, in order."""
        if not 0 <= shard.start < shard.stop <= self.n_series:
            raise ValueError(f"shard {shard} outside the {self.n_series} series of the dataset")
        firsts = np.array([f.first_series for f in self.files])
        index = int(np.searchsorted(firsts, shard.start, side="right")) - 1
        pieces = []
        while index < len(self.files) and self.files[index].first_series < shard.stop:
            file = self.files[index]
            start, stop = max(shard.start, file.first_series), min(shard.stop, file.stop_series)
            if start < stop:
                pieces.append(Piece(index, start - file.first_series, stop - file.first_series))
            index += 1
        return pieces


def _list_files(parameter: str, source: str | pads.FileSystemDataset) -> tuple[pafs.FileSystem, list[str], str]:
    """The filesystem, the sorted Parquet file paths and a printable location of ``source``."""
    if _is_pyarrow_dataset(source):
        paths = sorted(source.files)
        if not paths:
            raise InvalidParameterError(parameter, "must hold Parquet files", "an empty pyarrow dataset")
        return source.filesystem, paths, f"pyarrow dataset of {len(paths)} files"
    try:
        filesystem, folder = resolve(source)
        info = filesystem.get_file_info(folder)
        if info.type != pafs.FileType.Directory:
            raise InvalidParameterError(parameter, "must be an existing directory or URI prefix of Parquet files",
                                        source)
        found = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    except (OSError, pa.ArrowException) as error:
        raise InvalidParameterError(parameter, "must be a readable directory or URI prefix",
                                    f"{source} ({error})") from error
    paths = sorted(info.path for info in found if info.type == pafs.FileType.File
                   and info.path.endswith(".parquet") and not os.path.basename(info.path).startswith((".", "_")))
    if not paths:
        raise InvalidParameterError(parameter, "must hold .parquet files", source)
    return filesystem, paths, source


def _footer(parameter: str, filesystem: pafs.FileSystem, path: str) -> pq.FileMetaData:
    """The Parquet footer of ``path`` (schema, row groups, statistics), else raise naming the file."""
    try:
        with filesystem.open_input_file(path) as stream:
            return pq.ParquetFile(stream).metadata
    except (OSError, pa.ArrowException) as error:
        raise InvalidParameterError(parameter, "must hold valid, readable Parquet files", f"{path} ({error})") from error


def _common_schema(parameter: str, paths: Sequence[str], footers: Sequence[pq.FileMetaData]) -> pa.Schema:
    """The Arrow schema every file shares (dictionary columns decoded), else raise naming the file."""
    schema = None
    for path, footer in zip(paths, footers):
        file_schema = footer.schema.to_arrow_schema()
        file_schema = pa.schema([
            pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in file_schema])
        if len(set(file_schema.names)) != len(file_schema.names):
            raise InvalidParameterError(parameter, "must not repeat a column name", f"{path}: {file_schema.names}")
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema):
            raise InvalidParameterError(parameter, "must have the same columns and types in every file",
                                        f"{path} has {file_schema}, {paths[0]} has {schema}")
    assert schema is not None
    return schema


def _time_values(parameter: str, filesystem: pafs.FileSystem, path: str, time_column: str) -> list[Any]:
    """The sorted distinct time values in ``path`` (its time column only is read)."""
    with filesystem.open_input_file(path) as stream:
        column = pq.ParquetFile(stream).read(columns=[time_column]).column(0)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    times, _ = _sorted_codes(parameter, column, time_column, TIME_KINDS)
    return times.to_pylist()


def _describe_file(parameter: str, filesystem: pafs.FileSystem, path: str, metadata: pq.FileMetaData,
                   column: int, series_column: str) -> tuple[str, int, Any, Any, int]:
    """(path, rows, smallest id, largest id, row groups) of one file, from its footer.

    The id column's row-group min/max statistics give the id range; only a
    file without them has its id column read.
    """
    bounds: list[tuple[Any, Any]] | None = []
    for group in range(metadata.num_row_groups):
        statistics = metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_min_max or statistics.null_count:
            bounds = None
            break
        bounds.append((statistics.min, statistics.max))
    if not bounds:  # no usable statistics (or no row group): read the id column
        with filesystem.open_input_file(path) as stream:
            ids = pq.ParquetFile(stream).read(columns=[series_column]).column(0)
        if ids.null_count:
            raise InvalidParameterError(parameter, f"column {series_column!r} must not hold null values", path)
        extremes = pc.min_max(ids)
        bounds = [(extremes["min"].as_py(), extremes["max"].as_py())]
    n_rows = metadata.num_rows
    if n_rows == 0:
        raise InvalidParameterError(parameter, "must not hold empty files", path)
    return path, n_rows, min(b[0] for b in bounds), max(b[1] for b in bounds), metadata.num_row_groups


def _refuse_overlap(parameter: str, filesystem: pafs.FileSystem, first: str, second: str, series_column: str) -> None:
    """Raise: a series in both files, or (no common series) interleaved id ranges."""
    ids = []
    for path in (first, second):
        with filesystem.open_input_file(path) as stream:
            ids.append(pc.unique(pq.ParquetFile(stream).read(columns=[series_column]).column(0)))
    common = pc.filter(ids[0], pc.is_in(ids[0], value_set=ids[1]))
    if len(common):
        raise InvalidParameterError(
            parameter, "must hold every series wholly inside one file",
            f"series {common[0].as_py()!r} is in {first} and in {second} ({len(common)} such series)")
    raise InvalidParameterError(
        parameter, "must hold disjoint series id ranges in its files (sort the rows by series id across files)",
        f"the ids of {first} and {second} interleave")


# ---------------------------------------------------------------------------------------------
# Worker side: reading shards


def read_piece(plan: DatasetPlan, piece: Piece) -> pa.Table:
    """The rows of ``piece``: the whole file, or the rows whose id lies in the piece's id range."""
    file = plan.files[piece.file]
    if piece.start == 0 and piece.stop == file.n_series:
        return _read_table(plan, file.path, None)
    with plan.filesystem.open_input_file(file.path) as stream:
        ids = pc.unique(pq.ParquetFile(stream).read(columns=[plan.series_column]).column(0))
    ids = ids.take(pc.array_sort_indices(ids))
    if len(ids) != file.n_series:
        _wrong_series_count(plan, file, len(ids))
    low, high = ids[piece.start].as_py(), ids[piece.stop - 1].as_py()
    column = _pads().field(plan.series_column)
    return _read_table(plan, file.path, (column >= low) & (column <= high))


def _read_table(plan: DatasetPlan, path: str, expression) -> pa.Table:
    """The table at ``path`` (filtered by ``expression``, row groups pruned by statistics), decoded."""
    fragment = _pads().dataset(path, filesystem=plan.filesystem, format="parquet")
    table = fragment.to_table(filter=expression)
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _wrong_series_count(plan: DatasetPlan, file: DatasetFile, found: int) -> None:
    raise InvalidParameterError(
        plan.parameter, f"must have the same {plan.n_time} time steps in every series",
        f"{file.path} has {file.n_rows} rows but {found} series, not {file.n_series}")


def read_shard(plan: DatasetPlan, shard: Shard) -> np.ndarray:
    """Series ``shard.start .. shard.stop-1`` as C-contiguous float32 (series, time, features), or
    (series, features) for a static input.

    Equal to ``load_series`` (static: ``load_input(..., "static")``) of the whole data's rows
    ``shard.start:shard.stop``.
    """
    if plan.static:
        return read_static_shard(plan, shard)
    table = pa.concat_tables([read_piece(plan, piece) for piece in plan.pieces(shard)])
    table = table.select([plan.series_column, plan.time_column, *plan.feature_names])
    array = _in_order_array(plan, table, shard.stop - shard.start)
    if array is not None:
        return array
    array, _ = _long_to_array(plan.parameter, table, plan.series_column, plan.time_column)
    times, _ = _sorted_codes(plan.parameter, table[plan.time_column], plan.time_column, TIME_KINDS)
    if tuple(times.to_pylist()) != plan.times:
        raise InvalidParameterError(
            plan.parameter, f"must have the same {plan.n_time} time steps in every series",
            f"series {shard.start}..{shard.stop - 1} have {len(times)} time values, not those of the first file")
    if array.shape[0] != shard.stop - shard.start:
        pieces = plan.pieces(shard)
        _wrong_series_count(plan, plan.files[pieces[0].file], array.shape[0])
    return array


def read_static_shard(plan: DatasetPlan, shard: Shard) -> np.ndarray:
    """Series ``shard.start .. shard.stop-1`` of a static input as C-contiguous float32 (series, features).

    Each file holding part of the shard is read whole (a static file holds one
    small row per series) and its rows ordered by id (no sort when they
    already are); a file with a null or repeated id is refused naming the
    file and the id.
    """
    parts = []
    for piece in plan.pieces(shard):
        file = plan.files[piece.file]
        table = _read_table(plan, file.path, None)
        order = _static_order(plan, file, table[plan.series_column])
        rows = order[piece.start:piece.stop]
        values = np.empty((len(rows), plan.n_features), dtype=np.float32)
        for j, name in enumerate(plan.feature_names):
            try:
                values[:, j] = _finite_column(plan.parameter, table[name], name)[rows]
            except InvalidParameterError as error:
                raise InvalidParameterError(error.parameter, error.rule, f"{file.path}: {error.value}") from None
        parts.append(values)
    return np.ascontiguousarray(np.concatenate(parts)) if len(parts) > 1 else parts[0]


def _static_order(plan: DatasetPlan, file: DatasetFile, ids: pa.ChunkedArray) -> np.ndarray:
    """The row order of a static file by id, int64 (rows,); refused if an id is null or repeated."""
    if ids.null_count:
        raise InvalidParameterError(plan.parameter, f"column {plan.series_column!r} must not hold null values",
                                    f"{file.path} has {ids.null_count} null ids")
    ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        values = ids.to_numpy()
        order = (np.arange(len(values)) if len(values) < 2 or (values[1:] > values[:-1]).all()
                 else np.argsort(values, kind="stable"))
        repeated = np.flatnonzero(values[order][1:] == values[order][:-1])
    else:
        order = pc.array_sort_indices(ids).to_numpy()
        sorted_ids = ids.take(pa.array(order))
        repeated = np.flatnonzero(pc.equal(sorted_ids[1:], sorted_ids[:-1]).to_numpy(zero_copy_only=False))
    if repeated.size:
        duplicate = ids[int(order[repeated[0]])].as_py()
        raise InvalidParameterError(plan.parameter, "must have one row per series (a static input)",
                                    f"series {duplicate!r} has several rows in {file.path}")
    return order


def _in_order_array(plan: DatasetPlan, table: pa.Table, n_series: int) -> np.ndarray | None:
    """``table``'s values as float32 (n_series, time, features) when its rows are already in order, else None.

    In order: integer ids, each on ``plan.n_time`` consecutive rows, increasing
    from one series to the next; within a series the time values are exactly
    (bit for bit) ``plan.times`` in order. Then the general conversion
    (:func:`rnnimp.data._long_to_array`, which sorts by id and time) would
    put every row where it already is, so the values are reshaped as they
    are, with no sort. Files written sorted by (id, time), as
    :func:`write_dataset` and most exports write them, take this path; any
    other table (shuffled rows, string or temporal ids and times, nulls, a
    missing or repeated step) returns None and the general path reads it
    (and refuses it, naming what is wrong). Non-finite values are refused
    here as there.
    """
    n_time = plan.n_time
    ids, times = table[plan.series_column], table[plan.time_column]
    if (table.num_rows != n_series * n_time or ids.null_count or times.null_count
            or not pa.types.is_integer(ids.type)
            or not (pa.types.is_integer(times.type) or pa.types.is_floating(times.type))):
        return None
    time_values = times.to_numpy().reshape(n_series, n_time)
    expected = np.array(plan.times, dtype=time_values.dtype)
    unsigned = np.dtype(f"u{time_values.dtype.itemsize}")  # compare bits: -0.0 is not 0.0, NaN is no time
    if not np.array_equal(time_values.view(unsigned), np.broadcast_to(expected.view(unsigned), time_values.shape)):
        return None
    id_values = ids.to_numpy().reshape(n_series, n_time)
    if not ((id_values == id_values[:, :1]).all() and (id_values[1:, 0] > id_values[:-1, 0]).all()):
        return None
    values = np.empty((table.num_rows, plan.n_features), dtype=np.float32)
    for j, name in enumerate(plan.feature_names):
        values[:, j] = _finite_column(plan.parameter, table[name], name)
    return values.reshape(n_series, n_time, plan.n_features)


@dataclass
class ShardReader:
    """Reads shards of one dataset, keeping those it read within ``budget_bytes``.

    A shard larger than the budget is read and returned, not kept. When a
    new shard does not fit, the most recently used shards make room (not
    the least recently used): a run meets its shards in sweeps, shard 0 to
    the last, again for every target and repeat (and a permuting unit
    sweeps them for its donors), and under least-recently-used eviction a
    sweep longer than the budget evicts every shard just before it is
    needed again, so nothing is ever a hit. Evicting the most recent keeps
    the first shards of a sweep for the next ones and turns over only the
    last places: a budget holding k of n shards gives about (k-1)/n hits
    per sweep. Units that repeat a shard back to back hit either way.
    :meth:`use_layout` drops the shards of another shard size, which no
    unit of the current layout can hit.

    ``hits``, ``misses`` and ``evictions`` count cache use; ``read_s`` is
    the time spent reading (seconds, all misses).
    """

    plan: DatasetPlan
    budget_bytes: int
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    read_s: float = 0.0
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (start, stop) -> array, used last at the end
    _layout: tuple[int, int] | None = field(default=None, repr=False)  # the first shard of the layout in use
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # threads of one process share it

    @property
    def cached_bytes(self) -> int:
        return sum(array.nbytes for array in self._cache.values())

    def use_layout(self, shards: Sequence[Shard]) -> None:
        """Units of ``shards`` (a layout's shards) follow: drop cached shards that are not among them."""
        first = (shards[0].start, shards[0].stop) if shards else None
        with self._lock:
            if first == self._layout:
                return
            self._layout = first
            wanted = {(shard.start, shard.stop) for shard in shards}
            for key in [key for key in self._cache if key not in wanted]:
                del self._cache[key]
                self.evictions += 1

    def read(self, shard: Shard) -> np.ndarray:
        """The shard's series, float32 (series, time, features) or (series, features) for a static input;
        read only if not cached. Read only.

        One thread reads at a time (the :class:`~rnnimp.worker.LocalExecutor`'s
        threads share a reader): a shard two threads want is read once.
        """
        key = (shard.start, shard.stop)
        with self._lock:
            if key in self._cache:
                self.hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
            self.misses += 1
            started = time.perf_counter()
            array = read_shard(self.plan, shard)
            self.read_s += time.perf_counter() - started
            array.flags.writeable = False
            if array.nbytes <= self.budget_bytes:
                while self._cache and self.cached_bytes + array.nbytes > self.budget_bytes:
                    self._cache.popitem(last=True)  # the most recently used: see the class docstring
                    self.evictions += 1
                self._cache[key] = array
            return array

    def rows(self, indices: np.ndarray, shards: Sequence[Shard]) -> np.ndarray:
        """Series ``indices`` (global, int64 (n,)) as float32 (n, time, features) (static: (n, features)),
        read shard by shard."""
        indices = np.asarray(indices, dtype=np.int64)
        result = np.empty((len(indices), *self.plan.row_shape), dtype=np.float32)
        for shard, positions in shards_holding(indices, shards):
            result[positions] = self.read(shard)[indices[positions] - shard.start]
        return result


class SampleView:
    """The dataset seen as the whole sample, as far as the method reads it, in global series indices.

    ``view[start:stop]`` (a contiguous range) and ``view[indices]`` (int
    array: permutation donors) return float32 (rows, time, features) (a
    static input: (rows, features)) read
    through ``reader`` shard by shard; ``len``, ``shape``, ``ndim`` and
    ``dtype`` are those of the whole sample. Code written for an in-memory
    sample (``rnnimp.worker.predict_shard``, ``unit_sums``) runs on it
    unchanged, on the same values, so a unit gives the same sums. Slices
    may be read-only views of cached shards: copy before writing.
    """

    def __init__(self, reader: ShardReader, shards: Sequence[Shard]) -> None:
        self.reader, self.shards = reader, tuple(shards)
        reader.use_layout(self.shards)
        self.shape = reader.plan.shape
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("a SampleView takes contiguous slices only")
            if stop <= start:
                return np.empty((0, *self.shape[1:]), dtype=np.float32)
            holders = [s for s in self.shards if s.start < stop and s.stop > start]
            if len(holders) == 1:
                shard = holders[0]
                return self.reader.read(shard)[start - shard.start:stop - shard.start]
            return self.reader.rows(np.arange(start, stop), self.shards)
        indices = np.asarray(key)
        if indices.dtype.kind not in "iu":
            raise IndexError("a SampleView takes a slice or an integer array")
        return self.reader.rows(indices.ravel(), self.shards).reshape(*indices.shape, *self.shape[1:])


# ---------------------------------------------------------------------------------------------
# Permutation across shards


def shards_holding(indices: np.ndarray, shards: Sequence[Shard]) -> list[tuple[Shard, np.ndarray]]:
    """For each shard holding some of ``indices`` (int64 (n,)), the positions in ``indices`` it holds.

    ``shards``: contiguous, in order, covering 0..N-1 (``Layout.shards``).
    """
    starts = np.array([shard.start for shard in shards])
    owner = np.searchsorted(starts, indices, side="right") - 1
    order = np.argsort(owner, kind="stable")
    boundaries = np.flatnonzero(np.diff(owner[order])) + 1
    return [(shards[int(owner[group[0]])], group) for group in np.split(order, boundaries) if len(group)]


def permutation_donors(sources: np.ndarray, shard: Shard, shards: Sequence[Shard]) -> list[tuple[Shard, np.ndarray]]:
    """The donors of ``shard`` under the permutation ``sources`` (int64 (N,), from
    :func:`rnnimp.perturb.permutation`), grouped by the shard that holds them.

    Returns ``[(donor shard, sorted distinct global indices of the donors it holds), ...]``.
    A unit that permutes needs exactly these rows: series ``s`` of its shard
    receives the trajectory of ``sources[s]``. Under one random permutation of
    all series, a shard's donors are spread over (nearly) every shard, so a
    worker touches every shard per permuted repeat: its cache, not the
    permutation, keeps that cheap when the budget holds the dataset.
    """
    donors = np.unique(sources[shard.start:shard.stop])
    return [(holder, donors[positions]) for holder, positions in shards_holding(donors, shards)]


# ---------------------------------------------------------------------------------------------
# Exact statistics

_EXPONENTS = 277  # frexp exponents of finite float32: -148 (smallest subnormal) .. 128
_LOWEST_EXPONENT = -148
_SUM_SCALE = 149  # every float32 is a multiple of 2**-149
_SQUARE_SCALE = 298
_CHUNK_VALUES = 1 << 26  # integer sums in float64 stay exact below 2**53: 2**26 values of < 2**24 each


@dataclass(frozen=True)
class Moments:
    """Exact per-feature sums of values and squares of float32 data, combinable in any order.

    ``sums[f] = Σx · 2**149`` and ``squares[f] = Σx² · 2**298``, Python integers
    (exact, because float32 values are multiples of 2**-149); ``count`` values per feature.
    """

    count: int
    sums: tuple[int, ...]
    squares: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> "Moments":
        """The moments of ``array`` (..., features), float32 (other dtypes are cast to float32 first)."""
        flat = np.asarray(array, dtype=np.float32).reshape(-1, np.shape(array)[-1])
        n_features = flat.shape[1]
        sums, squares = [0] * n_features, [0] * n_features
        rows_per_chunk = max(1, _CHUNK_VALUES // max(n_features, 1))
        for start in range(0, len(flat), rows_per_chunk):
            chunk_sums, chunk_squares = _exact_chunk(flat[start:start + rows_per_chunk])
            sums = [a + b for a, b in zip(sums, chunk_sums)]
            squares = [a + b for a, b in zip(squares, chunk_squares)]
        return cls(len(flat), tuple(sums), tuple(squares))

    def __add__(self, other: "Moments") -> "Moments":
        if len(self.sums) != len(other.sums):
            raise ValueError("moments of different numbers of features")
        return Moments(self.count + other.count, tuple(a + b for a, b in zip(self.sums, other.sums)),
                       tuple(a + b for a, b in zip(self.squares, other.squares)))

    def means(self) -> np.ndarray:
        """Per-feature means, float64 (features,): the exact mean correctly rounded."""
        return np.array([float(Fraction(s, self.count << _SUM_SCALE)) for s in self.sums])

    def stds(self) -> np.ndarray:
        """Per-feature population standard deviations (ddof 0), float64 (features,).

        The exact variance, correctly rounded to float64, then ``math.sqrt``.
        """
        n = self.count
        return np.array([math.sqrt(float(Fraction(n * q - s * s, (n * n) << _SQUARE_SCALE)))
                         for s, q in zip(self.sums, self.squares)])


def combine(parts: Sequence[Moments]) -> Moments:
    """The moments of the union of the data of ``parts`` (exact: order does not matter)."""
    if not parts:
        raise ValueError("no moments to combine")
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _exact_chunk(flat: np.ndarray) -> tuple[list[int], list[int]]:
    """Σx·2**149 and Σx²·2**298 per column of float32 ``flat`` (rows, features), exactly.

    Each value is m · 2**(e-24) with an integer |m| < 2**24 (np.frexp); values
    are binned by (feature, e) and the m (and m², split in two 24-bit halves)
    summed per bin with np.bincount, whose float64 sums of integers are exact
    below 2**53 (at most 2**26 values per chunk).
    """
    n_rows, n_features = flat.shape
    mantissas, exponents = np.frexp(flat.astype(np.float64))
    integers = (mantissas * (1 << 24)).astype(np.int64)
    bins = (exponents.astype(np.int64) - _LOWEST_EXPONENT) + np.arange(n_features, dtype=np.int64) * _EXPONENTS
    bins = bins.ravel()
    length = n_features * _EXPONENTS
    squared = integers * integers  # < 2**48
    by_bin = [np.bincount(bins, weights=weights.ravel().astype(np.float64), minlength=length)
              for weights in (integers, squared >> 24, squared & ((1 << 24) - 1))]
    sums, squares = [], []
    for feature in range(n_features):
        total_sum, total_square = 0, 0
        span = slice(feature * _EXPONENTS, (feature + 1) * _EXPONENTS)
        for column in np.flatnonzero((by_bin[1][span] != 0) | (by_bin[2][span] != 0)):  # bins with a value != 0
            exponent = int(column) + _LOWEST_EXPONENT
            index = feature * _EXPONENTS + int(column)
            m_sum = int(by_bin[0][index])
            m_square = (int(by_bin[1][index]) << 24) + int(by_bin[2][index])
            total_sum += _shift(m_sum, exponent - 24 + _SUM_SCALE)
            total_square += _shift(m_square, 2 * (exponent - 24) + _SQUARE_SCALE)
        sums.append(total_sum)
        squares.append(total_square)
    return sums, squares


def _shift(value: int, bits: int) -> int:
    """``value · 2**bits`` for an integer result (exact: asserted when ``bits`` < 0)."""
    if bits >= 0:
        return value << bits
    quotient, remainder = divmod(value, 1 << -bits)
    assert remainder == 0, "a float32 value is a multiple of 2**-149"
    return quotient


# ---------------------------------------------------------------------------------------------
# Writing datasets (benchmarks, tests)


def write_dataset(
    series: np.ndarray,
    path: str,
    series_per_file: int,
    *,
    feature_names: Sequence[str] | None = None,
    series_ids: np.ndarray | None = None,
    rows_per_group: int | None = None,
    shuffle_seed: int | None = None,
    series_column: str = "series",
    time_column: str = "time",
) -> list[str]:
    """Write ``series`` (series, time, features) as a long-form dataset under ``path``; return the files.

    Files ``part-00000.parquet``, ... hold ``series_per_file`` consecutive series
    each; ``series_ids`` (series,) default to 0..series-1 and must increase
    (so files hold disjoint id ranges in order); times are 0..time-1; feature
    columns are float32, named ``feature_names`` (default x0, x1, ...).
    ``rows_per_group``: Parquet row-group size; ``shuffle_seed``: shuffle the
    rows within each file (the reader must not depend on row order).
    """
    array = validation.series_array("series", series)
    n_series, n_time, n_features = array.shape
    names = _feature_columns(feature_names, n_features, (series_column, time_column),
                             "must differ from the series and time columns")

    def table(ids: np.ndarray, start: int, stop: int, rng) -> pa.Table:
        rows = (stop - start) * n_time
        order = rng.permutation(rows) if rng is not None else np.arange(rows)
        flat = array[start:stop].reshape(rows, n_features)[order]
        columns = {series_column: pa.array(np.repeat(ids[start:stop], n_time)[order]),
                   time_column: pa.array(np.tile(np.arange(n_time, dtype=np.int64), stop - start)[order])}
        columns.update({name: pa.array(flat[:, j]) for j, name in enumerate(names)})
        return pa.table(columns)

    return _write_files(path, n_series, series_per_file, series_ids, rows_per_group, shuffle_seed, table)


def write_static_dataset(
    values: np.ndarray,
    path: str,
    series_per_file: int,
    *,
    feature_names: Sequence[str] | None = None,
    series_ids: np.ndarray | None = None,
    rows_per_group: int | None = None,
    shuffle_seed: int | None = None,
    series_column: str = "series",
) -> list[str]:
    """Write a static input ``values`` (series, features) as a dataset under ``path``: one row per series
    (``series_column`` and one float32 column per feature); return the files.

    Files, ids, names, row groups and shuffling as in :func:`write_dataset`.
    """
    array = np.asarray(values)
    if array.ndim != 2:
        raise InvalidParameterError("values", "must have 2 dimensions (series, features)", array.shape)
    array = validation.finite_float32("values", array)
    n_series, n_features = array.shape
    names = _feature_columns(feature_names, n_features, (series_column,), "must differ from the series column")

    def table(ids: np.ndarray, start: int, stop: int, rng) -> pa.Table:
        order = start + (rng.permutation(stop - start) if rng is not None else np.arange(stop - start))
        columns = {series_column: pa.array(ids[order])}
        columns.update({name: pa.array(array[order, j]) for j, name in enumerate(names)})
        return pa.table(columns)

    return _write_files(path, n_series, series_per_file, series_ids, rows_per_group, shuffle_seed, table)


def _feature_columns(feature_names: Sequence[str] | None, n_features: int, reserved: tuple[str, ...],
                     rule: str) -> list[str]:
    """The feature columns' names (default x0, x1, ...), distinct and none of the ``reserved`` columns."""
    names = validation.distinct_names(
        "feature_names", [str(n) for n in (feature_names or [f"x{j}" for j in range(n_features)])], n_features,
        feature_names)
    if set(reserved) & set(names):
        raise InvalidParameterError("feature_names", rule, names)
    return names


def _write_files(path: str, n_series: int, series_per_file, series_ids, rows_per_group: int | None,
                 shuffle_seed: int | None, table: Callable[..., pa.Table]) -> list[str]:
    """Check the ids (n_series,) and write ``table(ids, start, stop, rng)`` of each file's series
    [start, stop) to ``part-NNNNN.parquet`` in the created folder ``path``; the files' paths."""
    if not (isinstance(series_per_file, (int, np.integer)) and series_per_file >= 1):
        raise InvalidParameterError("series_per_file", "must be an integer >= 1", series_per_file)
    ids = np.arange(n_series, dtype=np.int64) if series_ids is None else np.asarray(series_ids)
    if ids.shape != (n_series,) or (n_series > 1 and not np.all(ids[1:] > ids[:-1])):
        raise InvalidParameterError("series_ids", f"must be {n_series} increasing ids", ids.shape)
    filesystem, folder = resolve(path)
    filesystem.create_dir(folder, recursive=True)
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    written = []
    for number, start in enumerate(range(0, n_series, series_per_file)):
        file_path = f"{folder}/part-{number:05d}.parquet"
        pq.write_table(table(ids, start, min(start + series_per_file, n_series), rng), file_path,
                       filesystem=filesystem, row_group_size=rows_per_group)
        written.append(file_path)
    return written


# ---------------------------------------------------------------------------------------------
# Dataset input: what a run's sample holds in place of an array

DEFAULT_CACHE_MIB = 1024  # per worker: the shard cache's byte budget (Options.shard_cache_mib)


@dataclass(frozen=True)
class DatasetInput:
    """One model input read from a dataset: the plan, its fingerprint and each worker's cache budget.

    Stands in for the (series, time, features) array of the input in a
    :class:`rnnimp.options.Request` and an :class:`rnnimp.worker.EvaluationJob`:
    it has the array's ``shape``, ``ndim``, ``dtype`` and ``len`` but holds no
    values; the workers turn it into a :class:`SampleView` over their own
    :class:`ShardReader` (see :func:`rnnimp.worker.materialize`). Small and
    picklable: this, not the rows, is what the object store holds.
    """

    plan: DatasetPlan
    fingerprint: str
    budget_bytes: int

    is_dataset = True  # duck-typed marker for modules that must not import this one
    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        """(series, time, features), or (series, features) for a static input."""
        return self.plan.shape

    @property
    def ndim(self) -> int:
        return len(self.plan.shape)

    @property
    def nbytes(self) -> int:
        return self.plan.nbytes

    def __len__(self) -> int:
        return self.plan.n_series


def is_dataset(value: Any) -> bool:
    """Whether ``value`` is a :class:`DatasetInput` (or any object marked as one)."""
    return bool(getattr(value, "is_dataset", False))


def is_dataset_source(value: Any) -> bool:
    """Whether ``value`` names a dataset: a path or URI string, a pyarrow dataset, or a plan."""
    return isinstance(value, (str, os.PathLike, DatasetPlan)) or _is_pyarrow_dataset(value)


def _is_pyarrow_dataset(value: Any) -> bool:
    """Whether ``value`` is a pyarrow ``FileSystemDataset`` (whose module is then imported already)."""
    module = sys.modules.get("pyarrow.dataset")
    return module is not None and isinstance(value, module.FileSystemDataset)


def plan_fingerprint(plan: DatasetPlan) -> str:
    """SHA-256 of what identifies the dataset's data without reading it.

    Covers, per file in series order: its path, size in bytes, modification
    time (as the filesystem reports it; S3: the object's Last-Modified),
    row count, row-group count and id range; and the schema, feature names
    and time values. A rewrite of any file changes its size or modification
    time, so a checkpoint of other data is refused. It does not read values:
    a file rewritten in place with the same size within the filesystem's
    time resolution is not detected.
    """
    infos = plan.filesystem.get_file_info([file.path for file in plan.files])
    digest = hashlib.sha256(repr((plan.schema.to_string(), plan.feature_names, plan.times,
                                  plan.series_column, plan.time_column)).encode())
    for file, info in zip(plan.files, infos):
        modified = None if info.mtime_ns is None else int(info.mtime_ns)
        digest.update(repr((file.path, info.size, modified, file.n_rows, file.n_row_groups,
                            file.min_id, file.max_id)).encode())
    return digest.hexdigest()


def open_plan(source: Any, *, parameter: str = "--data", series_column: str = "series", time_column: str = "time",
              static: bool = False) -> DatasetPlan:
    """The :class:`DatasetPlan` of ``source`` (path, URI prefix, pyarrow dataset or plan), from metadata only.

    ``static``: ``source`` holds a static input (one row per series).
    """
    if isinstance(source, DatasetPlan):
        return source
    return DatasetPlan.open(os.fspath(source) if isinstance(source, os.PathLike) else source, parameter=parameter,
                            series_column=series_column, time_column=time_column, static=static)


def open_input(source: Any, budget_bytes: int, *, parameter: str = "--data", series_column: str = "series",
               time_column: str = "time", static: bool = False) -> DatasetInput:
    """The :class:`DatasetInput` of ``source`` (path, URI prefix, pyarrow dataset or plan), from metadata only."""
    plan = open_plan(source, parameter=parameter, series_column=series_column, time_column=time_column,
                     static=static)
    return DatasetInput(plan, plan_fingerprint(plan), int(budget_bytes))


def split_budget(plans: Sequence[DatasetPlan], budget_bytes: int) -> list[int]:
    """Each dataset input's share of a worker's cache budget ``budget_bytes``.

    Static inputs are small (one row per series): each gets what it needs,
    up to an equal share; the sequence inputs share the rest equally.
    """
    if not plans:
        return []
    equal = budget_bytes // len(plans)
    shares = [min(plan.nbytes, equal) if plan.static else 0 for plan in plans]
    sequences = sum(1 for plan in plans if not plan.static)
    rest = (budget_bytes - sum(shares)) // sequences if sequences else 0
    return [share if plan.static else rest for plan, share in zip(plans, shares)]


def value_moments(array: np.ndarray, mask_value: float | None = None) -> Moments:
    """The :class:`Moments` of ``array`` (..., features) over its real steps: steps whose features all
    equal ``mask_value`` (padding) are left out."""
    rows = np.asarray(array).reshape(-1, np.shape(array)[-1])
    if mask_value is not None:
        rows = rows[np.any(rows != np.float32(mask_value), axis=1)]
    return Moments.of(rows)


def shard_moments(inputs: Sequence[DatasetInput], mask_values: Sequence[float | None], shard: Shard) -> list[Moments]:
    """Per dataset input, the moments of one shard's real steps (what one worker task computes)."""
    return [value_moments(read_shard(item.plan, shard), mask) for item, mask in zip(inputs, mask_values)]


def local_moments(inputs: Sequence[DatasetInput], mask_values: Sequence[float | None],
                  shards: Sequence[Shard]) -> list[Moments]:
    """Per dataset input, the moments of the whole dataset, read here one shard at a time.

    For runs in this process (the local executor); Ray runs use
    :func:`rnnimp.distributed.dataset_moments`, which gives the same (exact) result.
    """
    parts = [shard_moments(inputs, mask_values, shard) for shard in shards]
    return [combine([part[k] for part in parts]) for k in range(len(inputs))]


def names_dataset(path: str) -> bool:
    """Whether ``path`` (a local path or pyarrow.fs URI) is a directory or prefix, i.e. a dataset, not a file.

    Unreachable or missing paths are not datasets (the file readers then say why).
    """
    try:
        filesystem, resolved = resolve(path)
        return filesystem.get_file_info(resolved).type == pafs.FileType.Directory
    except (OSError, ValueError, pa.ArrowException):
        return False
