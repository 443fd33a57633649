"""jobs.importance and jobs.show with several metrics, per output, conditional permutation and segments."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import linear_lstm_free_model
from jobtools import call_job
from rnnimp.data import write_long_parquet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    model = linear_lstm_free_model([1.0, -3.0, 0.0], time_steps=4)
    model.save(folder / "model.keras")
    sample = np.random.default_rng(0).random((120, 4, 3), dtype=np.float32)
    write_long_parquet(sample, str(folder / "data.parquet"), ["price", "volume", "noise"])
    table = pq.read_table(folder / "data.parquet")
    month = pc.if_else(pc.less(table["series"], 60), "2024-01", "2024-02")
    pq.write_table(table.append_column("month", month), folder / "segmented.parquet")
    varying = pc.if_else(pc.less(table["time"], 2), "2024-01", "2024-02")
    pq.write_table(table.append_column("month", varying), folder / "varying.parquet")
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--segment-column", "month", "--data", "{f}/varying.parquet"],
     "--segment-column: column 'month' must be constant within each series (one segment per series), "
     "got \"series 0 has '2024-01', '2024-02'\""),
    (["--segment-column", "site", "--data", "{f}/segmented.parquet"],
     "--segment-column: must name a column of a Parquet --data file, got 'site'"),
    (["--condition-on", "volume", "--data", "{f}/data.parquet"],
     "--condition-on: needs --perturbation conditional-permute"),
    (["--perturbation", "conditional-permute", "--data", "{f}/data.parquet"],
     "--condition-on: must name at least one feature for --perturbation conditional-permute"),
    (["--perturbation", "conditional-permute", "--condition-on", "volume,price", "--strata", "40",
      "--data", "{f}/data.parquet"], "--strata: every stratum of condition_on must hold at least 2 series"),
    (["--output-names", "a,b", "--data", "{f}/data.parquet"], "--output-names: needs --per-output"),
    (["--per-output", "--output-names", "a,b", "--data", "{f}/data.parquet"],
     "--output-names: must give 4 names, one per output value of the model"),
    (["--metric", "rms,median", "--data", "{f}/data.parquet"], "--metric: must be one of rms, mae, loss-increase"),
    (["--metric", "rms,rms", "--data", "{f}/data.parquet"], "--metric: must be one or more distinct metrics"),
])
def test_refusals_before_any_work(files, tmp_path, extra, message):
    out = tmp_path / "out"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", *(e.format(f=files) for e in extra),
                    "--out", str(out), ray=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_metrics_outputs_conditional_and_segments_end_to_end_on_ray(files, tmp_path):
    out = tmp_path / "answers"
    done = call_job("jobs.importance", "--model", f"{files}/model.keras", "--data", f"{files}/segmented.parquet",
                    "--segment-column", "month", "--metric", "rms,mae", "--per-output",
                    "--output-names", "t0,t1,t2,t3", "--perturbation", "conditional-permute",
                    "--condition-on", "volume", "--strata", "2", "--repeats", "3", "--num-cpus", "1", "--quiet",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = pq.read_table(out / "summary.parquet")
    assert summary.column_names[:4] == ["metric", "segment", "output", "output_name"]
    assert summary.num_rows == 2 * 2 * 5 * 3  # metrics x segments x (pooled + 4 outputs) x features
    assert "month" not in summary["feature"].to_pylist()
    drift = pq.read_table(out / "segment_comparisons.parquet")
    assert drift.num_rows == 2 * 5 * 3 and set(drift["segment_a"].to_pylist()) == {"2024-01"}
    for chart in ("effects.png", "segments.png", "outputs.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = call_job("jobs.show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "metric=mae segment=2024-02 output=t3" in shown.stdout


def test_seed_importance_takes_several_metrics_and_refuses_bad_ones(tmp_path):
    done = call_job("jobs.seed_importance", "--metric", "rms,median", "--out", str(tmp_path / "out"), ray=False)
    assert done.returncode == 2 and "--metric: must be one of rms, mae, loss-increase" in done.stderr
    done = call_job("jobs.seed_importance", "--output-names", "a", "--out", str(tmp_path / "out"), ray=False)
    assert done.returncode == 2 and "--output-names: needs --per-output" in done.stderr
