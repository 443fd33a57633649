"""Running the units of work on Ray: the only module that imports ``ray``.

The driver puts the model, the evaluation sample (and labels) and the
baseline predictions in the object store once and passes their references to
a pool of actors, one CPU each, that hold a compiled model. A bounded number
of units is in flight per actor; results are consumed as they finish with
``ray.wait``. When an actor dies (its process killed, its node lost), the
units it held go back to the queue for the other actors and a replacement
actor is started, which joins the pool once Ray can place it. Every unit
carries its own seed, so a unit computed twice gives the same numbers.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from typing import Callable, Iterable, Iterator, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError

from .errors import InvalidParameterError
from .method import Unit
from .method import Shard
from .worker import Baseline, EvaluationJob, peak_rss_bytes, predict_shard, unit_sums, warm_up

log = logging.getLogger(__name__)

Task = TypeVar("Task")

WORKER_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
_LOST_ACTOR = (RayActorError, ActorDiedError, ActorUnavailableError)


def connect(num_cpus: int | None = None, connect_timeout_s: float = 30.0) -> str:
    """Attach to ``RAY_ADDRESS`` if set, else start an embedded local Ray.

    Returns a description of where the job runs. The embedded Ray is bound
    to 127.0.0.1, has no dashboard and never attaches to another cluster
    running on the machine. An unreachable ``RAY_ADDRESS`` raises
    InvalidParameterError after about ``connect_timeout_s`` seconds.
    """
    if ray.is_initialized():
        return "existing Ray connection"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None:
            log.warning("--num-cpus is ignored when attaching to RAY_ADDRESS=%s", address)
        _check_reachable(address, connect_timeout_s)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(connect_timeout_s)))
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as error:
            raise InvalidParameterError(
                "RAY_ADDRESS", f"must name a reachable Ray cluster ({type(error).__name__})", address
            ) from None
        return f"Ray cluster at {address}"
    ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False,
        _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
    )
    return f"embedded local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def _check_reachable(address: str, timeout_s: float) -> None:
    """Raise InvalidParameterError unless ``host:port`` of ``address`` accepts a TCP connection in time.

    ``ray.init`` itself retries an unreachable address for many minutes.
    """
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidParameterError("RAY_ADDRESS", "must be host:port (or auto)", address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise InvalidParameterError(
                    "RAY_ADDRESS", f"must name a reachable Ray cluster (no answer within {timeout_s:.0f} s: "
                    f"{error.strerror or error})", address) from None
            time.sleep(1.0)


def shutdown() -> None:
    """Disconnect from Ray (stops an embedded local Ray)."""
    if ray.is_initialized():
        ray.shutdown()


@ray.remote(num_cpus=1)
class _EvaluationWorker:
    """Holds one compiled model per architecture for the life of its process."""

    def __init__(self) -> None:
        from .modelio import configure_tensorflow

        configure_tensorflow(threads=1)  # imports TF now, overlapping the driver's work

    def ready(self) -> int:
        return os.getpid()

    def warm_up(self, architecture_json, batch_size, input_shapes, jit_compile) -> None:
        warm_up(architecture_json, batch_size, input_shapes, jit_compile)

    def stats(self) -> dict:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "peak_rss_bytes": peak_rss_bytes()}

    @ray.method(num_returns=2)
    def predict_shard(self, model, sample, settings, shard):
        """(number of outputs, predictions): the driver waits on the first and never fetches the second."""
        predictions = predict_shard(model, sample, settings, shard)
        return predictions.shape[1], predictions

    def unit_sums(self, model, sample, baseline, labels, settings, unit):
        return unit_sums(model, sample, baseline, labels, settings, unit)


class ActorPool:
    """A fixed-size pool of evaluation actors that replaces members it loses."""

    def __init__(self, size: int, stall_timeout_s: float = 600.0) -> None:
        self.size = size
        self.stall_timeout_s = stall_timeout_s
        self.live: list = []
        self.joining: dict = {}  # ready ref -> actor not yet placed or started
        self.setup_calls: list[Callable] = []  # replayed on every new actor (warm-up)
        self.replaced = 0
        for _ in range(size):
            self._add_actor()

    def _add_actor(self) -> None:
        if self.replaced > 3 * self.size + 10:
            raise RuntimeError(f"lost {self.replaced} workers in this run; giving up (see the Ray logs)")
        actor = _EvaluationWorker.options(runtime_env={"env_vars": WORKER_ENV}).remote()
        for call in self.setup_calls:
            call(actor)
        self.joining[actor.ready.remote()] = actor

    def setup(self, call: Callable) -> list:
        """Run ``call(actor)`` on every member now and on every future replacement."""
        self.setup_calls.append(call)
        return [call(actor) for actor in self.live + list(self.joining.values())]

    def wait_until_ready(self) -> None:
        ray.get(list(self.joining))
        self.live.extend(self.joining.values())
        self.joining.clear()

    def lose(self, actor) -> None:
        """Drop a dead (or unresponsive) member and start its replacement."""
        if actor in self.live:
            self.live.remove(actor)
            ray.kill(actor, no_restart=True)
            self.replaced += 1
            log.warning("a worker was lost; its units are resubmitted and a replacement started")
            self._add_actor()

    def run(self, tasks: Iterable[Task], submit: Callable[[object, Task], "ray.ObjectRef"],
            per_actor: int = 2, recover: Callable[[Task], None] | None = None) -> Iterator[tuple[Task, object]]:
        """Yield ``(task, result)`` in completion order, at most ``per_actor`` in flight per actor.

        A task whose actor dies is resubmitted to another actor. A task that
        fails because one of its inputs was lost (its node died) is passed to
        ``recover``, which must recreate that input, and is then resubmitted.
        """
        pending = collections.deque(tasks)  # resubmitted tasks go back to the front
        in_flight: dict = {}  # ref -> (actor, task)
        load: collections.Counter = collections.Counter()

        def next_task():
            return pending.popleft() if pending else None

        def fill(actor) -> None:
            while load[actor] < per_actor:
                task = next_task()
                if task is None:
                    return
                in_flight[submit(actor, task)] = (actor, task)
                load[actor] += 1

        for actor in self.live:
            fill(actor)
        last_progress = time.monotonic()
        while in_flight or pending:
            waiting = list(in_flight) + list(self.joining)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=10.0)
            if not ready:
                if time.monotonic() - last_progress > self.stall_timeout_s:
                    raise RuntimeError(f"no worker made progress for {self.stall_timeout_s:.0f} s "
                                       f"({len(self.live)} live, {len(self.joining)} waiting for resources)")
                continue
            last_progress = time.monotonic()
            ref = ready[0]
            if ref in self.joining:
                actor = self.joining.pop(ref)
                try:
                    ray.get(ref)
                except _LOST_ACTOR:
                    self.replaced += 1
                    self._add_actor()
                    continue
                self.live.append(actor)
                fill(actor)
                continue
            actor, task = in_flight.pop(ref)
            load[actor] -= 1
            try:
                result = ray.get(ref)
            except _LOST_ACTOR:
                pending.appendleft(task)
                lost = [r for r, (a, _) in in_flight.items() if a is actor]
                for other in lost:  # its other units fail too; requeue them now
                    pending.appendleft(in_flight.pop(other)[1])
                load[actor] = 0
                self.lose(actor)
                for survivor in self.live:
                    fill(survivor)
                continue
            except ObjectLostError:
                if recover is None:
                    raise
                recover(task)
                pending.appendleft(task)
                fill(actor)
                continue
            yield task, result
            fill(actor)

    def shutdown(self) -> None:
        for actor in self.live + list(self.joining.values()):
            ray.kill(actor)
        self.live, self.joining = [], {}


class RayExecutor:
    """Runs units on a pool of Ray actors, one CPU each.

    ``num_workers`` defaults to the cluster's CPU count. Call :meth:`warm_up`
    early (before training) to overlap the workers' TensorFlow start-up and
    compilation with the driver's own work.
    """

    name = "ray"

    def __init__(self, num_workers: int | None = None, per_worker_in_flight: int = 2) -> None:
        self.num_workers = num_workers
        self.per_worker_in_flight = per_worker_in_flight
        self.pool: ActorPool | None = None
        self.timings: dict[str, float] = {}
        self._warm_up_refs: list = []
        self._job: EvaluationJob | None = None
        self._job_refs: tuple = ()
        self._baseline: Baseline | None = None
        self._baseline_shards: list = []  # object refs, replaced when a shard is lost
        self._recomputed = 0
        self._connected_here = False  # whether start() connected to Ray, so shutdown() disconnects

    @property
    def actors(self) -> list:
        return [] if self.pool is None else self.pool.live + list(self.pool.joining.values())

    def start(self) -> "RayExecutor":
        if self.pool is None:
            if not ray.is_initialized():
                connect()
                self._connected_here = True
            count = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.pool = ActorPool(count)
        return self

    def warm_up(self, architecture_json: str, batch_size: int, input_shapes: tuple[tuple[int, ...], ...],
                jit_compile: bool = True) -> "RayExecutor":
        """Have every worker build and compile this architecture now, in the background.

        ``input_shapes``: per model input, one series' shape ((time, features) or (features,)).
        """
        self.start()
        self._warm_up_refs = self.pool.setup(
            lambda actor: actor.warm_up.remote(architecture_json, batch_size, input_shapes, jit_compile))
        return self

    def worker_stats(self) -> list[dict]:
        """Pid, node and peak RSS of every live worker."""
        return ray.get([actor.stats.remote() for actor in self.pool.live])

    def _refs(self, job: EvaluationJob) -> tuple:
        """Object refs of the job's model, sample and labels, put once per job."""
        if self._job is not job:
            started = time.perf_counter()
            self.start()
            self.pool.wait_until_ready()
            ray.get(self._warm_up_refs)
            self.timings["wait_workers"] = time.perf_counter() - started
            started = time.perf_counter()
            labels_ref = None if job.labels is None else ray.put(job.labels)
            self._job, self._job_refs = job, (ray.put(job.model), ray.put(job.sample), labels_ref)
            self.timings["broadcast"] = time.perf_counter() - started
            self.timings["units"] = 0.0
        return self._job_refs

    def _predict(self, actor, job: EvaluationJob, shard: Shard) -> tuple:
        """Refs of (number of outputs, predictions) of one shard, computed on ``actor``."""
        model_ref, sample_ref, _ = self._refs(job)
        return actor.predict_shard.remote(model_ref, sample_ref, job.settings, shard)

    def baseline(self, job: EvaluationJob) -> Baseline:
        """Predictions of every shard, computed by the workers and left in the object store.

        The driver only holds references: each unit fetches its own shard's
        predictions, so the baseline is never gathered in one process.
        """
        self._refs(job)
        started = time.perf_counter()
        predictions: dict[int, ray.ObjectRef] = {}

        def submit(actor, shard: Shard):
            n_outputs_ref, predictions[shard.index] = self._predict(actor, job, shard)
            return n_outputs_ref

        n_outputs = {count for _, count in self.pool.run(job.settings.layout.shards, submit,
                                                        self.per_worker_in_flight)}
        self.timings["baseline"] = time.perf_counter() - started
        return Baseline(tuple(predictions[shard.index] for shard in job.settings.layout.shards), n_outputs.pop())

    def _recompute_baseline(self, job: EvaluationJob, shard: Shard) -> None:
        """Compute a lost baseline shard again and wait for it, on any live worker."""
        self._recomputed += 1
        if self._recomputed > 3 * len(self._baseline_shards) + 10:
            raise RuntimeError(f"lost {self._recomputed} baseline shards in this run; giving up (see the Ray logs)")
        for _ in range(3 * self.pool.size + 10):
            if not self.pool.live:
                self.pool.wait_until_ready()
            actor = self.pool.live[0]
            n_outputs_ref, predictions_ref = self._predict(actor, job, shard)
            try:
                ray.get(n_outputs_ref)
            except _LOST_ACTOR:
                self.pool.lose(actor)
                continue
            self._baseline_shards[shard.index] = predictions_ref
            log.warning("baseline of shard %d was lost with its node; computed it again", shard.index)
            return
        raise RuntimeError(f"could not recompute the baseline of shard {shard.index}")

    def evaluate(self, job: EvaluationJob, baseline: Baseline, units: list[Unit]) -> Iterator[tuple[Unit, object]]:
        """Yield ``(unit, per-batch sums)`` as units finish, in completion order."""
        model_ref, sample_ref, labels_ref = self._refs(job)
        if self._baseline is not baseline:
            self._baseline, self._baseline_shards = baseline, list(baseline.shards)

        def submit(actor, unit: Unit):
            return actor.unit_sums.remote(model_ref, sample_ref, self._baseline_shards[unit.shard.index],
                                          labels_ref, job.settings, unit)

        started = time.perf_counter()
        yield from self.pool.run(units, submit, self.per_worker_in_flight,
                                 recover=lambda unit: self._recompute_baseline(job, unit.shard))
        self.timings["units"] += time.perf_counter() - started

    def shutdown(self) -> None:
        """Stop the workers; disconnect from Ray if :meth:`start` connected (not if the caller had)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if self._connected_here:
            shutdown()
            self._connected_here = False
