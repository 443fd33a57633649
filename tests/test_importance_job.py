"""jobs.importance: your own model and data from the command line."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import linear_lstm_free_model
from jobtools import call_job
from rnnimp.data import write_long_parquet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    model = linear_lstm_free_model([1.0, -3.0, 0.0], time_steps=4)
    model.save(folder / "model.keras")
    sample = np.random.default_rng(0).random((120, 4, 3), dtype=np.float32)
    np.save(folder / "data.npy", sample)
    write_long_parquet(sample, str(folder / "data.parquet"), ["price", "volume", "noise"])
    np.save(folder / "labels.npy", model.predict(sample, verbose=0))
    bad = sample.copy()
    bad[3, 2, 1] = np.nan
    np.save(folder / "nan.npy", bad)
    np.save(folder / "short.npy", sample[:, :3])
    np.save(folder / "labels_short.npy", np.zeros((50, 4), dtype=np.float32))
    infinite = sample.copy()
    infinite[0, 0, 0] = np.inf
    np.save(folder / "inf.npy", infinite)
    np.save(folder / "empty.npy", sample[:0])
    return folder


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "{f}/nan.npy"], "--data: must hold only finite values, got '1 NaN or infinite values'"),
        (["--data", "{f}/inf.npy"], "--data: must hold only finite values, got '1 NaN or infinite values'"),
        (["--data", "{f}/empty.npy"], "--data: must not be empty, got (0, 4, 3)"),
        (["--data", "{f}/short.npy"], "--data: must match the model's input shape (series, 4, 3)"),
        (["--data", "{f}/missing.npy"], "--data: must be an existing readable file"),
        (["--feature-names", "a,b"], "--feature-names: "),
        (["--group", "g=price,colour"], "--group: must name known features (price, volume, noise)"),
        (["--group", "g=0,7"], "--group: must name known features (price, volume, noise) or indexes 0..2, got 7"),
        (["--metric", "loss-increase"], "--labels: labels are required for the loss-increase metric"),
        (["--metric", "loss-increase", "--labels", "{f}/labels_short.npy"], "--labels: "),
        (["--perturbation", "ablate", "--ablate-value", "median"], "--ablate-value: must be 'mean', 'zero' or a finite number"),
        (["--noise-relative", "-1"], "--noise-relative: must be a finite number > 0, got -1.0"),
    ],
)
def test_bad_input_is_refused_before_any_work(files, tmp_path, extra, message):
    out = tmp_path / "out"
    data = [] if "--data" in extra else ["--data", f"{files}/data.parquet"]
    args = ["--model", f"{files}/model.keras", *data, *(e.format(f=files) for e in extra), "--out", str(out)]
    done = call_job("jobs.importance", *args, ray=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_parquet_data_groups_and_permutation_on_ray(files, tmp_path):
    out = tmp_path / "permute"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", "--data", f"{files}/data.parquet",
                    "--perturbation", "permute", "--group", "both=price,volume", "--repeats", "4",
                    "--num-cpus", "1", "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [row["feature"] for row in summary] == ["price", "volume", "noise", "both"]
    assert summary[2]["mean"] == 0 and summary[3]["rank"] == 1 and summary[1]["rank"] == 2
    assert "both" in done.stdout and "price" in done.stdout


@pytest.mark.slow
def test_loss_increase_per_step_map_from_npy(files, tmp_path):
    out = tmp_path / "steps"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", "--data", f"{files}/data.npy",
                   "--labels", f"{files}/labels.npy", "--metric", "loss-increase", "--per-step",
                   "--repeats", "3", "--executor", "local", "--quiet", "--out", str(out))  # Ray adds nothing here
    assert done.returncode == 0, done.stderr
    effects = pq.read_table(out / "effects.parquet")
    assert effects.num_rows == 3 * 4 * 3 and "step" in effects.column_names
    assert (out / "effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    x2 = [row["mean"] for row in summary if row["feature"] == "x2"]
    assert len(x2) == 4 and min(x2) > 0  # every step of x2 matters


def test_overwrite_discards_results_of_another_configuration(tmp_path):
    import json

    import pyarrow as pa

    from rnnimp import cli, output
    from rnnimp.errors import InvalidParameterError

    out = tmp_path / "old"
    table = pa.table({"feature": ["x1"]}).replace_schema_metadata(
        {output.METADATA_KEY: json.dumps({"configuration": {"n_repeats": 5}, "job": {"name": "importance"}})})
    output.write_table(table, str(out), output.SUMMARY_FILE)
    output.write_bytes(b"model", str(out), output.MODEL_FILE)
    current = {"configuration": {"n_repeats": 6}, "job": {"name": "importance"}}
    with pytest.raises(InvalidParameterError, match="holds results of another configuration"):
        cli.check_out(str(out), current, overwrite=False)
    cli.check_out(str(out), {"configuration": {"n_repeats": 5}, "job": {"name": "importance"}}, overwrite=False)
    cli.check_out(str(out), current, overwrite=True)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_executor_local_runs_in_this_process_without_ray_with_the_effects_of_one_thread(files, tmp_path,
                                                                                      monkeypatch):
    import ray

    from rnnimp import distributed, sensitivity_importance
    from rnnimp.modelio import load_model
    from rnnimp.output import read_metadata
    from rnnimp.worker import LocalExecutor

    monkeypatch.setattr(distributed, "connect", lambda *args, **kwargs: pytest.fail("--executor local started Ray"))
    out = tmp_path / "local"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", "--data", f"{files}/data.npy",
                    "--perturbation", "permute", "--repeats", "5", "--shard-size", "32", "--eval-batch-size", "16",
                    "--seed", "3", "--executor", "local", "--num-cpus", "2", "--quiet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"rnnimp: running in this process (2 CPUs, 4 threads, no Ray); results go to {out}" in done.stdout
    assert not ray.is_initialized()
    metadata = read_metadata(str(out / "summary.parquet"))
    assert metadata["executor"] == "local" and metadata["workers"] == {"threads": 4}
    assert "start_ray" not in metadata["timings_s"]
    assert "units" in done.stdout.split("phases:")[1]
    one_thread = sensitivity_importance(
        load_model(f"{files}/model.keras"), np.load(f"{files}/data.npy"), perturbation="permute", n_repeats=5,
        shard_size=32, batch_size=16, random_state=3, executor=LocalExecutor(threads=1))
    effects = pq.read_table(out / "effects.parquet").replace_schema_metadata(None)
    assert one_thread.effects_table().replace_schema_metadata(None).select(effects.column_names).equals(effects)


@pytest.mark.parametrize("extra, message", [
    (["--gpus-per-worker", "0.5"], "--gpus-per-worker: applies to Ray workers, not to --executor local, got 0.5"),
    (["--workers-only"], "--workers-only: applies to Ray workers, not to --executor local, got True"),
])
def test_executor_local_refuses_options_of_ray_workers(files, tmp_path, extra, message):
    out = tmp_path / "out"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", "--data", f"{files}/data.npy",
                    "--executor", "local", *extra, "--out", str(out), ray=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
