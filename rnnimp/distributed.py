"""Running the units of work on Ray: the only module that imports ``ray``.

The driver puts the model, the evaluation sample (and labels) and the
baseline predictions in the object store once and passes their references to
a pool of actors, one CPU each (and, with ``gpus_per_worker``, a share of a
GPU), that hold a compiled model. A bounded number
of units is in flight per actor; results are consumed as they finish with
``ray.wait``. When an actor dies (its process killed, its node lost), the
units it held go back to the queue for the other actors and a replacement
actor is started, which joins the pool once Ray can place it. Every unit
carries its own seed, so a unit computed twice gives the same numbers.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError, RayTaskError

from . import logs, sizes, validation, xlacache
from .errors import InvalidParameterError, RnnimpError, WorkersLostError
from .method import Shard, Unit
from .worker import (Baseline, EvaluationJob, cache_stats, input_shapes, peak_rss_bytes, predict_shard,
                     rss_parts_bytes, unit_sums_many, warm_up)

log = logging.getLogger(__name__)

Task = TypeVar("Task")

WORKER_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch of token authentication: "token" or "disabled"
_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_token_notice(record: logging.LogRecord) -> bool:
    """Logging filter: drop Ray's notice that token authentication is on (the default rnnimp keeps)."""
    return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


def _drop_thread_notice(record: logging.LogRecord) -> bool:
    """Logging filter: drop Ray's notice that ``ray.init`` outside the main thread sets no SIGTERM handler
    (the jobs connect from a background thread and install that handler themselves)."""
    return "SIGTERM handler is not set" not in record.getMessage()


_RAY_WORKER_DIED = "A worker died or was killed while executing a task"


def _drop_worker_death_notices() -> None:
    """Stop Ray from printing its own notice of each dead worker, which rnnimp reports as one line instead.

    Ray's driver prints the raylet's error messages (and the workers' output)
    through ``ray._private.worker.print_to_stdstream``; this wraps it to drop
    only the lines that start with Ray's "A worker died or was killed"
    notice, and the workers' TensorFlow chatter (:func:`rnnimp.logs.is_chatter`:
    e.g. XLA's report of each program loaded from its persistent cache).
    Every other line passes. If Ray's internals differ, nothing changes.
    """
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "rnnimp_filter", False):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if isinstance(data.get("lines"), list):
            raylet = data.get("pid") == "raylet"
            lines = [line for line in data["lines"] if not logs.is_chatter(str(line))
                     and not (raylet and str(line).startswith(_RAY_WORKER_DIED))]
            if not lines:
                return None
            data = {**data, "lines": lines}
        return original(data, *args, **kwargs)

    print_to_stdstream.rnnimp_filter = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


GPU_GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"  # TF's allocator takes GPU memory as needed, not all at once


def worker_env(gpus_per_worker: float | None = None) -> dict[str, str]:
    """Environment of the worker processes: one TF thread each, the GPUs they see, this driver's --verbose choice.

    A GPU worker gets memory growth (``TF_FORCE_GPU_ALLOW_GROWTH``), so that
    workers sharing a GPU do not each claim all of it; Ray sets its
    ``CUDA_VISIBLE_DEVICES`` to the GPUs it granted. A CPU worker gets
    ``CUDA_VISIBLE_DEVICES=""``: Ray 2.60 leaves that variable alone for an
    actor that requested no GPU, and TensorFlow would otherwise place every
    CPU worker's forward pass on the node's first GPU, each claiming its memory.

    One intra-op and one inter-op thread in both cases: the actor holds one
    CPU, its host-side work (drawing the perturbation, slicing batches) is
    numpy on one thread anyway, and on a GPU the forward pass is one XLA
    program whose kernels TF launches from its own GPU stream threads, which
    these pools do not limit. More threads would only oversubscribe the CPUs
    shared with the other workers of the node.

    The workers get the user's own ``TF_XLA_FLAGS``, not the driver's,
    which names its private XLA cache folder; each worker adds a folder of
    its own (:func:`rnnimp.xlacache.open_for_worker`).
    """
    # The user's TF_XLA_FLAGS, not the driver's, which names its private XLA cache folder (an embedded Ray
    # would inherit that); always set, so that a worker naming its own folder replaces the variable.
    env = {**WORKER_ENV, logs.VERBOSE_ENV: "1" if logs.verbose() else "", xlacache.FLAGS_ENV: xlacache.user_flags()}
    if gpus_per_worker:
        env[GPU_GROWTH_ENV] = "true"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if not logs.verbose():
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


_LOST_ACTOR = (RayActorError, ActorDiedError, ActorUnavailableError)


def get_results(refs):
    """``ray.get(refs)``, with an rnnimp error a task or actor raised (a worker's refusal of its shard of a
    dataset, say) re-raised as itself: Ray wraps it in a RayTaskError whose text is the worker's traceback."""
    try:
        return ray.get(refs)
    except RayTaskError as error:
        if isinstance(error.cause, RnnimpError):
            raise error.cause from None
        raise


