"""The dataset layer: plan from metadata, shards read back equal the in-memory data, exact statistics."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rnnimp import InvalidParameterError
from rnnimp.data import load_series
from rnnimp.dataset import (DatasetPlan, Moments, ShardReader, combine, permutation_donors,
                            read_shard, write_dataset)
from rnnimp.method import Layout, plan_units
from rnnimp.perturb import permutation
from s3server import BUCKET, s3  # noqa: F401  (the session fixture)

N_SERIES, N_TIME, N_FEATURES = 230, 5, 3


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(N_SERIES, N_TIME, N_FEATURES)) * [1.0, 1e3, 1e-3] + [0.0, 5e4, -2.0]
    return values.astype(np.float32)


@pytest.fixture(scope="module")
def ids():
    """Increasing, gapped ids: the global order is by id, not 0..N-1."""
    return np.cumsum(np.random.default_rng(5).integers(1, 9, size=N_SERIES)) + 1000


@pytest.fixture(scope="module")
def dataset(sample, ids, tmp_path_factory):
    """Several files (a short last one), several row groups each, rows shuffled within files."""
    folder = str(tmp_path_factory.mktemp("ds") / "data")
    write_dataset(sample, folder, series_per_file=50, series_ids=ids, rows_per_group=37, shuffle_seed=1,
                  feature_names=["a", "b", "c"])
    return folder


@pytest.fixture(scope="module")
def whole(dataset, tmp_path_factory):
    """load_series of the concatenated rows of every file (the in-memory path)."""
    table = pa.concat_tables(pq.read_table(f"{dataset}/{name}") for name in
                             sorted(os.listdir(dataset)))
    path = str(tmp_path_factory.mktemp("whole") / "all.parquet")
    pq.write_table(table, path)
    return load_series(path)


def test_plan_reads_metadata_only(dataset):
    plan = DatasetPlan.open(dataset)
    assert plan.shape == (N_SERIES, N_TIME, N_FEATURES)
    assert plan.feature_names == ("a", "b", "c")
    assert [f.n_series for f in plan.files] == [50, 50, 50, 50, 30]
    assert [f.first_series for f in plan.files] == [0, 50, 100, 150, 200]
    assert all(f.n_row_groups > 1 for f in plan.files)
    assert plan.times == tuple(range(N_TIME))


@pytest.mark.parametrize("shard_size", [16, 64, 230])
def test_shards_read_back_equal_the_in_memory_array(dataset, sample, whole, shard_size):
    array, names = whole
    np.testing.assert_array_equal(array, sample)
    assert names == ["a", "b", "c"]
    plan = DatasetPlan.open(dataset)
    layout = Layout.for_sample(N_SERIES, 16, shard_size)
    pieces = np.concatenate([read_shard(plan, shard) for shard in layout.shards])
    assert pieces.dtype == np.float32 and pieces.flags.c_contiguous
    np.testing.assert_array_equal(pieces, array)


def test_a_shard_across_two_files_is_read_from_both(dataset, sample):
    plan = DatasetPlan.open(dataset)
    shard = Layout.for_sample(N_SERIES, 16, 32).shards[1]  # series 32..63: files 0 and 1
    assert [(p.file, p.start, p.stop) for p in plan.pieces(shard)] == [(0, 32, 50), (1, 0, 14)]
    np.testing.assert_array_equal(read_shard(plan, shard), sample[32:64])


def test_pyarrow_dataset_source(dataset, sample):
    plan = DatasetPlan.open(pads.dataset(dataset, format="parquet"))
    np.testing.assert_array_equal(read_shard(plan, Layout.for_sample(N_SERIES, 16, 32).shards[3]), sample[96:128])


def test_cache_reads_each_shard_once_within_budget(dataset, sample):
    plan = DatasetPlan.open(dataset)
    shards = Layout.for_sample(N_SERIES, 16, 32).shards
    shard_bytes = read_shard(plan, shards[0]).nbytes
    reader = ShardReader(plan, budget_bytes=2 * shard_bytes)
    for _ in range(3):  # three units on shard 0, then on shard 1
        reader.read(shards[0])
    for _ in range(3):
        reader.read(shards[1])
    assert (reader.misses, reader.hits, reader.evictions) == (2, 4, 0)
    reader.read(shards[2])  # over budget: the most recently used (shard 1) goes, shard 0 stays
    assert reader.evictions == 1 and reader.cached_bytes <= 2 * shard_bytes
    reader.read(shards[0])
    assert reader.hits == 5
    reader.read(shards[2])  # kept in shard 1's place
    assert (reader.hits, reader.misses) == (6, 3)
    reader.read(shards[1])
    assert reader.misses == 4
    np.testing.assert_array_equal(reader.read(shards[0]), sample[:32])
    assert reader.read_s > 0
    small = ShardReader(plan, budget_bytes=shard_bytes - 1)  # nothing fits: read every time
    small.read(shards[0]), small.read(shards[0])
    assert (small.misses, small.hits, small.cached_bytes) == (2, 0, 0)


def test_threads_sharing_a_reader_read_a_shard_once(dataset, monkeypatch):
    import threading
    import time

    from rnnimp import dataset as datasets

    plan = DatasetPlan.open(dataset)
    shard = Layout.for_sample(N_SERIES, 16, 32).shards[1]
    reads = []

    def slow_read(plan, shard):  # a read long enough for the other thread to ask for the same shard meanwhile
        reads.append(shard)
        time.sleep(0.3)
        return read_shard(plan, shard)

    monkeypatch.setattr(datasets, "read_shard", slow_read)
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    start = threading.Barrier(2)
    arrays = []

    def read() -> None:
        start.wait()
        arrays.append(reader.read(shard))

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == [shard] and (reader.misses, reader.hits) == (1, 1)
    assert arrays[0] is arrays[1]


def test_sweeps_longer_than_the_budget_still_hit(dataset):
    """Units meet shards in sweeps (every target and repeat): least-recently-used eviction would hit nothing."""
    plan = DatasetPlan.open(dataset)
    shards = Layout.for_sample(N_SERIES, 23, 23).shards  # 10 shards
    reader = ShardReader(plan, budget_bytes=4 * read_shard(plan, shards[0]).nbytes)  # holds 4
    for _ in range(4):
        for shard in shards:
            reader.read(shard)
    assert reader.hits >= 3 * 3  # from the second sweep on, at least 3 of the 4 kept shards are hits
    assert reader.cached_bytes <= reader.budget_bytes


def test_another_layout_drops_the_shards_of_the_previous_one(dataset):
    from rnnimp.dataset import SampleView

    plan = DatasetPlan.open(dataset)
    old, new = Layout.for_sample(N_SERIES, 16, 32).shards, Layout.for_sample(N_SERIES, 16, 64).shards
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    view = SampleView(reader, old)
    view[0:32], view[32:64]
    assert len(reader._cache) == 2
    SampleView(reader, old)  # the same layout: kept
    assert (len(reader._cache), reader.evictions) == (2, 0)
    view = SampleView(reader, new)
    assert (len(reader._cache), reader.evictions) == (0, 2)
    view[0:64]
    assert (reader.misses, len(reader._cache)) == (3, 1)


def exact_moments_by_fractions(array):
    flat = array.reshape(-1, array.shape[-1]).astype(np.float64)
    n = len(flat)
    means, stds = [], []
    for column in flat.T:
        total = sum(Fraction(float(v)) for v in column)
        squares = sum(Fraction(float(v)) ** 2 for v in column)
        means.append(float(total / n))
        stds.append(float(np.sqrt(float((n * squares - total * total) / (n * n)))))
    return np.array(means), np.array(stds)


def test_moments_are_exact_and_split_invariant(dataset, sample):
    whole = Moments.of(sample)
    means, stds = exact_moments_by_fractions(sample)
    np.testing.assert_array_equal(whole.means(), means)
    np.testing.assert_array_equal(whole.stds(), stds)
    # numpy's float64 accumulation (today's api.resolve_perturbation) agrees to rounding, not bit for bit
    flat = sample.reshape(-1, N_FEATURES)
    np.testing.assert_allclose(whole.means(), flat.mean(axis=0, dtype=np.float64), rtol=1e-13, atol=1e-18)
    np.testing.assert_allclose(whole.stds(), flat.std(axis=0, dtype=np.float64), rtol=1e-12)

    plan = DatasetPlan.open(dataset)
    for shard_size in (16, 48, 112):
        shards = Layout.for_sample(N_SERIES, 16, shard_size).shards
        distributed = combine([Moments.of(ShardReader(plan, 0).read(shard)) for shard in shards])  # as workers
        assert distributed == whole
        np.testing.assert_array_equal(distributed.stds(), whole.stds())
    parts = [Moments.of(sample[i:i + 7]) for i in range(0, N_SERIES, 7)]
    assert combine(parts[::-1]) == whole


def test_moments_of_extreme_float32_values_are_exact():
    values = np.array([3.4e38, -3.4e38, 1e-45, 2e-45, -1.17e-38, 1.0, 2.0 ** -126, 7.5e37], dtype=np.float32)
    array = np.tile(values, 9).reshape(-1, 1, 1)
    means, stds = exact_moments_by_fractions(array)
    moments = Moments.of(array)
    np.testing.assert_array_equal(moments.means(), means)
    np.testing.assert_array_equal(moments.stds(), stds)


def test_permutation_donors_are_exactly_the_rows_a_shard_needs(dataset, sample):
    plan = DatasetPlan.open(dataset)
    shards = Layout.for_sample(N_SERIES, 16, 32).shards
    sources = permutation((12, 34), N_SERIES)
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    for shard in shards:
        holders = permutation_donors(sources, shard, shards)
        listed = np.concatenate([indices for _, indices in holders])
        np.testing.assert_array_equal(listed, np.unique(sources[shard.start:shard.stop]))
        for holder, indices in holders:
            assert np.all((indices >= holder.start) & (indices < holder.stop))
        donors = reader.rows(sources[shard.start:shard.stop], shards)
        np.testing.assert_array_equal(donors, sample[sources[shard.start:shard.stop]])


def test_a_series_in_two_files_is_refused(sample, tmp_path):
    folder = str(tmp_path / "data")
    write_dataset(sample[:40], folder, series_per_file=20, series_ids=np.arange(40))
    table = pq.read_table(f"{folder}/part-00001.parquet")
    in_first = pa.compute.and_(pa.compute.equal(table["series"], 25), pa.compute.less(table["time"], 2))
    moved = table.filter(in_first)  # two steps of series 25 in the first file, the rest in the second
    pq.write_table(table.filter(pa.compute.invert(in_first)), f"{folder}/part-00001.parquet")
    pq.write_table(pa.concat_tables([pq.read_table(f"{folder}/part-00000.parquet"), moved]),
                   f"{folder}/part-00000.parquet")
    with pytest.raises(InvalidParameterError, match=r"wholly inside one file.*series 25 is in .*part-00000.parquet "
                                                    r"and in .*part-00001.parquet"):
        DatasetPlan.open(folder)


def test_interleaved_id_ranges_and_bad_inputs_are_refused(sample, tmp_path):
    write_dataset(sample[:10], str(tmp_path / "a"), series_per_file=10, series_ids=np.arange(0, 20, 2))
    write_dataset(sample[10:20], str(tmp_path / "b"), series_per_file=10, series_ids=np.arange(1, 21, 2))
    (tmp_path / "b" / "part-00000.parquet").rename(tmp_path / "a" / "part-00001.parquet")
    with pytest.raises(InvalidParameterError, match="disjoint series id ranges"):
        DatasetPlan.open(str(tmp_path / "a"))
    with pytest.raises(InvalidParameterError, match="existing directory"):
        DatasetPlan.open(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameterError, match="must hold .parquet files"):
        DatasetPlan.open(str(tmp_path / "empty"))
    short = sample[:10].copy()
    write_dataset(short, str(tmp_path / "c"), series_per_file=10)
    table = pq.read_table(tmp_path / "c" / "part-00000.parquet")
    pq.write_table(table.slice(1), tmp_path / "c" / "part-00000.parquet")
    with pytest.raises(InvalidParameterError, match="same 5 time steps"):
        DatasetPlan.open(str(tmp_path / "c"))


def test_dataset_on_s3(s3, sample):
    uri = s3.uri(f"{BUCKET}/datasets/sample")
    write_dataset(sample, uri, series_per_file=60, rows_per_group=50, shuffle_seed=2)
    plan = DatasetPlan.open(uri)
    assert plan.shape == sample.shape and len(plan.files) == 4
    shards = Layout.for_sample(N_SERIES, 16, 48).shards
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    np.testing.assert_array_equal(np.concatenate([reader.read(shard) for shard in shards]), sample)
    assert combine([Moments.of(reader.read(shard)) for shard in shards]) == Moments.of(sample)
    assert reader.hits == len(shards)


def test_series_order_is_by_id_not_by_file_name(sample, tmp_path):
    folder = tmp_path / "data"
    write_dataset(sample[:60], str(folder), series_per_file=20)
    (folder / "part-00000.parquet").rename(folder / "part-99999.parquet")  # the smallest ids, named last
    plan = DatasetPlan.open(str(folder))
    assert plan.files[0].path.endswith("part-99999.parquet")
    np.testing.assert_array_equal(read_shard(plan, Layout.for_sample(60, 20, 60).shards[0]), sample[:60])


def test_rows_in_order_are_read_without_sorting_and_equal_the_general_path(sample, tmp_path, monkeypatch):
    """Files sorted by (id, time) skip the sort; anything else takes the general path, with the same result."""
    import rnnimp.dataset as dataset_module

    folder = str(tmp_path / "sorted")
    write_dataset(sample[:60], folder, series_per_file=25, series_ids=np.arange(100, 160) * 3)
    plan = DatasetPlan.open(folder)
    shards = Layout.for_sample(60, 10, 20).shards  # the second shard spans two files
    general = []
    monkeypatch.setattr(dataset_module, "_long_to_array", lambda *a, **k: general.append(1) / 0)
    np.testing.assert_array_equal(np.concatenate([read_shard(plan, s) for s in shards]), sample[:60])
    monkeypatch.undo()
    table = pq.read_table(f"{folder}/part-00000.parquet")
    swapped = table.take(np.r_[[1, 0], 2:table.num_rows])  # two steps of series 0 swapped: not in order
    pq.write_table(swapped, f"{folder}/part-00000.parquet")
    np.testing.assert_array_equal(read_shard(DatasetPlan.open(folder), shards[0]), sample[:20])
    first_file = Layout.for_sample(25, 5, 25).shards[0]
    descending = table.take(np.arange(table.num_rows).reshape(25, N_TIME)[::-1].ravel())  # series in id order, reversed
    interleaved = table.take(np.r_[[0, 6, 2, 8, 4, 5, 1, 7, 3, 9], 10:table.num_rows])  # times in order, ids mixed
    for name, table_written in (("descending", descending), ("interleaved", interleaved)):
        (tmp_path / name).mkdir()
        pq.write_table(table_written, tmp_path / name / "part.parquet")
        np.testing.assert_array_equal(read_shard(DatasetPlan.open(str(tmp_path / name)), first_file), sample[:25])
    floats = table.set_column(1, "time", table["time"].cast(pa.float64()))
    for name, table_written in (("floats", floats), ("nan", floats.set_column(
            2, "x0", pa.array(np.r_[np.nan, table["x0"].to_numpy()[1:]], pa.float32())))):
        other = tmp_path / name
        other.mkdir()
        pq.write_table(table_written, other / "part.parquet")
        plan = DatasetPlan.open(str(other))
        if name == "floats":
            np.testing.assert_array_equal(read_shard(plan, first_file), sample[:25])
        else:
            with pytest.raises(InvalidParameterError, match="'x0' must hold only finite values.*1 NaN"):
                read_shard(plan, first_file)
    repeated = tmp_path / "repeated"  # a step repeated in place of another: same row count, not in order
    repeated.mkdir()
    times = table["time"].to_numpy().copy()
    times[3] = 2
    pq.write_table(table.set_column(1, "time", pa.array(times)), repeated / "part.parquet")
    with pytest.raises(InvalidParameterError, match="same 5 time steps|one row per"):
        read_shard(DatasetPlan.open(str(repeated)), first_file)


def test_string_ids_and_files_without_statistics(sample, tmp_path):
    folder = tmp_path / "data"
    ids = np.array(sorted(f"s{i}" for i in range(40)))  # lexicographic: s0, s1, s10, s11, ...
    write_dataset(sample[:40], str(folder), series_per_file=15, series_ids=ids)
    plain = pq.read_table(folder / "part-00001.parquet")
    pq.write_table(plain, folder / "part-00001.parquet", write_statistics=False)
    plan = DatasetPlan.open(str(folder))
    assert [(f.min_id, f.max_id) for f in plan.files] == [(ids[0], ids[14]), (ids[15], ids[29]), (ids[30], ids[39])]
    shards = Layout.for_sample(40, 8, 16).shards
    np.testing.assert_array_equal(np.concatenate([read_shard(plan, s) for s in shards]), sample[:40])


@pytest.mark.parametrize("kind", ["noise", "permute", "ablate", "noise-per-step-group-resample"])
def test_units_on_the_dataset_view_equal_in_memory_units(dataset, sample, kind):
    """The method's own code (baseline and unit sums) on a SampleView gives bit-identical sums."""
    from conftest import linear_lstm_free_model
    from rnnimp.method import Metric, Target
    from rnnimp.modelio import ModelSpec
    from rnnimp.perturb import Perturbation
    from rnnimp.worker import EvaluationJob, LocalExecutor, Settings
    from rnnimp.dataset import SampleView

    plan = DatasetPlan.open(dataset)
    layout = Layout.for_sample(N_SERIES, 16, 32)
    moments = Moments.of(sample)
    perturbation = {
        "noise": Perturbation("noise", scales=tuple(0.5 * moments.stds())),
        "permute": Perturbation("permute"),
        "ablate": Perturbation("ablate", values=tuple(moments.means())),
    }[kind.split("-")[0]]
    settings = Settings(layout, perturbation, Metric("rms"), jit_compile=False)
    spec = ModelSpec.from_model(linear_lstm_free_model([1.0, -2.0, 0.5], time_steps=N_TIME))
    targets = [Target("a", (0,)), Target("c", (2,)), Target("b+c", (1, 2))]
    steps = [None, 3] if kind.endswith("resample") else [None]
    units = plan_units(7, targets, range(2), layout.shards, steps, resample=kind.endswith("resample"))
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    small = ShardReader(plan, budget_bytes=3 * plan.nbytes // N_SERIES * 32)  # 3 shards of 32 series: evictions
    results = []
    for data, threads in ((sample, 1), (SampleView(reader, layout.shards), 3), (SampleView(small, layout.shards), 3)):
        job = EvaluationJob(spec, data, None, settings)
        executor = LocalExecutor(threads)  # three threads share each reader
        try:
            baseline = executor.baseline(job)
            results.append(dict(executor.evaluate(job, baseline, units)))
        finally:
            executor.shutdown()
    for from_dataset in results[1:]:
        for unit, in_memory in results[0].items():
            np.testing.assert_array_equal(from_dataset[unit], in_memory)
    assert reader.misses == len(layout.shards)  # every shard read once, whatever the units and threads
    assert small.evictions > 0 and small.cached_bytes <= small.budget_bytes


def test_plan_and_reader_travel_to_workers_by_pickle(dataset, sample, s3):
    import pickle

    plan = pickle.loads(pickle.dumps(DatasetPlan.open(dataset)))
    np.testing.assert_array_equal(read_shard(plan, Layout.for_sample(N_SERIES, 16, 32).shards[2]), sample[64:96])
    uri = s3.uri(f"{BUCKET}/datasets/pickled")
    write_dataset(sample, uri, series_per_file=100)
    remote = pickle.loads(pickle.dumps(DatasetPlan.open(uri)))
    np.testing.assert_array_equal(read_shard(remote, Layout.for_sample(N_SERIES, 16, 32).shards[3]), sample[96:128])


# ---------------------------------------------------------------------------------------------
# Static inputs: one row per series


@pytest.fixture(scope="module")
def static_values():
    rng = np.random.default_rng(6)
    return (rng.normal(size=(N_SERIES, 2)) * [1e4, 1e-2] + [3.0, -7.0]).astype(np.float32)


@pytest.fixture(scope="module")
def static_dataset(static_values, ids, tmp_path_factory):
    """Files of 60 series (shards of 32 cross file boundaries), row groups of 25, rows shuffled."""
    from rnnimp.dataset import write_static_dataset

    folder = str(tmp_path_factory.mktemp("static") / "data")
    write_static_dataset(static_values, folder, series_per_file=60, series_ids=ids, rows_per_group=25,
                         shuffle_seed=2, feature_names=["s1", "s2"])
    return folder


def test_static_plan_reads_footers_only(static_dataset, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the plan read a column")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pads, "dataset", refuse)
    plan = DatasetPlan.open(static_dataset, static=True)
    assert plan.static and plan.shape == (N_SERIES, 2) and plan.nbytes == 4 * N_SERIES * 2
    assert plan.feature_names == ("s1", "s2") and plan.times == ()
    assert [f.n_series for f in plan.files] == [60, 60, 60, 50]
    assert [f.first_series for f in plan.files] == [0, 60, 120, 180]


@pytest.mark.parametrize("shard_size", [16, 64, 230])
def test_static_shards_equal_the_in_memory_static_input(static_dataset, static_values, shard_size, tmp_path):
    """Shards read back equal the in-memory reader's array of all the files' rows (in id order)."""
    from rnnimp.data import load_input

    table = pa.concat_tables(pq.read_table(f"{static_dataset}/{name}") for name in sorted(os.listdir(static_dataset)))
    pq.write_table(table, tmp_path / "all.parquet")
    loaded = load_input(str(tmp_path / "all.parquet"), "static")
    np.testing.assert_array_equal(loaded.array, static_values)
    plan = DatasetPlan.open(static_dataset, static=True)
    shards = Layout.for_sample(N_SERIES, 16, shard_size).shards
    parts = [read_shard(plan, shard) for shard in shards]
    assert all(part.dtype == np.float32 and part.flags.c_contiguous for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), loaded.array)


def test_static_view_reads_rows_and_donors_through_the_cache(static_dataset, static_values):
    from rnnimp.dataset import SampleView

    plan = DatasetPlan.open(static_dataset, static=True)
    shards = Layout.for_sample(N_SERIES, 16, 32).shards
    reader = ShardReader(plan, budget_bytes=plan.nbytes)
    view = SampleView(reader, shards)
    assert (view.shape, view.ndim, len(view)) == ((N_SERIES, 2), 2, N_SERIES)
    np.testing.assert_array_equal(view[40:70], static_values[40:70])
    sources = permutation((3, 1), N_SERIES)
    np.testing.assert_array_equal(view[sources], static_values[sources])
    assert reader.misses == len(shards) and reader.hits > 0
    assert combine([Moments.of(reader.read(s)) for s in shards]) == Moments.of(static_values)


def test_static_datasets_with_bad_rows_are_refused(static_values, tmp_path):
    from rnnimp.dataset import write_static_dataset

    folder = tmp_path / "dup"
    write_static_dataset(static_values[:30], str(folder), series_per_file=10, series_ids=np.arange(30) * 2)
    table = pq.read_table(folder / "part-00001.parquet")
    repeated = pa.concat_tables([table, table.slice(3, 1)])  # series 26 twice
    pq.write_table(repeated, folder / "part-00001.parquet")
    plan = DatasetPlan.open(str(folder), static=True)
    with pytest.raises(InvalidParameterError, match=r"one row per series.*series 26 has several rows in "
                                                    r".*part-00001.parquet") as refused:
        read_shard(plan, Layout.for_sample(30, 8, 16).shards[0])  # rows 0..15: part of the second file
    import pickle

    travelled = pickle.loads(pickle.dumps(refused.value))  # as a worker's refusal reaches the driver
    assert (type(travelled), str(travelled), travelled.value) == (InvalidParameterError, str(refused.value),
                                                                  refused.value.value)
    write_static_dataset(static_values[:30], str(tmp_path / "x"), series_per_file=10, series_ids=np.arange(30))
    (tmp_path / "x" / "part-00001.parquet").rename(tmp_path / "y.parquet")
    write_static_dataset(static_values[:5], str(tmp_path / "z"), series_per_file=5, series_ids=np.arange(4, 9))
    (tmp_path / "z" / "part-00000.parquet").rename(tmp_path / "x" / "part-00009.parquet")
    with pytest.raises(InvalidParameterError, match=r"wholly inside one file.*series 4 is in"):
        DatasetPlan.open(str(tmp_path / "x"), static=True)
    names = tmp_path / "ids"
    write_static_dataset(static_values[:4], str(names), series_per_file=4, series_ids=np.array(["a", "b", "c", "d"]))
    table = pq.read_table(names / "part-00000.parquet")
    pq.write_table(table.set_column(0, "series", pa.array(["a", "c", "b", "c"])), names / "part-00000.parquet")
    with pytest.raises(InvalidParameterError, match=r"series 'c' has several rows in .*part-00000.parquet"):
        read_shard(DatasetPlan.open(str(names), static=True), Layout.for_sample(4, 4, 4).shards[0])
    with pytest.raises(InvalidParameterError, match="static input and needs one row per series, without a 'time'"):
        DatasetPlan.open(_long_form(tmp_path), static=True)


def _long_form(tmp_path) -> str:
    write_dataset(np.zeros((4, 2, 2), np.float32), str(tmp_path / "long"), series_per_file=4)
    return str(tmp_path / "long")
