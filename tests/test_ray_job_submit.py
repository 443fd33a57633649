"""``ray job submit`` of the main job to a local head, end to end."""

import subprocess

import pyarrow.parquet as pq
import pytest

from jobtools import REPO
from raycluster import BIN, LocalHead, processes_mentioning

pytestmark = pytest.mark.slow


def test_ray_job_submit_runs_the_main_job(tmp_path):
    out = tmp_path / "submitted"
    with LocalHead(num_cpus=2) as head:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO),
             "--", "python", "-m", "jobs.seed_importance", "--out", str(out), "--epochs", "1",
             "--steps-per-epoch", "200", "--repeats", "3", "--samples", "64", "--quiet"],
            env=head.env, capture_output=True, text=True, timeout=600,
        )
        temp_dir = head.temp_dir
    assert not processes_mentioning(temp_dir), "the test head left processes behind"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    assert "rnnimp: running on Ray cluster at " in done.stdout  # attached through RAY_ADDRESS
    assert pq.read_table(out / "effects.parquet").num_rows == 9
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [row["feature"] for row in summary] == ["x1", "x2", "x3"]