_CONNECTED_AS: str | None = None  # what connect() connected this process to (None: it did not)


def connect(num_cpus: int | None = None, connect_timeout_s: float = 30.0) -> str:
    """Attach to ``RAY_ADDRESS`` if set, else start an embedded local Ray.

    Returns a description of where the job runs. The embedded Ray uses
    127.0.0.1 as its node address, has no dashboard, prestarts no idle
    worker process, never attaches to another cluster running on the
    machine and keeps Ray's token authentication on (its servers listen on
    all interfaces) unless ``RAY_AUTH_MODE=disabled`` is set; if it cannot
    start, WorkersLostError says why in one line. May be called from a
    thread other than the main one (the jobs do). An unreachable ``RAY_ADDRESS`` raises
    InvalidParameterError after about ``connect_timeout_s`` seconds. Ray's
    informational logs are silenced unless --verbose.
    """
    global _CONNECTED_AS
    if ray.is_initialized():
        return _CONNECTED_AS or "existing Ray connection"
    logging_level = logging.INFO if logs.verbose() else logging.WARNING
    if not logs.verbose():
        _drop_worker_death_notices()
        if threading.current_thread() is not threading.main_thread():
            logging.getLogger("ray._private.worker").addFilter(_drop_thread_notice)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        if num_cpus is not None:
            log.warning("--num-cpus is ignored when attaching to RAY_ADDRESS=%s", address)
        _check_reachable(address, connect_timeout_s)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(connect_timeout_s)))
        try:
            ray.init(address=address, logging_level=logging_level)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as error:
            raise InvalidParameterError(
                "RAY_ADDRESS", f"must name a reachable Ray cluster ({type(error).__name__})", address
            ) from None
        _CONNECTED_AS = f"Ray cluster at {address}"
        return _CONNECTED_AS
    # Ray 2.60 turns token authentication on by default for a new local cluster (RAY_AUTH_MODE unset)
    # and announces it in a warning, dropped unless --verbose; the user's explicit choice wins.
    if os.environ.get(AUTH_MODE_ENV, "token").lower() != "token":
        log.warning("Ray token authentication is off (%s=%s): anyone who can reach this machine's Ray ports "
                    "can run code here", AUTH_MODE_ENV, os.environ[AUTH_MODE_ENV])
    if not logs.verbose():
        logging.getLogger(_AUTH_SETUP_LOGGER).addFilter(_drop_token_notice)
    try:
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False,
            _node_ip_address="127.0.0.1", logging_level=logging_level,
            # Ray would start a worker process per CPU ahead of any task; the jobs' actors and tasks carry an
            # environment of their own (worker_env), so they could never use one, and each costs a CPU-second.
            _system_config={"prestart_worker_first_driver": False, "enable_worker_prestart": False},
        )
    except Exception as error:  # e.g. its raylet not registered within Ray's 30 s on an overloaded machine
        detail = " ".join(str(error).split()) or type(error).__name__
        raise WorkersLostError(f"the embedded Ray could not start: {detail}") from error
    cpus = int(ray.cluster_resources().get("CPU", 0))
    _CONNECTED_AS = f"embedded local Ray ({cpus} CPU{'' if cpus == 1 else 's'})"
    return _CONNECTED_AS


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
    """Disconnect from Ray (stops an embedded local Ray, every one of its processes).

    The embedded Ray's autoscaler monitor is killed first: ``ray.shutdown``
    stops it after the GCS, and its SIGTERM handler then spends a second
    trying to report its own end to the GCS that is gone, before Ray kills it.
    """
    global _CONNECTED_AS
    embedded = _CONNECTED_AS is not None and _CONNECTED_AS.startswith("embedded")
    _CONNECTED_AS = None
    if ray.is_initialized():
        if embedded:
            _kill_monitor()
        ray.shutdown()


def _kill_monitor() -> None:
    """SIGKILL the embedded head's autoscaler monitor (which holds no state) and reap it; nothing if Ray differs."""
    import subprocess

    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = ray_worker._global_node
        monitors = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node is not None else []
    except (ImportError, AttributeError):
        return
    for info in monitors:
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass  # ray.shutdown tries again


