"""The main job on a local multi-node Ray cluster (a head and worker nodes, each its own ``ray start``).

One cluster serves the whole module (starting one takes a while); a test that needs two worker nodes
gets the ones a previous test lost replaced first, and tells its own actors from earlier tests' ones.

- Attached through ``RAY_ADDRESS`` to a head without CPUs and two worker
  nodes of one CPU each, the job's two evaluation actors run on both worker
  nodes, over loopback only. Node loss: once units are being evaluated, a
  worker node is killed (SIGKILL of all its processes, by pid). The job
  finishes on the surviving node with effects bit-identical to the same run
  computed in process, without Ray (an undisturbed cluster run adds nothing
  to that). (``LocalCluster.add_worker`` can bring a replacement node, but
  whether rnnimp's replacement actor gets placed on it before the survivor
  has finished is a race on a 2-core machine, so no test relies on it.)
- Baseline loss: the baseline predictions stay in the object store of the
  node whose worker computed them. A worker node killed between the baseline
  and the units takes some of them along; they are computed again and the
  effects are unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from jobtools import REPO, seed_importance_in_process
from raycluster import LocalCluster

pytestmark = pytest.mark.slow

# Jobs load the session's trained model (--model PATH) rather than train their own.
# 4800 units of work (3 features x 40 repeats x 40 shards of 512 series), long enough to lose a node in the
# middle of it (at 5% of the units, read within 1 s): units travel in batches of one shard, and 600 units
# ended before the last node's actor was live.
LONG = ["--repeats", "40", "--samples", "20000", "--eval-batch-size", "512", "--shard-size", "512", "--workers-only"]
# The GCS declares a silent node dead after 3 missed health checks 1 s apart (default: 5 x 3 s).
FAST_NODE_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
WORKER_CLASS = "_EvaluationWorker"  # rnnimp.distributed's actor class


def effects(out) -> "pq.Table":
    return pq.read_table(out / "effects.parquet").replace_schema_metadata(None)


def undisturbed_effects(out, args: list[str]):
    """The same run computed in this process by the API, without Ray."""
    return effects(seed_importance_in_process(out, *args))


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs and worker nodes of one CPU each, which the GCS declares dead soon after a loss."""
    with LocalCluster(num_workers=2, system_env=FAST_NODE_FAILURE_DETECTION) as started:
        yield started
    assert not started.pids(), "the test cluster left processes behind"


@pytest.fixture
def two_workers(cluster):
    """The module's cluster with two live worker nodes (any an earlier test lost replaced)."""
    while len(cluster.workers) < 2:
        cluster.add_worker()
    return cluster


def new_actors(cluster: LocalCluster, earlier: set[str]) -> list[dict]:
    """The evaluation actors the GCS knows of (dead or alive) but those whose ids are in ``earlier``."""
    return [actor for actor in cluster.actors(WORKER_CLASS) if actor["actor_id"] not in earlier]


def actor_ids(cluster: LocalCluster) -> set[str]:
    return {actor["actor_id"] for actor in cluster.actors(WORKER_CLASS)}


def describe(actors: list[dict]) -> list[tuple]:
    """(state, node, restarts, cause of death) of each actor, for messages."""
    return [(actor["state"], (actor["node_id"] or "-")[:8], actor["num_restarts"],
             str((actor.get("death_cause") or {}).get("actor_died_error_context", {}).get("error_message", ""))[:160])
            for actor in actors]


