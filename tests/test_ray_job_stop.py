"""``ray job stop`` mid-run, then the same job submitted again, resumes from the checkpoint."""

import subprocess
import time

import pyarrow.parquet as pq
import pytest

from jobtools import REPO
from raycluster import BIN, LocalHead

pytestmark = pytest.mark.slow

ARGS = ["--epochs", "1", "--steps-per-epoch", "100", "--samples", "8192", "--repeats", "8",
        "--eval-batch-size", "256", "--shard-size", "512", "--quiet"]


def ray_cli(head, *args, timeout=600):
    return subprocess.run([str(BIN / "ray"), *args], env=head.env, capture_output=True, text=True, timeout=timeout)


def submit(head, submission_id, out, wait=True):
    return ray_cli(head, "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO),
                   "--submission-id", submission_id, *([] if wait else ["--no-wait"]),
                   "--", "python", "-m", "jobs.seed_importance", "--out", str(out), *ARGS)


def test_stopped_job_resumes_when_submitted_again(tmp_path):
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    units = out / ".rnnimp-checkpoint" / "units"
    with LocalHead(num_cpus=2) as head:
        started = submit(head, "rnnimp-first", out, wait=False)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 300
        while (not units.exists() or len(list(units.glob("*.npy"))) < 60) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = ray_cli(head, "job", "stop", "--address", head.dashboard_url, "rnnimp-first")
        assert stopped.returncode == 0, stopped.stderr
        status = ray_cli(head, "job", "status", "--address", head.dashboard_url, "rnnimp-first").stdout
        assert "stopped" in status.lower()
        checkpointed = len(list(units.glob("*.npy")))
        assert 60 <= checkpointed < 3 * 8 * 16 and not (out / "summary.parquet").exists()

        again = submit(head, "rnnimp-again", out)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "resumed: " in again.stdout and "units came from the checkpoint" in again.stdout
        reference = submit(head, "rnnimp-fresh", fresh)
        assert reference.returncode == 0, reference.stdout[-3000:]
    for name in ("effects.parquet", "summary.parquet"):
        assert pq.read_table(out / name).replace_schema_metadata(None).equals(
            pq.read_table(fresh / name).replace_schema_metadata(None))