def node_resources() -> list[dict]:
    """The resources of every live node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def worker_slots(nodes: list[dict], gpus_per_worker: float | None) -> int:
    """How many workers of one CPU (and ``gpus_per_worker`` GPUs) the nodes hold at once.

    ``nodes``: each node's resources as Ray reports them ({"CPU": 2.0, "GPU": 1.0, ...}).
    """
    if not gpus_per_worker:
        return int(sum(node.get("CPU", 0) for node in nodes))
    return sum(min(int(node.get("CPU", 0)), int(node.get("GPU", 0) / gpus_per_worker + 1e-9)) for node in nodes)


def check_gpus(gpus_per_worker: float | None, parameter: str = "gpus_per_worker") -> None:
    """Refuse (InvalidParameterError, before any actor starts) a GPU share no node of the cluster can grant.

    An actor asking for more GPUs than any node has would wait for them forever.
    """
    if not gpus_per_worker:
        return
    validation.gpu_share(parameter, gpus_per_worker)
    nodes = node_resources()
    most = max((node.get("GPU", 0) for node in nodes), default=0)
    if gpus_per_worker > most + 1e-9:
        raise InvalidParameterError(
            parameter, f"must be at most the GPUs of one node of the cluster ({most:g}"
            f"{'; Ray sees no GPU' if not most else ''})", gpus_per_worker)
    if worker_slots(nodes, gpus_per_worker) < 1:
        raise InvalidParameterError(parameter, "leaves no node with both a CPU and that share of a GPU",
                                    gpus_per_worker)


def cluster_capacity() -> sizes.Capacity:
    """The smallest live node's object store and memory per CPU, and the free disk of Ray's temp folder here.

    A figure a node does not report is not a limit (``sizes.UNLIMITED``).
    """
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    store = min((int(resources["object_store_memory"]) for resources in nodes
                 if resources.get("object_store_memory")), default=sizes.UNLIMITED)
    per_worker = min((int(resources["memory"] / resources["CPU"]) for resources in nodes
                      if resources.get("CPU", 0) >= 1 and resources.get("memory")), default=sizes.UNLIMITED)
    spill_folder = os.environ.get("RAY_TMPDIR", "/tmp")
    spill = shutil.disk_usage(spill_folder).free if os.path.isdir(spill_folder) else 0
    return sizes.Capacity(store, spill, per_worker)


_CHECKED: set = set()


def check_sizes(sample, labels, settings, architecture_json: str) -> None:
    """Refuse (TooLargeError, one line) a run whose data or batches cannot fit; warn where it would spill.

    ``sample``: (series, time, features), or one array per model input; ``labels``: (series, outputs) or
    None; ``settings``: the run's :class:`~rnnimp.worker.Settings`. Checked
    once per shape and architecture in this process.
    """
    layout = settings.layout
    shapes = tuple(a.shape for a in sample) if isinstance(sample, (tuple, list)) else (sample.shape,)
    key = (hash(architecture_json), shapes, None if labels is None else labels.shape,
           layout.batch_size, layout.shard_size, settings.perturbation.kind)
    if key in _CHECKED:
        return
    import keras

    n_weights, activations, n_outputs = sizes.model_sizes(keras.models.model_from_json(architecture_json))
    # several inputs: counted as one input of 1 step holding every value of a series
    n_series, time_steps, n_features = shapes[0] if len(shapes) == 1 else (
        shapes[0][0], 1, sum(int(np.prod(shape[1:])) for shape in shapes))
    datasets = [a for a in (sample if isinstance(sample, (tuple, list)) else (sample,))
                if getattr(a, "is_dataset", False)]
    run_sizes = sizes.RunSizes(n_series, time_steps, n_features, n_outputs, layout.batch_size,
                               layout.shard_size, n_weights, activations, labels is not None,
                               settings.perturbation.kind == "permute", sample_in_store=not datasets,
                               cache_bytes=sum(min(a.budget_bytes, a.nbytes) for a in datasets))
    for warning in sizes.check(run_sizes, cluster_capacity()):
        log.warning(warning)
    _CHECKED.add(key)


@ray.remote(num_cpus=0)  # the jobs' worker actors already hold every CPU: a task asking for one would wait forever
def _shard_moments(inputs, mask_values, shards) -> list:
    """Per dataset input, the moments of ``shards`` (read here, one at a time)."""
    from .dataset import combine, shard_moments

    parts = [shard_moments(inputs, mask_values, shard) for shard in shards]
    return [combine([part[k] for part in parts]) for k in range(len(inputs))]


def dataset_moments(inputs, mask_values, shards) -> list:
    """Per dataset input, its exact :class:`~rnnimp.dataset.Moments`, from one distributed pass.

    One Ray task per group of consecutive shards (one group per CPU; the
    tasks reserve no CPU, since the jobs start their worker actors, which
    hold every CPU, before they prepare the run) reads its shards and returns their per-feature integer sums; the driver
    adds them up, exactly, so the result equals the in-memory statistics bit
    for bit. The driver holds only the small sums. Connects to Ray if needed.
    """
    from .dataset import combine

    if not ray.is_initialized():
        connect()
    shards = list(shards)
    n_groups = max(1, min(len(shards), int(ray.cluster_resources().get("CPU", 1))))
    groups = [list(group) for group in np.array_split(np.arange(len(shards)), n_groups) if len(group)]
    inputs_ref = ray.put(list(inputs))
    refs = [_shard_moments.options(runtime_env={"env_vars": worker_env()}).remote(
        inputs_ref, list(mask_values), [shards[i] for i in group]) for group in groups]
    parts = get_results(refs)
    return [combine([part[k] for part in parts]) for k in range(len(inputs))]


@ray.remote(num_cpus=1)
class _EvaluationWorker:
    """Holds one compiled model per architecture for the life of its process."""

    def __init__(self) -> None:
        from .modelio import configure_tensorflow, enable_memory_growth

        logs.setup()  # rnnimp's warnings as "rnnimp: warning: ..." lines, which Ray streams to the driver
        xlacache.open_for_worker()  # before TF starts: compiled forward passes load from earlier workers' entries
        configure_tensorflow(threads=1)  # imports TF now, overlapping the driver's work
        self.memory_growth_on = enable_memory_growth()  # before any op touches a GPU

    def ready(self) -> int:
        return os.getpid()

    def devices(self) -> dict:
        """Where this worker computes: Ray's GPU ids for it, what TF sees and where it places ops."""
        from .modelio import device_report

        return {"gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu_growth_env": os.environ.get(GPU_GROWTH_ENV), "memory_growth_set": self.memory_growth_on,
                **device_report()}

    def warm_up(self, architecture_json, batch_size, input_shapes, jit_compile) -> None:
        warm_up(architecture_json, batch_size, input_shapes, jit_compile)

    def stats(self) -> dict:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "peak_rss_bytes": peak_rss_bytes(), "rss_parts_bytes": rss_parts_bytes(),
                "cpu_s": time.process_time(), "shard_cache": cache_stats()}

    @ray.method(num_returns=2)
    def predict_shard(self, model, sample, settings, shard):
        """(number of outputs, predictions): the driver waits on the first and never fetches the second."""
        predictions = predict_shard(model, sample, settings, shard)
        return predictions.shape[1], predictions

    def unit_sums_many(self, model, sample, baseline, labels, settings, units):
        """The sums of several units of one shard, stacked (see :func:`rnnimp.worker.unit_sums_many`)."""
        return unit_sums_many(model, sample, baseline, labels, settings, units)