class AttachedJob:
    """``python -m jobs.seed_importance`` attached to a cluster through RAY_ADDRESS, followed as it runs.

    Its progress bar (stderr, one update a second at most) tells how many
    units of work are done; output is collected by reader threads.
    """

    PROGRESS = re.compile(rb"(\d+)/(\d+) \[")

    def __init__(self, cluster: LocalCluster, out, args: list[str]) -> None:
        self.cluster = cluster
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs.seed_importance", "--out", str(out), *args], cwd=REPO,
            env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.units_done = 0
        self.units_total = None
        self.progressed_at = time.monotonic()
        self._readers = [threading.Thread(target=self._read, args=(stream, buffer), daemon=True)
                         for stream, buffer in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, buffer: bytearray) -> None:
        while chunk := stream.read1(65536):
            buffer.extend(chunk)
            if buffer is self.stderr:
                found = self.PROGRESS.findall(bytes(buffer[-4096:]))
                if found and int(found[-1][0]) != self.units_done:
                    self.units_done, self.units_total = int(found[-1][0]), int(found[-1][1])
                    self.progressed_at = time.monotonic()

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_units(self, fraction: float, timeout: float = 400) -> None:
        """Until at least ``fraction`` of the units are done (fails if the job ends first)."""
        deadline = time.monotonic() + timeout
        while not (self.units_total and self.units_done >= fraction * self.units_total):
            assert self.running(), f"the job ended before {fraction:.0%} of its units:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {fraction:.0%} of units after {timeout} s:\n{self.output()}"
            time.sleep(0.2)

    def finish(self, stall_s: float, timeout: float = 600) -> int:
        """Wait for the exit code; fail if no unit finished for ``stall_s`` seconds (a hang)."""
        deadline = time.monotonic() + timeout
        while self.running():
            stalled = time.monotonic() - self.progressed_at
            if stalled > stall_s or time.monotonic() > deadline:
                actors = describe(self.cluster.actors(WORKER_CLASS))
                raise AssertionError(
                    f"the job hangs: no unit finished for {stalled:.0f} s, {self.units_done} of "
                    f"{self.units_total} done; actors (state, node, restarts, death): {actors}; alive nodes: "
                    f"{[node['node_ip'] for node in self.cluster.alive_nodes()]}\n{self.output()}")
            time.sleep(0.5)
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode

    def output(self) -> str:
        def text(buffer):
            return bytes(buffer).decode(errors="replace").replace("\r", "\n")[-6000:]
        return f"--- stdout ---\n{text(self.stdout)}\n--- stderr ---\n{text(self.stderr)}"

    def stop(self) -> None:
        if self.running():
            self.process.kill()
        self.process.wait()


def lose_a_worker_node(cluster: LocalCluster, job: AttachedJob):
    """Kill the last worker node (all its processes, SIGKILL) once 5 % of the units are done."""
    job.wait_for_units(0.05)
    victim = cluster.workers[-1]
    deadline = time.monotonic() + 120  # units travel in batches: 5 % may be done before the victim's actor is live
    while True:
        hosted = [actor for actor in cluster.actors(WORKER_CLASS)
                  if actor["state"] == "ALIVE" and actor["node_id"] == victim.node_id]
        if hosted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert hosted, f"no evaluation actor on the node about to be killed: {victim.node_id} {describe(cluster.actors(WORKER_CLASS))} {job.output()[-2000:]}"
    assert cluster.remote_peers(extra_pids=(job.process.pid,)) == [], "connections off loopback"
    killed = cluster.remove_worker(victim)
    progress = (job.units_done, job.units_total)
    assert job.running() and progress[0] < progress[1], f"the node was not lost mid-run: {progress}"
    cluster.wait_until_dead(victim)
    return victim, killed


def test_job_survives_a_lost_worker_node(tmp_path, reference_model_file, two_workers):
    out = tmp_path / "disturbed"
    long = [*LONG, "--model", str(reference_model_file)]
    cluster = two_workers
    earlier = actor_ids(cluster)
    job = AttachedJob(cluster, out, long)
    try:
        victim, killed = lose_a_worker_node(cluster, job)
        assert killed and not victim.pids()
        job.finish(stall_s=90)
    finally:
        job.stop()
    workers = new_actors(cluster, earlier)
    (survivor,) = cluster.workers
    assert job.process.returncode == 0, job.output()
    assert f"running on Ray cluster at {cluster.gcs_address} with 2 workers" in job.stdout.decode()
    assert effects(out).equals(undisturbed_effects(tmp_path / "undisturbed", long))
    # One actor on each worker node, none on the head (0 CPUs); the lost actor's units went to the survivor,
    # and its replacement never found a free CPU.
    placed = {actor["node_id"] for actor in workers if actor["node_id"]}
    assert placed == {victim.node_id, survivor.node_id}, describe(workers)


def test_baseline_shards_lost_with_their_node_are_computed_again(two_workers):
    cluster = two_workers
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "lost_baseline_driver.py")], cwd=REPO,
        env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "BASELINE DONE", driver.stderr.read()[-3000:]
        victim = cluster.workers[-1]
        cluster.remove_worker(victim)
        cluster.wait_until_dead(victim)
        stdout, stderr = driver.communicate("go\n", timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, stderr[-3000:]
    assert stdout.strip().splitlines()[-1] == "SAME"
    # Each of the two actors computed 2 of the 4 shards; the victim's never reached another node.
    assert stderr.count("was lost with its node; computed it again") == 2, stderr[-3000:]
