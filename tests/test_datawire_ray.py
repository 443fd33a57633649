"""Dataset input on Ray and S3: the job from an S3 dataset with --out on S3, resume, worker counts, a lost worker."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobtools import call_job
from rnnimp.api import sensitivity_importance
from rnnimp.dataset import write_dataset
from s3server import BUCKET, s3  # noqa: F401  (the session fixture)
from test_checkpoint import Crash, CrashingExecutor
from test_datawire import N_SERIES, N_TIME, N_FEATURES, small_lstm, two_input_model

OPTIONS = dict(n_repeats=3, batch_size=16, shard_size=32, random_state=7)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(12)
    return (rng.normal(size=(N_SERIES, N_TIME, N_FEATURES)) * [2.0, 1.0, 0.5]).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return small_lstm()


@pytest.fixture(scope="module")
def local_dataset(sample, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dwr") / "data")
    write_dataset(sample, folder, series_per_file=40, rows_per_group=60, shuffle_seed=4)
    return folder


@pytest.fixture(scope="module")
def s3_dataset(sample, s3):
    uri = s3.uri(f"{BUCKET}/datawire/data")
    write_dataset(sample, uri, series_per_file=40, rows_per_group=60, shuffle_seed=4)
    return uri


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(num_cpus=2, address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_checkpoint_on_s3_resumes_a_dataset_run(model, sample, s3_dataset, s3):
    out = s3.uri(f"{BUCKET}/datawire/resume")
    options = dict(OPTIONS, perturbation="ablate")
    reference = sensitivity_importance(model, sample, **options)
    with pytest.raises(Crash):
        sensitivity_importance(model, s3_dataset, executor=CrashingExecutor(after=7), checkpoint=out, **options)
    resumed_executor = CrashingExecutor()
    resumed = sensitivity_importance(model, s3_dataset, executor=resumed_executor, checkpoint=out, **options)
    assert resumed.metadata["units_from_checkpoint"] == 7
    assert resumed_executor.computed == resumed.metadata["n_units"] - 7
    np.testing.assert_array_equal(resumed.effects, reference.effects)


def test_one_worker_and_two_with_one_lost_give_the_in_memory_effects(model, sample, local_dataset, ray_cluster):
    from rnnimp.distributed import RayExecutor

    options = dict(OPTIONS, perturbation="noise", noise_relative=0.5, per_step=True)
    expected = sensitivity_importance(model, sample, **options).effects
    executor = RayExecutor(num_workers=1)
    try:
        result = sensitivity_importance(model, local_dataset, executor=executor, **options)
        (stats,) = executor.worker_stats()
    finally:
        executor.shutdown()
    np.testing.assert_array_equal(result.effects, expected)
    # the worker reads each of the 5 shards once (the budget holds the dataset) and then hits its cache
    assert stats["shard_cache"]["misses"] <= 5 and stats["shard_cache"]["hits"] > 0

    executor = _KillingExecutor(num_workers=2)  # two workers, one lost between the baseline and the units
    try:
        result = sensitivity_importance(model, local_dataset, executor=executor, **options)
        assert executor.pool.replaced == 1
        assert all(s["shard_cache"]["misses"] > 0 for s in executor.worker_stats())  # the replacement read too
    finally:
        executor.shutdown()
    np.testing.assert_array_equal(result.effects, expected)


def _killing_executor_class():
    from rnnimp.distributed import RayExecutor

    class KillingExecutor(RayExecutor):
        def baseline(self, job):
            import ray

            done = super().baseline(job)
            ray.kill(self.pool.live[0], no_restart=True)
            return done

    return KillingExecutor


def _KillingExecutor(**kwargs):
    return _killing_executor_class()(**kwargs)


def test_job_reads_an_s3_dataset_and_writes_out_to_s3(model, sample, s3_dataset, s3, tmp_path):
    model.save(tmp_path / "model.keras")
    common = ["--model", str(tmp_path / "model.keras"), "--repeats", "3", "--eval-batch-size", "16",
              "--shard-size", "32", "--seed", "7", "--perturbation", "noise", "--noise-relative", "0.4",
              "--group", "g=x1,x2", "--num-cpus", "1", "--quiet"]
    out = s3.uri(f"{BUCKET}/datawire/job")
    done = call_job("jobs.importance", *common, "--data", s3_dataset, "--out", out, "--shard-cache-mib", "1")
    assert done.returncode == 0, done.stderr
    # The same request on the in-memory sample, through the API in this process (the job and the API share
    # their options; the job from an in-memory .npy is tested in tests/test_importance_job.py).
    in_memory = sensitivity_importance(model, sample, n_repeats=3, batch_size=16, shard_size=32, random_state=7,
                                       perturbation="noise", noise_relative=0.4, groups={"g": ["x1", "x2"]},
                                       feature_names=["x0", "x1", "x2"]).effects_table().to_pandas()
    filesystem, folder = s3.filesystem(), f"{BUCKET}/datawire/job"
    from_s3 = pq.read_table(f"{folder}/effects.parquet", filesystem=filesystem).to_pandas()
    np.testing.assert_array_equal(from_s3["effect"].to_numpy(), in_memory["effect"].to_numpy())
    assert from_s3["feature"].tolist() == in_memory["feature"].tolist()
    assert sorted(from_s3["feature"].unique()) == ["g", "x0", "x1", "x2"]


def test_the_job_reads_a_static_input_from_a_dataset(sample, local_dataset, tmp_path):
    """On Ray (workers' moments pass and shard views), seq and static datasets give the API's in-memory effects."""
    from rnnimp.dataset import write_static_dataset

    static = (np.random.default_rng(13).normal(size=(N_SERIES, 2)) * [3.0, 0.1]).astype(np.float32)
    write_static_dataset(static, str(tmp_path / "static"), series_per_file=35, rows_per_group=20, shuffle_seed=5,
                         feature_names=["s1", "s2"])
    model = two_input_model()
    model.save(tmp_path / "two.keras")
    done = call_job("jobs.importance", "--model", str(tmp_path / "two.keras"), "--data", f"seq={local_dataset}",
                   "--data", f"static={tmp_path / 'static'}", "--repeats", "2", "--eval-batch-size", "16",
                   "--shard-size", "32", "--perturbation", "ablate", "--group", "g=x1,s2", "--num-cpus", "1",
                   "--quiet", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = pq.read_table(tmp_path / "out" / "effects.parquet").to_pandas()
    expected = sensitivity_importance(model, {"seq": sample, "static": static}, n_repeats=2, batch_size=16,
                                      shard_size=32, perturbation="ablate", groups={"g": ["x1", "s2"]},
                                      feature_names={"seq": ["x0", "x1", "x2"], "static": ["s1", "s2"]})
    assert list(written["feature"].unique()) == ["x0", "x1", "x2", "s1", "s2", "g"]
    np.testing.assert_array_equal(written["effect"].to_numpy(), expected.effects.ravel())

    import pyarrow as pa

    table = pq.read_table(tmp_path / "static" / "part-00001.parquet")  # one id twice, another missing
    pq.write_table(pa.concat_tables([table.slice(0, 5), table.slice(3, 1), table.slice(6)]),
                   tmp_path / "static" / "part-00001.parquet")
    repeated = table["series"][3].as_py()
    done = call_job("jobs.importance", "--model", str(tmp_path / "two.keras"), "--data", f"seq={local_dataset}",
                    "--data", f"static={tmp_path / 'static'}", "--perturbation", "ablate", "--num-cpus", "1",
                    "--quiet", "--out", str(tmp_path / "refused"))  # refused by the workers' pass over the data
    assert done.returncode == 2, done.stderr
    assert ("error: --data static: must have one row per series (a static input), got 'series "
            f"{repeated} has several rows in {tmp_path / 'static' / 'part-00001.parquet'}'") in done.stderr
    assert "Traceback" not in done.stderr and "RayTaskError" not in done.stderr


def test_benchmark_dataset_writes_the_dataset_and_compares_with_the_in_memory_run(tmp_path):
    import json

    folder = tmp_path / "bench-ds"
    done = call_job("jobs.benchmark", "--dataset", str(folder), "--samples", "3000", "--repeats", "2",
                   "--num-cpus", "1", "--epochs", "1", "--eval-batch-size", "512", "--shard-size", "1024",
                   "--dataset-series-per-file", "700")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["dataset_files"] == 5 and figures["identical_effects"] is True
    assert figures["cache_misses"] <= 3 and figures["cache_hits"] > 0  # the worker reads each shard once
    assert figures["dataset_steps_per_s"] > 0 and figures["worker_peak_rss_bytes"] > 0
    assert figures["dataset_worker_cpu_s"] > 0 and figures["in_memory_worker_cpu_s"] > 0 and figures["shard_read_s"] > 0
    assert abs(figures["cpu_ratio"] - figures["in_memory_worker_cpu_s"] / figures["dataset_worker_cpu_s"]) < 0.01
    assert 0 < figures["worker_rss_parts_bytes"]["private"] < figures["worker_peak_rss_bytes"]
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-00000"]


def test_a_workers_refusal_of_its_shard_reaches_an_api_caller_as_itself(model, sample, tmp_path, ray_cluster):
    """Ray wraps what a task raises in a RayTaskError whose text is the worker's traceback; the API re-raises
    rnnimp's own error instead (here from the statistics pass the workers make for a mean ablation)."""
    import pyarrow as pa

    from rnnimp.distributed import RayExecutor
    from rnnimp.errors import InvalidParameterError

    folder = tmp_path / "nan"
    write_dataset(sample, str(folder), series_per_file=40)
    part = folder / "part-00002.parquet"
    table = pq.read_table(part)
    values = table["x1"].to_numpy().copy()
    values[5] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("x1"), "x1", pa.array(values)), part)
    executor = RayExecutor(num_workers=1)
    try:
        with pytest.raises(InvalidParameterError) as refused:
            sensitivity_importance(model, str(folder), executor=executor, **dict(OPTIONS, perturbation="ablate"))
    finally:
        executor.shutdown()
    assert type(refused.value) is InvalidParameterError
    assert str(refused.value) == "X: column 'x1' must hold only finite values, got '1 NaN'"