CALL_SAMPLE_STEPS = 250_000  # forward work (series x time steps) one actor call of units aims at: tens of ms
FORWARD_CALL_STEPS = 2_048  # what the fixed cost of one forward call is worth, in series x time steps
CALLS_PER_WORKER = 4  # at least this many calls per worker in a run of units, to balance the workers


@dataclass(frozen=True)
class UnitBatch:
    """Units of one shard computed in one actor call (or by the driver lane in one go)."""

    shard: Shard
    units: tuple[Unit, ...]


def unit_cost(layout, time_steps: int) -> int:
    """Forward work of one unit in series x time steps: its shard's padded batches, each with its fixed cost."""
    rows = layout.shards[0].stop - layout.shards[0].start
    return math.ceil(rows / layout.batch_size) * (layout.batch_size * max(1, time_steps) + FORWARD_CALL_STEPS)


def unit_batches(units: Sequence[Unit], cost: int, workers: int) -> list[UnitBatch]:
    """``units`` grouped by shard, each group cut into equal batches of consecutive units, in plan order.

    A batch holds about :data:`CALL_SAMPLE_STEPS` of forward work (``cost``:
    one unit's, see :func:`unit_cost`), so that an actor call's fixed cost
    (scheduling, fetching its inputs, returning its result) is small beside
    it, but never so many units that ``workers`` would get fewer than
    :data:`CALLS_PER_WORKER` calls each; always at least one unit. Batches
    come in the order of their first unit in ``units``: units too big to
    share a call keep the plan's order (consecutive units of one target and
    repeat on different shards share a permutation a worker keeps). Each
    unit still carries its own seed, so how units are batched changes no result.
    """
    if not units:
        return []
    balanced = math.ceil(len(units) / (CALLS_PER_WORKER * max(1, workers)))
    most = max(1, min(CALL_SAMPLE_STEPS // max(1, cost), balanced))
    by_shard: dict[int, list[tuple[int, Unit]]] = {}
    for position, unit in enumerate(units):
        by_shard.setdefault(unit.shard.index, []).append((position, unit))
    batches = []  # (position of the first unit, batch)
    for group in by_shard.values():
        count = math.ceil(len(group) / most)
        size, extra = divmod(len(group), count)
        start = 0
        for number in range(count):  # the first ``extra`` batches one unit longer
            stop = start + size + (number < extra)
            members = tuple(unit for _, unit in group[start:stop])
            batches.append((group[start][0], UnitBatch(members[0].shard, members)))
            start = stop
    return [batch for _, batch in sorted(batches, key=lambda item: item[0])]


class LostActor(Exception):
    """An actor died (its process killed, its node lost); ``detail`` is Ray's reported exit cause."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LostObject(Exception):
    """A task failed because one of its inputs was lost with its node."""


def exit_detail(error: BaseException) -> str:
    """Ray's exit detail of a dead actor as one line, e.g. "Task was killed due to the node running low on memory..."."""
    text = str(error)
    match = re.search(r"Worker exit detail:\s*(.*?)(?:\s*(?:There are some potential root causes|Some common causes "
                      r"include|The actor never ran)|$)", text, re.S)
    if match and match.group(1).strip():
        detail = match.group(1)
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = lines[-1] if lines else type(error).__name__
    return " ".join(detail.split())


def likely_cause(detail: str) -> str:
    """A hint for the user from Ray's exit detail."""
    lowered = detail.lower()
    if "memory" in lowered:
        return "the workers ran out of memory: use a smaller --eval-batch-size or --shard-size, or fewer --num-cpus"
    if "connection error" in lowered or "sigkill" in lowered or "end of file" in lowered:
        return ("the worker processes were killed (by the kernel's out-of-memory killer, `ray stop --force` "
                "or another process)")
    return "see the Ray logs"


class RayBackend:
    """What :class:`ActorPool` needs from Ray; tests substitute fakes with the same five methods.

    ``get`` raises :class:`LostActor` when the actor behind a reference died
    and :class:`LostObject` when an input of its task was lost.
    """

    def __init__(self, env_vars: dict[str, str] | None = None, gpus_per_worker: float | None = None) -> None:
        self.gpus_per_worker = gpus_per_worker
        self.env_vars = worker_env(gpus_per_worker) if env_vars is None else env_vars

    def start_actor(self):
        return _EvaluationWorker.options(num_gpus=self.gpus_per_worker or 0,
                                         runtime_env={"env_vars": self.env_vars}).remote()

    def ready(self, actor):
        return actor.ready.remote()

    def wait(self, refs: list, timeout: float) -> list:
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return ready

    def get(self, ref):
        try:
            return get_results(ref)
        except ActorDiedError as error:
            if error.actor_init_failed:  # its __init__ raised: a broken set-up, not a lost worker
                raise WorkersLostError(f"a worker could not start: {exit_detail(error)}") from None
            raise LostActor(exit_detail(error)) from error
        except _LOST_ACTOR as error:
            raise LostActor(exit_detail(error)) from error
        except ObjectLostError as error:
            raise LostObject(str(error)) from error

    def kill(self, actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass


class ActorPool:
    """A fixed-size pool of evaluation actors that replaces members it loses, in every phase.

    An actor first *starts* (its process imports TensorFlow, then runs the
    set-up calls such as the warm-up compilation) and joins the live members
    once all its start-up references have completed. A member lost while
    starting, while idle or while running tasks is replaced by a new actor;
    the tasks it held go back to the queue. Only after more than
    ``max_losses`` losses does the pool give up, with a
    :class:`~rnnimp.errors.WorkersLostError` naming Ray's reported cause.
    """

    def __init__(self, size: int, stall_timeout_s: float = 600.0, backend=None,
                 max_losses: int | None = None) -> None:
        self.size = size
        self.stall_timeout_s = stall_timeout_s
        self.backend = backend if backend is not None else RayBackend()
        self.max_losses = 3 * size + 10 if max_losses is None else max_losses
        self.live: list = []
        self.starting: dict = {}  # start-up ref (ready or a set-up call) -> actor not yet live
        self.setup_calls: list[Callable] = []  # replayed on every new actor (warm-up)
        self.replaced = 0
        self.last_loss: str | None = None
        for _ in range(size):
            self._add_actor()

    @property
    def joining(self) -> list:
        """Actors started but not yet live (importing TF, compiling, or waiting for resources)."""
        return list(dict.fromkeys(self.starting.values()))

    def _add_actor(self) -> None:
        actor = self.backend.start_actor()
        self.starting[self.backend.ready(actor)] = actor
        for call in self.setup_calls:
            self.starting[call(actor)] = actor

    def _replace(self, actor, lost: LostActor) -> None:
        """Count a lost actor, give up past the limit, else start its replacement."""
        self.backend.kill(actor)
        self.replaced += 1
        self.last_loss = lost.detail
        if self.replaced > self.max_losses:
            raise WorkersLostError(
                f"lost {self.replaced} workers in this run, giving up; Ray's exit detail of the last: "
                f"{lost.detail} (likely cause: {likely_cause(lost.detail)})")
        log.warning("a worker was lost (%s); its work is resubmitted and a replacement started", lost.detail)
        self._add_actor()

    def setup(self, call: Callable) -> None:
        """Run ``call(actor)`` (returning a reference) on every member now and on every replacement.

        Members rejoin the live pool once the call has completed; call between runs only.
        """
        self.setup_calls.append(call)
        members = self.live + self.joining
        self.live = []
        for actor in members:
            self.starting[call(actor)] = actor

    def _settle(self, ref):
        """Handle a completed start-up reference; return the actor if it just became live, else None."""
        actor = self.starting.pop(ref)
        try:
            self.backend.get(ref)
        except LostActor as lost:
            for other in [r for r, a in self.starting.items() if a is actor]:
                del self.starting[other]
            self._replace(actor, lost)
            return None
        if actor in self.starting.values():
            return None
        self.live.append(actor)
        return actor

    def wait_until_ready(self, minimum: int | None = None) -> None:
        """Wait until ``minimum`` members (default: all) are live, replacing those lost meanwhile.

        If no start-up completes for ``stall_timeout_s``, continues with the
        live members, or raises WorkersLostError when there are none.
        """
        minimum = self.size if minimum is None else minimum
        last_progress = time.monotonic()
        while self.starting and len(self.live) < minimum:
            ready = self.backend.wait(list(self.starting), timeout=10.0)
            if ready:
                last_progress = time.monotonic()
                self._settle(ready[0])
            elif time.monotonic() - last_progress > self.stall_timeout_s:
                if self.live:
                    return
                raise WorkersLostError(f"no worker started within {self.stall_timeout_s:.0f} s "
                                       f"({len(self.joining)} waiting for resources)")

    def lose(self, actor, lost: LostActor) -> None:
        """Drop a dead (or unresponsive) member and start its replacement."""
        if actor in self.live:
            self.live.remove(actor)
            self._replace(actor, lost)

    def run(self, tasks: Iterable[Task], submit: Callable[[object, Task], object],
            per_actor: int = 2, recover: Callable[[Task], None] | None = None,
            local: Callable[[Task], object] | None = None, lanes: int = 1) -> Iterator[tuple[Task, object]]:
        """Yield ``(task, result)`` in completion order, at most ``per_actor`` in flight per actor.

        A task whose actor dies is resubmitted to another actor. A task that
        fails because one of its inputs was lost (its node died) is passed to
        ``recover``, which must recreate that input, and is then resubmitted.
        Actors that finish starting meanwhile join and get tasks.

        ``local`` (the driver lane): while fewer than ``size`` members are
        live, the caller's process computes queued tasks itself with
        ``local(task)``, ``lanes`` at a time (in threads of its own when
        more than one), checking between two such rounds whether an actor
        finished something or joined; once every member is live it only
        hands out tasks. Tasks must give the same result wherever they run.
        """
        pending = collections.deque(tasks)  # resubmitted tasks go back to the front
        in_flight: dict = {}  # ref -> (actor, task)
        load: collections.Counter = collections.Counter()

        def fill_all() -> None:
            for actor in list(self.live):
                while load[actor] < per_actor and pending:
                    task = pending.popleft()
                    in_flight[submit(actor, task)] = (actor, task)
                    load[actor] += 1

        lane_pool = None
        if local is not None and lanes > 1:
            lane_pool = ThreadPoolExecutor(lanes, thread_name_prefix="rnnimp-driver-lane")
        try:
            fill_all()
            last_progress = time.monotonic()
            while in_flight or pending:
                driver_lane = local is not None and bool(pending) and len(self.live) < self.size
                refs = list(in_flight) + list(self.starting)
                ready = self.backend.wait(refs, timeout=0.0 if driver_lane else 10.0) if refs or not driver_lane else []
                if not ready and driver_lane:
                    tasks_now = [pending.popleft() for _ in range(min(lanes, len(pending)))]
                    results = lane_pool.map(local, tasks_now) if len(tasks_now) > 1 else [local(tasks_now[0])]
                    done_now = list(zip(tasks_now, results))  # the whole round, before any is yielded
                    last_progress = time.monotonic()
                    yield from done_now
                    continue
                if not ready:
                    if time.monotonic() - last_progress > self.stall_timeout_s:
                        raise WorkersLostError(f"no worker made progress for {self.stall_timeout_s:.0f} s "
                                               f"({len(self.live)} live, {len(self.joining)} waiting for resources)")
                    continue
                last_progress = time.monotonic()
                ref = ready[0]
                if ref in self.starting:
                    self._settle(ref)
                    fill_all()
                    continue
                actor, task = in_flight.pop(ref)
                load[actor] -= 1
                try:
                    result = self.backend.get(ref)
                except LostActor as lost:
                    pending.appendleft(task)
                    for other in [r for r, (a, _) in in_flight.items() if a is actor]:
                        pending.appendleft(in_flight.pop(other)[1])  # its other tasks fail too; requeue them now
                    del load[actor]
                    self.lose(actor, lost)
                    fill_all()
                    continue
                except LostObject:
                    if recover is None:
                        raise
                    recover(task)
                    pending.appendleft(task)
                    fill_all()
                    continue
                fill_all()
                yield task, result
        finally:
            if lane_pool is not None:
                lane_pool.shutdown(cancel_futures=True)

    def shutdown(self) -> None:
        for actor in self.live + self.joining:
            self.backend.kill(actor)
        self.live, self.starting = [], {}


class RayExecutor:
    """Runs units on a pool of Ray actors, one CPU each.

    ``gpus_per_worker``: each actor also requests this share of a GPU (a
    fraction in (0, 1], several actors per GPU, or a whole number), with
    TensorFlow's memory growth on; TF then places the forward pass on the
    GPU. A share no node can grant is refused when the executor starts.
    ``num_workers`` defaults to as many actors as the cluster holds at once:
    its CPU count, or with GPUs, per node the fewer of its CPUs and its GPUs
    divided by the share. Call :meth:`warm_up`
    early (before training) to overlap the workers' TensorFlow start-up and
    compilation with the driver's own work. With ``driver_lane``, the driver
    does not wait for its workers: it computes baseline shards and units
    itself (compiling the forward pass once in its own process), on
    ``driver_lanes`` threads, while fewer than all workers are live, and
    hands over as they join; every unit
    carries its seed and runs on batches of the same size, so the effects
    are the same wherever a unit ran. A worker lost in any phase
    (starting, compiling, baseline, units) is replaced and its work redone;
    see :class:`ActorPool`.
    """

    name = "ray"

    def __init__(self, num_workers: int | None = None, per_worker_in_flight: int = 2,
                 stall_timeout_s: float = 600.0, gpus_per_worker: float | None = None,
                 driver_lane: bool = False, driver_lanes: int = 1) -> None:
        if gpus_per_worker is not None:
            validation.gpu_share("gpus_per_worker", gpus_per_worker)
        self.gpus_per_worker = gpus_per_worker
        self.num_workers = num_workers
        self.driver_lane = driver_lane
        self.driver_lanes = validation.positive_int("driver_lanes", driver_lanes)
        self.on_driver = {"shards": 0, "units": 0}  # work the driver lane computed
        self._lane_lock = threading.Lock()  # the driver lane's threads: its counts
        self._fetch_lock = threading.Lock()  # the driver lane's threads: one fetches (or recomputes) a baseline
        self.per_worker_in_flight = per_worker_in_flight
        self.stall_timeout_s = stall_timeout_s
        self.pool: ActorPool | None = None
        self.timings: dict[str, float] = {}
        self._job: EvaluationJob | None = None
        self._job_refs: tuple = ()
        self._baseline: Baseline | None = None
        self._baseline_shards: list = []  # object refs, replaced when a shard is lost
        self._recomputed = 0
        self._connected_here = False  # whether start() connected to Ray, so shutdown() disconnects
        self._devices: dict | None = None

    @property
    def actors(self) -> list:
        return [] if self.pool is None else self.pool.live + self.pool.joining

    def start(self) -> "RayExecutor":
        if self.pool is None:
            if not ray.is_initialized():
                connect()
                self._connected_here = True
            check_gpus(self.gpus_per_worker)
            count = self.num_workers or max(1, worker_slots(node_resources(), self.gpus_per_worker))
            self.pool = ActorPool(count, self.stall_timeout_s, RayBackend(gpus_per_worker=self.gpus_per_worker))
        return self

    def warm_up(self, architecture_json: str, batch_size: int, input_shapes: tuple[tuple[int, ...], ...],
                jit_compile: bool = True) -> "RayExecutor":
        """Have every worker (and every replacement) build and compile this architecture now, in the background.

        ``input_shapes``: per model input, one series' shape ((time, features) or (features,)).
        """
        self.start()
        self.pool.setup(
            lambda actor: actor.warm_up.remote(architecture_json, batch_size, input_shapes, jit_compile))
        return self

    def worker_stats(self) -> list[dict]:
        """Pid, node and peak RSS of every live worker (those lost meanwhile left out)."""
        stats = []
        for ref in [actor.stats.remote() for actor in self.pool.live]:
            try:
                stats.append(self.pool.backend.get(ref))
            except LostActor:
                continue
        return stats

    def describe(self) -> dict:
        """The workers, for the run's metadata: how many, their GPU share, where one of them computes.

        ``devices``: a live worker's :meth:`_EvaluationWorker.devices` (asked
        once per executor; None if no worker was live, e.g. when the driver
        lane computed everything); ``on_driver``: the shards and units the
        driver lane computed, and then ``driver_devices``, where it did.
        """
        if self._devices is None and self.pool is not None:
            for actor in list(self.pool.live):
                try:
                    self._devices = self.pool.backend.get(actor.devices.remote())
                    break
                except LostActor:
                    continue
        described = {"count": 0 if self.pool is None else self.pool.size, "gpus_per_worker": self.gpus_per_worker,
                     "devices": self._devices, "driver_lane": self.driver_lane, "on_driver": dict(self.on_driver)}
        if any(self.on_driver.values()):  # the driver computed too: where it did
            from .modelio import device_report

            described["driver_devices"] = device_report()
        return described

    def _refs(self, job: EvaluationJob) -> tuple:
        """Object refs of the job's model, sample and labels, put once per job."""
        if self._job is not job:
            started = time.perf_counter()
            check_sizes(job.sample, job.labels, job.settings, job.model.architecture_json)
            self.start()
            if not self.driver_lane:  # the driver lane computes while workers join: no waiting
                self.pool.wait_until_ready(None if self._job is None else 1)  # the first job waits for all
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

    def _predict_shards(self, job: EvaluationJob, shards: list[Shard]) -> tuple[dict, set]:
        """({shard index: predictions ref}, {number of outputs}) for ``shards``, computed on the pool."""
        predictions: dict[int, ray.ObjectRef] = {}

        def submit(actor, shard: Shard):
            # A resubmitted shard overwrites its entry: the last submission is the one that succeeds.
            n_outputs_ref, predictions[shard.index] = self._predict(actor, job, shard)
            return n_outputs_ref

        def on_driver(shard: Shard) -> int:
            shard_predictions = predict_shard(job.model, job.sample, job.settings, shard)
            predictions[shard.index] = ray.put(shard_predictions)
            with self._lane_lock:
                self.on_driver["shards"] += 1
            return shard_predictions.shape[1]

        n_outputs = {count for _, count in self.pool.run(shards, submit, self.per_worker_in_flight,
                                                        local=on_driver if self.driver_lane else None,
                                                        lanes=self.driver_lanes)}
        return predictions, n_outputs

    def baseline(self, job: EvaluationJob) -> Baseline:
        """Predictions of every shard, computed by the workers and left in the object store.

        The driver only holds references: each unit fetches its own shard's
        predictions, so the baseline is never gathered in one process.
        """
        self._refs(job)
        started = time.perf_counter()
        predictions, n_outputs = self._predict_shards(job, job.settings.layout.shards)
        self.timings["baseline"] = time.perf_counter() - started
        return Baseline(tuple(predictions[shard.index] for shard in job.settings.layout.shards), n_outputs.pop())

    def _recompute_baseline(self, job: EvaluationJob, shard: Shard) -> None:
        """Compute a lost baseline shard again on the pool (replacing workers lost meanwhile)."""
        self._recomputed += 1
        if self._recomputed > 3 * len(self._baseline_shards) + 10:
            raise WorkersLostError(f"lost {self._recomputed} baseline shards with their nodes in this run; "
                                   "giving up (see the Ray logs)")
        predictions, _ = self._predict_shards(job, [shard])
        self._baseline_shards[shard.index] = predictions[shard.index]
        log.warning("the baseline of shard %d was lost with its node; computed it again", shard.index)

    def evaluate(self, job: EvaluationJob, baseline: Baseline, units: list[Unit]) -> Iterator[tuple[Unit, object]]:
        """Yield ``(unit, per-batch sums)`` as units finish, in completion order.

        Units of one shard go to an actor in batches (:func:`unit_batches`),
        one call each; a batch whose actor is lost is computed again whole.
        """
        model_ref, sample_ref, labels_ref = self._refs(job)
        if self._baseline is not baseline:
            self._baseline, self._baseline_shards = baseline, list(baseline.shards)
        shapes = job.settings.inputs.shapes if job.settings.inputs is not None else input_shapes(job.sample)
        time_steps = max((shape[0] for shape in shapes if len(shape) == 2), default=1)
        batches = unit_batches(units, unit_cost(job.settings.layout, time_steps), self.pool.size)

        carried: dict[int, object] = {}  # id(batch) -> the baseline ref its latest submission carried

        def submit(actor, batch: UnitBatch):
            carried[id(batch)] = baseline_ref = self._baseline_shards[batch.shard.index]
            return actor.unit_sums_many.remote(model_ref, sample_ref, baseline_ref, labels_ref, job.settings,
                                               batch.units)

        def recover(batch: UnitBatch) -> None:
            """A batch's baseline was lost: compute it again, unless another batch of its shard just did."""
            if carried.get(id(batch)) is self._baseline_shards[batch.shard.index]:
                self._recompute_baseline(job, batch.shard)

        fetched: dict[int, tuple] = {}  # shard index -> (ref, predictions) the driver lane fetched

        def shard_baseline(shard: Shard) -> np.ndarray:
            """The shard's baseline predictions, fetched once per reference (one lane thread at a time)."""
            with self._fetch_lock:
                while fetched.get(shard.index, (None,))[0] is not self._baseline_shards[shard.index]:
                    ref = self._baseline_shards[shard.index]
                    try:
                        fetched[shard.index] = (ref, ray.get(ref))
                    except ObjectLostError:  # lost with its node: compute it again, then use the new one
                        self._recompute_baseline(job, shard)
                return fetched[shard.index][1]

        def on_driver(batch: UnitBatch):
            predictions = shard_baseline(batch.shard)
            with self._lane_lock:
                self.on_driver["units"] += len(batch.units)
            return unit_sums_many(job.model, job.sample, predictions, job.labels, job.settings, batch.units)

        started = time.perf_counter()
        for batch, sums in self.pool.run(batches, submit, self.per_worker_in_flight,
                                         recover=recover, local=on_driver if self.driver_lane else None,
                                         lanes=self.driver_lanes):
            yield from zip(batch.units, sums)
        self.timings["units"] += time.perf_counter() - started

    def shutdown(self) -> None:
        """Stop the workers and drop the job's object references; disconnect from Ray if :meth:`start`
        connected (not if the caller had)."""
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        self._job, self._job_refs, self._baseline, self._baseline_shards = None, (), None, []
        if self._connected_here:
            shutdown()
            self._connected_here = False
