"""``ray job submit`` of a job to a local head, end to end: a ``jobs.importance`` run reading a partitioned
dataset, stopped mid-run with ``ray job stop`` and submitted again, resumes from its checkpoint and finishes
with the effects of the same request on the in-memory sample, computed in this process without Ray."""

import json
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray.job_submission import JobStatus, JobSubmissionClient

from jobtools import REPO
from rnnimp import reference, sensitivity_importance
from rnnimp.modelio import load_model
from rnnimp.checkpoint import Checkpoint
from rnnimp.dataset import write_dataset
from raycluster import BIN, LocalHead, processes_mentioning

pytestmark = pytest.mark.slow

# 3 features x 40 repeats x 16 shards = 1920 units over a dataset of 4 files, on the session's trained model: the
# job is stopped once its first units reach the checkpoint, well before its last on a loaded machine too.
N_SERIES, REPEATS, BATCH, SHARD = 8192, 40, 256, 512
ARGS = ["--repeats", str(REPEATS), "--eval-batch-size", str(BATCH), "--shard-size", str(SHARD), "--quiet"]
UNITS = 3 * REPEATS * (N_SERIES // SHARD)


def ray_cli(head, *args, timeout=600):
    return subprocess.run([str(BIN / "ray"), *args], env=head.env, capture_output=True, text=True, timeout=timeout)


def submit(head, submission_id, out, args, wait=True, module="jobs.importance"):
    # finished units reach the checkpoint every 0.2 s, so the job is stopped with part of them kept
    runtime_env = json.dumps({"env_vars": {"RNNIMP_CHECKPOINT_INTERVAL_S": "0.2"}})
    return ray_cli(head, "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO),
                   "--runtime-env-json", runtime_env,
                   "--submission-id", submission_id, *([] if wait else ["--no-wait"]),
                   "--", "python", "-m", module, "--out", str(out), *args)


def test_submitted_dataset_job_stopped_mid_run_resumes_when_submitted_again(tmp_path, reference_model_file):
    sample = reference.evaluation_sample(1, N_SERIES)  # a dataset of 4 files, read by the workers
    write_dataset(sample, str(tmp_path / "data"), series_per_file=N_SERIES // 4, feature_names=["x1", "x2", "x3"])
    args = ["--model", str(reference_model_file), "--data", str(tmp_path / "data"), *ARGS]
    out = tmp_path / "run"

    def checkpointed() -> int:
        return len(Checkpoint(str(out), {}).finished())

    with LocalHead(num_cpus=1) as head:  # one worker per job: stopping and resuming need no more
        started = submit(head, "rnnimp-first", out, args, wait=False)
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 300
        while checkpointed() < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        # what `ray job stop` and `ray job status` send, without a CLI process to start on a loaded machine
        jobs = JobSubmissionClient(head.dashboard_url)
        assert jobs.stop_job("rnnimp-first")
        while not jobs.get_job_status("rnnimp-first").is_terminal() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert jobs.get_job_status("rnnimp-first") == JobStatus.STOPPED
        assert 20 <= checkpointed() < UNITS and not (out / "summary.parquet").exists()

        again = submit(head, "rnnimp-again", out, args)
        temp_dir = head.temp_dir
    assert not processes_mentioning(temp_dir), "the test head left processes behind"
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "succeeded" in again.stdout
    assert "rnnimp: running on Ray cluster at " in again.stdout  # attached through RAY_ADDRESS
    assert "resumed: " in again.stdout and f"of {UNITS} units came from the checkpoint" in again.stdout
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [row["feature"] for row in summary] == ["x1", "x2", "x3"]

    # The same request on the in-memory sample, undisturbed, by the API in this process without Ray (the job
    # and the API share their options and defaults; the job from an in-memory .npy is tested in
    # tests/test_importance_job.py).
    in_memory = sensitivity_importance(load_model(str(reference_model_file)), sample, n_repeats=REPEATS,
                                       batch_size=BATCH, shard_size=SHARD, feature_names=["x1", "x2", "x3"])
    written = pq.read_table(out / "effects.parquet").to_pandas()
    expected = in_memory.effects_table().to_pandas()
    assert written["feature"].tolist() == expected["feature"].tolist()
    np.testing.assert_array_equal(written["effect"].to_numpy(), expected["effect"].to_numpy())
