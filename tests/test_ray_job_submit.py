"""``ray job submit`` of the main job to a local head, end to end: a submission stopped mid-run with
``ray job stop`` and submitted again resumes from its checkpoint and finishes with the effects of an
undisturbed run (computed in process); a submitted ``jobs.importance`` run reading a partitioned dataset
gives the effects of the in-memory run of the same data."""

import json
import subprocess
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray.job_submission import JobStatus, JobSubmissionClient

from jobtools import REPO, seed_importance_in_process
from rnnimp import reference, sensitivity_importance
from rnnimp.modelio import load_model
from rnnimp.checkpoint import Checkpoint
from rnnimp.dataset import write_dataset
from raycluster import BIN, LocalHead, processes_mentioning

pytestmark = pytest.mark.slow

# 3 features x 40 repeats x 16 shards = 1920 units, on the session's trained model (no training in the job): the
# job is stopped once its first units reach the checkpoint, well before its last on a loaded machine too.
ARGS = ["--samples", "8192", "--repeats", "40", "--eval-batch-size", "256", "--shard-size", "512", "--quiet"]
UNITS = 3 * 40 * 16


def ray_cli(head, *args, timeout=600):
    return subprocess.run([str(BIN / "ray"), *args], env=head.env, capture_output=True, text=True, timeout=timeout)


def submit(head, submission_id, out, args, wait=True, module="jobs.seed_importance"):
    # finished units reach the checkpoint every 0.2 s, so the job is stopped with part of them kept
    runtime_env = json.dumps({"env_vars": {"RNNIMP_CHECKPOINT_INTERVAL_S": "0.2"}})
    return ray_cli(head, "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO),
                   "--runtime-env-json", runtime_env,
                   "--submission-id", submission_id, *([] if wait else ["--no-wait"]),
                   "--", "python", "-m", module, "--out", str(out), *args)


def test_submitted_job_stopped_mid_run_resumes_when_submitted_again(tmp_path, reference_model_file):
    args = [*ARGS, "--model", str(reference_model_file)]
    out = tmp_path / "run"

    def checkpointed() -> int:
        return len(Checkpoint(str(out), {}).finished())

    with LocalHead(num_cpus=2) as head:
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

        sample = reference.evaluation_sample(1, 2048)  # a dataset of 4 files, read by the workers
        write_dataset(sample, str(tmp_path / "data"), series_per_file=512, feature_names=["x1", "x2", "x3"])
        dataset_args = ["--model", str(reference_model_file), "--repeats", "3", "--eval-batch-size", "256",
                        "--shard-size", "512", "--quiet"]
        from_dataset = submit(head, "rnnimp-dataset", tmp_path / "from_dataset",
                              ["--data", str(tmp_path / "data"), *dataset_args], module="jobs.importance")
        temp_dir = head.temp_dir
    assert not processes_mentioning(temp_dir), "the test head left processes behind"
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "succeeded" in again.stdout
    assert "rnnimp: running on Ray cluster at " in again.stdout  # attached through RAY_ADDRESS
    assert "resumed: " in again.stdout and f"of {UNITS} units came from the checkpoint" in again.stdout
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [row["feature"] for row in summary] == ["x1", "x2", "x3"]

    fresh = seed_importance_in_process(tmp_path / "fresh", *args)  # undisturbed, in this process without Ray
    for name in ("effects.parquet", "summary.parquet"):
        assert pq.read_table(out / name).replace_schema_metadata(None).equals(
            pq.read_table(fresh / name).replace_schema_metadata(None))

    assert from_dataset.returncode == 0, from_dataset.stdout[-3000:] + from_dataset.stderr[-3000:]
    # the same request on the in-memory sample, by the API in this process (the job and the API share their
    # options and defaults; the job from an in-memory .npy is tested in tests/test_importance_job.py)
    in_memory = sensitivity_importance(load_model(str(reference_model_file)), sample, n_repeats=3, batch_size=256,
                                       shard_size=512, feature_names=["x1", "x2", "x3"])
    from_dataset_effects = pq.read_table(tmp_path / "from_dataset" / "effects.parquet").to_pandas()
    expected = in_memory.effects_table().to_pandas()
    assert from_dataset_effects["feature"].tolist() == expected["feature"].tolist()
    np.testing.assert_array_equal(from_dataset_effects["effect"].to_numpy(), expected["effect"].to_numpy())
