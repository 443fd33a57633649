"""Faults: a worker process killed mid-run, a driver killed mid-run, an unreachable cluster."""

import os
import shutil
import signal
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobtools import REPO, call_job, seed_importance_in_process
from raycluster import processes_mentioning
from rnnimp.checkpoint import Checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(monkeypatch):
    """An embedded Ray of 2 CPUs with its dashboard (Ray's state API needs it), on 127.0.0.1."""
    import ray

    from raycluster import free_port
    from rnnimp import distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), _node_ip_address="127.0.0.1")
    yield distributed
    distributed.shutdown()


def test_killing_a_worker_process_mid_run_changes_nothing(local_ray, reference_training):
    import ray
    from ray.util.state import list_actors

    from rnnimp import reference, sensitivity_importance

    sample = reference.evaluation_sample(1, 16384)
    options = dict(n_repeats=6, random_state=1, batch_size=512, shard_size=1024)
    undisturbed = sensitivity_importance(reference_training.model, sample, **options)  # in process: no actors to start

    executor = local_ray.RayExecutor(num_workers=1)  # its loss leaves no other worker: a replacement must come
    finished = []
    outcome = {}

    def run():
        outcome["result"] = sensitivity_importance(reference_training.model, sample, executor=executor, **options)

    def progress_hook():  # count finished units from the pool as they come (a task is a batch of units)
        original = executor.pool.run

        def counting(*args, **kwargs):
            for item in original(*args, **kwargs):
                finished.extend(getattr(item[0], "units", [item[0]]))
                yield item

        executor.pool.run = counting

    executor.start()
    progress_hook()
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while len(finished) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    workers = [a for a in alive if a.class_name.endswith("_EvaluationWorker")]
    assert workers, "no live worker found through the state API"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert executor.pool.replaced >= 1  # the loss was noticed and a replacement started
    executor.shutdown()
    np.testing.assert_array_equal(outcome["result"].effects, undisturbed.effects)
    assert ray.is_initialized()


def test_killed_driver_resumes_with_identical_results(tmp_path, reference_model_file):
    import subprocess
    import sys

    temp_root = tempfile_dir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = temp_root  # the embedded Ray's processes are found (and stopped) by this path
    env["RNNIMP_CHECKPOINT_INTERVAL_S"] = "0.2"  # finished units reach the checkpoint every 0.2 s
    args = ["--model", str(reference_model_file), "--samples", "8192", "--repeats", "8",
            "--eval-batch-size", "256", "--shard-size", "512", "--num-cpus", "1", "--quiet"]
    out = tmp_path / "run"

    def finished() -> int:
        return len(Checkpoint(str(out), {}).finished())

    try:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.seed_importance", "--out", str(out), *args],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while finished() < 60 and time.monotonic() < deadline:
            assert driver.poll() is None, driver.communicate()
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        checkpointed = finished()
        assert checkpointed >= 60 and not (out / "summary.parquet").exists()
        stop_processes(temp_root)

        # resumed in this process: the kill needed a process of its own, the resume does not
        resumed = call_job("jobs.seed_importance", "--out", str(out), *args, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        total = 3 * 8 * 16
        assert f"resumed: {checkpointed} of {total} units came from the checkpoint" in resumed.stdout
        assert "trained" not in resumed.stdout  # --model: loaded, not trained
        assert not (out / ".rnnimp-checkpoint").exists()
    finally:
        stop_processes(temp_root)
        shutil.rmtree(temp_root, ignore_errors=True)  # the embedded Ray's session folder

    fresh = seed_importance_in_process(tmp_path / "fresh", *args)  # undisturbed, in this process without Ray
    for name in ("effects.parquet", "summary.parquet"):
        assert pq.read_table(out / name).replace_schema_metadata(None).equals(
            pq.read_table(fresh / name).replace_schema_metadata(None))


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="rk", dir="/tmp")


def stop_processes(marker: str) -> None:
    """Kill (by pid) what is left of a Ray whose temp folder is ``marker``."""
    for pid in processes_mentioning(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_unreachable_ray_address_fails_fast_with_one_line(tmp_path):
    started = time.monotonic()
    done = call_job("jobs.seed_importance", "--out", str(tmp_path / "o"), "--repeats", "2", "--connect-timeout", "3",
                    env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert done.returncode == 2, done.stderr
    assert "RAY_ADDRESS: must name a reachable Ray cluster" in done.stderr
    assert time.monotonic() - started < 30
    assert "no answer within 3 s" in done.stderr
    assert not (tmp_path / "o").exists()
