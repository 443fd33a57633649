"""Running the units of work on Ray: the only module that imports ``ray``.

The driver puts the model and the evaluation sample in the object store once
and passes their references to a pool of actors, one CPU each, that hold a
compiled model. A bounded number of units is in flight per actor; results are
consumed as they finish with ``ray.wait``. Actors are restarted if their
process dies and their unfinished tasks are retried; since every unit carries
its own seed, a retried unit recomputes exactly the same numbers.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable, Iterator, TypeVar

import ray

from .errors import InvalidParameterError
from .method import Unit
from .worker import EvaluationJob, peak_rss_bytes, predict_shard, unit_sums, warm_up

log = logging.getLogger(__name__)

Task = TypeVar("Task")

WORKER_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}


def connect(num_cpus: int | None = None, connect_timeout_s: float = 30.0) -> str:
    """Attach to ``RAY_ADDRESS`` if set, else start an embedded local Ray.

    Returns a description of where the job runs. The embedded Ray is bound
    to 127.0.0.1, has no dashboard and never attaches to another cluster
    running on the machine.
    """
    if ray.is_initialized():
        return "existing Ray connection"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None:
            log.warning("--num-cpus is ignored when attaching to RAY_ADDRESS=%s", address)
        os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(int(connect_timeout_s)))
        try:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            raise InvalidParameterError(
                "RAY_ADDRESS", f"must name a reachable Ray cluster ({error})", address
            ) from None
        return f"Ray cluster at {address}"
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False,
        _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
    )
    return f"embedded local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def shutdown() -> None:
    """Disconnect from Ray (stops an embedded local Ray)."""
    if ray.is_initialized():
        ray.shutdown()


@ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)
class _EvaluationWorker:
    """Holds one compiled model per fingerprint for the life of its process."""

    def __init__(self) -> None:
        from .modelio import configure_tensorflow

        configure_tensorflow(threads=1)  # imports TF now, overlapping the driver's work

    def warm_up(self, architecture_json, batch_size, time_steps, n_features, jit_compile) -> None:
        warm_up(architecture_json, batch_size, time_steps, n_features, jit_compile)

    def stats(self) -> dict:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "peak_rss_bytes": peak_rss_bytes()}

    def predict_shard(self, model, sample, layout, shard, jit_compile):
        return predict_shard(model, sample, layout, shard, jit_compile)

    def unit_sums(self, model, sample, baseline, layout, unit, noise_scale, jit_compile):
        return unit_sums(model, sample, baseline, layout, unit, noise_scale, jit_compile)


def run_on_pool(
    actors: list, tasks: Iterable[Task], submit: Callable[[object, Task], "ray.ObjectRef"],
    per_actor: int = 2,
) -> Iterator[tuple[Task, "ray.ObjectRef"]]:
    """Submit ``tasks`` to ``actors`` keeping at most ``per_actor`` in flight on each.

    Yields ``(task, finished ref)`` in completion order; each finished actor
    immediately gets the next task.
    """
    pending = iter(tasks)
    in_flight: dict = {}

    def give_next(actor) -> None:
        task = next(pending, None)
        if task is not None:
            in_flight[submit(actor, task)] = (actor, task)

    for actor in actors:
        for _ in range(per_actor):
            give_next(actor)
    while in_flight:
        (ready,), _ = ray.wait(list(in_flight), num_returns=1)
        actor, task = in_flight.pop(ready)
        yield task, ready
        give_next(actor)


class RayExecutor:
    """Runs units on a pool of Ray actors, one CPU each.

    ``num_workers`` defaults to the cluster's CPU count. Call :meth:`start`
    early (before training) to overlap the workers' TensorFlow start-up with
    the driver's own work.
    """

    name = "ray"

    def __init__(self, num_workers: int | None = None, per_worker_in_flight: int = 2) -> None:
        self.num_workers = num_workers
        self.per_worker_in_flight = per_worker_in_flight
        self.actors: list = []
        self.timings: dict[str, float] = {}
        self._warm_up_refs: list = []

    def start(self) -> "RayExecutor":
        if not self.actors:
            if not ray.is_initialized():
                connect()
            count = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            options = {"runtime_env": {"env_vars": WORKER_ENV}}
            self.actors = [_EvaluationWorker.options(**options).remote() for _ in range(count)]
        return self

    def warm_up(self, architecture_json: str, batch_size: int, time_steps: int, n_features: int,
                jit_compile: bool = True) -> "RayExecutor":
        """Have every worker build and compile this architecture now, in the background."""
        self.start()
        self._warm_up_refs = [
            actor.warm_up.remote(architecture_json, batch_size, time_steps, n_features, jit_compile)
            for actor in self.actors
        ]
        return self

    def worker_stats(self) -> list[dict]:
        """Pid, node and peak RSS of every worker."""
        return ray.get([actor.stats.remote() for actor in self.actors])

    def evaluate(self, job: EvaluationJob, units: list[Unit]) -> Iterator[tuple[Unit, object]]:
        """Yield ``(unit, per-batch sums)`` as units finish, in completion order."""
        self.start()
        started = time.perf_counter()
        ray.get(self._warm_up_refs)
        self.timings["wait_workers"] = time.perf_counter() - started
        started = time.perf_counter()
        model_ref = ray.put(job.model)
        sample_ref = ray.put(job.sample)
        self.timings["broadcast"] = time.perf_counter() - started

        started = time.perf_counter()
        baseline_refs = dict(
            (shard.index, ref) for shard, ref in run_on_pool(
                self.actors, job.layout.shards,
                lambda actor, shard: actor.predict_shard.remote(
                    model_ref, sample_ref, job.layout, shard, job.jit_compile),
                self.per_worker_in_flight,
            )
        )
        self.timings["baseline"] = time.perf_counter() - started

        def submit(actor, unit: Unit):
            return actor.unit_sums.remote(
                model_ref, sample_ref, baseline_refs[unit.shard.index], job.layout, unit,
                job.noise_scale, job.jit_compile)

        started = time.perf_counter()
        for unit, ref in run_on_pool(self.actors, units, submit, self.per_worker_in_flight):
            yield unit, ray.get(ref)
        self.timings["units"] = time.perf_counter() - started

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
