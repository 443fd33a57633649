"""What a worker process does with a unit of work; knows nothing of Ray.

Each process keeps one compiled evaluator per (architecture, batch shape):
the model is built and its ``tf.function`` traced and compiled once, and a
new set of weights is only assigned to the existing variables. A worker can
therefore be warmed up with the architecture alone, before the weights exist
(while the driver is still training).
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import logs, validation, xlacache
from .forward import model_forward, output_masked
from .inputs import InputLayout
from .method import Layout, Measures, Metric, Shard, ShardEvaluator, Unit, as_inputs
from .modelio import ModelSpec
from .perturb import Perturbation


@dataclass(frozen=True)
class Settings:
    """The small, fixed settings every unit of a run shares (passed by value)."""

    layout: Layout
    perturbation: Perturbation
    metric: Metric
    jit_compile: bool = True
    inputs: InputLayout | None = None  # None: one sequence input, no mask
    measures: Measures | None = None  # None: ``metric`` alone, pooled over outputs and series


@dataclass(frozen=True)
class EvaluationJob:
    """A run's data: ``sample``, one float32 array per model input (or one (series, time, features)
    array), ``labels`` (series, outputs) or None."""

    model: ModelSpec
    sample: np.ndarray | tuple[np.ndarray, ...]  # an entry may be a rnnimp.dataset.DatasetInput
    labels: np.ndarray | None
    settings: Settings


@dataclass(frozen=True)
class Baseline:
    """Unperturbed predictions of a run, one entry per shard of the layout.

    ``shards[i]`` holds shard ``i``'s predictions, float32 (shard rows,
    ``n_outputs``), or an executor's handle to them (a Ray object reference),
    so that they need never be gathered in one place.
    """

    shards: tuple
    n_outputs: int


@dataclass
class _CachedEvaluator:
    model: object
    evaluator: ShardEvaluator
    fingerprint: str | None


_EVALUATORS: dict[tuple, _CachedEvaluator] = {}
_EVALUATORS_LOCK = threading.RLock()  # one thread builds (and sets the weights of) an evaluator at a time
_LANES = threading.local()  # per thread: cache key -> its own evaluator on the cached compiled forward pass


InputShapes = tuple[tuple[int, ...], ...]  # per model input, the shape of one series' data


def _key(architecture_json: str, batch_size: int, input_shapes: InputShapes, jit_compile: bool) -> tuple:
    """The key of :data:`_EVALUATORS`: the architecture JSON itself (a string caches its hash, and comparing
    two equal strings is far cheaper than hashing one with SHA-256 on every call), batch size, shapes, XLA."""
    return architecture_json, batch_size, tuple(tuple(int(d) for d in shape) for shape in input_shapes), jit_compile


def _cached(architecture_json: str, batch_size: int, input_shapes: InputShapes, jit_compile: bool) -> _CachedEvaluator:
    """This process's evaluator for an architecture and batch shapes, built and compiled once (by one thread)."""
    key = _key(architecture_json, batch_size, input_shapes, jit_compile)
    with _EVALUATORS_LOCK:
        if key not in _EVALUATORS:
            import keras

            shapes = key[2]
            model = keras.models.model_from_json(architecture_json)
            evaluator = ShardEvaluator(model_forward(model, jit_compile), batch_size,
                                       inputs=InputLayout(tuple(f"input_{i}" for i in range(len(shapes))), shapes),
                                       output_mask=output_masked(model))
            with logs.filtered_stderr(not logs.verbose()):  # XLA's notes on a program loaded from its cache
                evaluator.compile()
            xlacache.publish(keep_open=True)  # a worker may be killed, not ended: share the program now
            _EVALUATORS[key] = _CachedEvaluator(model, evaluator, None)
        return _EVALUATORS[key]


def warm_up(architecture_json: str, batch_size: int, input_shapes: InputShapes, jit_compile: bool) -> None:
    """Build and compile the forward pass for an architecture before its weights are known.

    ``input_shapes``: per model input, (time, features) or (features,).
    """
    _cached(architecture_json, batch_size, input_shapes, jit_compile)


def input_shapes(sample) -> InputShapes:
    """The per-series shape of each input of a sample (one array per input, or one array)."""
    return tuple(tuple(array.shape[1:]) for array in as_inputs(sample))


def evaluator_for(model: ModelSpec, settings: Settings, sample) -> ShardEvaluator:
    """This process's evaluator for ``model`` and ``sample``'s shapes at the layout's batch size.

    It holds the model's weights and the run's input layout (masks).
    Each thread gets an evaluator of its own (its own batch buffers) on the
    process's one compiled forward pass, so that several threads may
    evaluate at once (:class:`LocalExecutor`, the driver lane); they share
    the model's weights, so they must evaluate the same model.
    """
    layout = settings.inputs
    if layout is None:
        layout = InputLayout.single(*input_shapes(sample)[0])
    key = _key(model.architecture_json, settings.layout.batch_size, layout.shapes, settings.jit_compile)
    with _EVALUATORS_LOCK:
        cached = _cached(*key)
        if cached.fingerprint != model.fingerprint:
            cached.model.set_weights(list(model.weights))
            cached.fingerprint = model.fingerprint
    lanes = _LANES.__dict__.setdefault("evaluators", {})
    evaluator = lanes.get(key)
    if evaluator is None or evaluator.forward is not cached.evaluator.forward:
        evaluator = lanes[key] = cached.evaluator.lane()
    evaluator.inputs = layout
    return evaluator


_READERS: "OrderedDict[tuple[str, int], object]" = OrderedDict()  # (dataset fingerprint, budget) -> ShardReader
_KEPT_READERS = 4
_READERS_LOCK = threading.Lock()


def shard_reader(dataset_input):
    """This process's :class:`~rnnimp.dataset.ShardReader` of a dataset input, kept across units, waves and
    jobs on the same data (the last few datasets' readers are kept; each within its byte budget)."""
    from .dataset import ShardReader

    key = (dataset_input.fingerprint, dataset_input.budget_bytes)
    with _READERS_LOCK:  # the local executor's threads
        if key not in _READERS:
            _READERS[key] = ShardReader(dataset_input.plan, dataset_input.budget_bytes)
            while len(_READERS) > _KEPT_READERS:
                _READERS.popitem(last=False)
        _READERS.move_to_end(key)
        return _READERS[key]


def materialize(sample, settings: Settings):
    """``sample`` with each dataset input replaced by a :class:`~rnnimp.dataset.SampleView` over this
    process's cached reader (arrays are returned as they are)."""
    inputs = as_inputs(sample)
    if not any(getattr(array, "is_dataset", False) for array in inputs):
        return sample
    from .dataset import SampleView

    views = [SampleView(shard_reader(array), settings.layout.shards) if getattr(array, "is_dataset", False)
             else array for array in inputs]
    return tuple(views) if isinstance(sample, (tuple, list)) else views[0]


def cache_stats() -> dict:
    """Shard cache use of this process over its readers: hits, misses, evictions, cached bytes and the
    seconds spent reading shards (``read_s``)."""
    readers = list(_READERS.values())
    return {"hits": sum(r.hits for r in readers), "misses": sum(r.misses for r in readers),
            "evictions": sum(r.evictions for r in readers), "cached_bytes": sum(r.cached_bytes for r in readers),
            "read_s": sum(r.read_s for r in readers)}


def predict_shard(model: ModelSpec, sample, settings: Settings, shard: Shard) -> np.ndarray:
    """Unperturbed predictions of one shard: float32 (shard rows, outputs); NaN at masked outputs."""
    sample = materialize(sample, settings)
    return evaluator_for(model, settings, sample).predict(sample, shard)


def unit_sums(model: ModelSpec, sample, baseline: np.ndarray, labels: np.ndarray | None,
              settings: Settings, unit: Unit) -> np.ndarray:
    """Per-batch weighted sums and counts of one unit: float64 (batches, 2), or (batches, columns, 2)
    with ``settings.measures`` (see :meth:`rnnimp.method.ShardEvaluator.unit_sums`).

    ``baseline``: the unperturbed predictions of the unit's shard (shard rows, outputs).
    """
    return unit_sums_many(model, sample, baseline, labels, settings, (unit,))[0]


def unit_sums_many(model: ModelSpec, sample, baseline: np.ndarray, labels: np.ndarray | None,
                   settings: Settings, units: Sequence[Unit]) -> np.ndarray:
    """:func:`unit_sums` of several units of one shard, set up once: float64 (units, batches, 2), or
    (units, batches, columns, 2) with ``settings.measures``; entry ``i`` is exactly ``unit_sums`` of ``units[i]``.

    ``baseline``: the unperturbed predictions of the units' shard (shard rows, outputs).
    """
    sample = materialize(sample, settings)
    evaluator = evaluator_for(model, settings, sample)
    return evaluator.unit_sums_many(sample, baseline, labels, units, settings.perturbation, settings.metric,
                                    measures=settings.measures)


def shard_runs(units: Iterable[Unit], most: int) -> Iterator[list[Unit]]:
    """``units`` in their order, cut into runs of consecutive units of one shard, each at most ``most`` long."""
    run: list[Unit] = []
    for unit in units:
        if run and (len(run) >= most or unit.shard != run[0].shard):
            yield run
            run = []
        run.append(unit)
    if run:
        yield run


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_RSS_PARTS = {"RssAnon": "private", "RssFile": "file", "RssShmem": "shared_memory"}


def rss_parts_bytes() -> dict[str, int]:
    """This process's resident memory now, by kind (Linux; empty elsewhere): ``private`` (its own heap),
    ``file`` (mapped files, libraries) and ``shared_memory`` (shared pages it has touched: on a Ray
    worker, the object store's pages, shared by every process of the node, such as the baseline
    predictions it read)."""
    parts = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in _RSS_PARTS:
                    parts[_RSS_PARTS[name]] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return parts


LOCAL_RUN = 64  # units of one shard the local executor computes in one call
RUNS_PER_THREAD = 4  # with several threads, at least this many runs each, to balance them


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


THREADS_PER_CPU = 2  # the local executor's default: while one thread runs its Python and numpy, another computes


class LocalExecutor:
    """Runs every unit in this process, on ``threads`` threads (default: :data:`THREADS_PER_CPU` per CPU of
    :func:`available_cpus`).

    The threads share the process's one compiled forward pass, each with
    batch buffers of its own (:func:`evaluator_for`); TensorFlow releases
    the GIL while it computes, so they run at once. The effects are the
    same bit for bit with any number of threads (every unit carries its
    seed). TensorFlow runs concurrent XLA programs only with an intra-op
    pool of several threads (its default: one per CPU). Two threads per CPU
    beat one: a unit's batch is about two parts forward pass (which
    releases the GIL) to one part Python and numpy (perturbation, metric,
    conversion), which another thread's forward pass can overlap (measured
    on 2 CPUs: 100,000 series x 30 repeats in 6.5–7.6 s on 4 threads,
    7.8–9.2 s on 2).
    """

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = (THREADS_PER_CPU * available_cpus() if threads is None
                        else validation.positive_int("threads", threads))
        self.timings: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rnnimp-local")
        return self._pool

    def _as_finished(self, function: Callable, items: list) -> Iterator[tuple]:
        """``(item, function(item))`` for each item on the executor's threads, as each finishes (in order
        in the caller's thread, with one thread). Items not started when the caller stops (an error, an
        interrupt) are cancelled."""
        if self.threads == 1 or len(items) < 2:
            yield from ((item, function(item)) for item in items)
            return
        futures = {self._threads().submit(function, item): item for item in items}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def baseline(self, job: EvaluationJob) -> Baseline:
        """Predictions of every shard of the sample, in this process."""
        started = time.perf_counter()
        layout_shards = job.settings.layout.shards
        finished = dict(self._as_finished(lambda shard: predict_shard(job.model, job.sample, job.settings, shard),
                                          layout_shards))
        shards = tuple(finished[shard] for shard in layout_shards)
        self.timings["baseline"] = time.perf_counter() - started
        self.timings.setdefault("units", 0.0)
        return Baseline(shards, shards[0].shape[1])

    def evaluate(self, job: EvaluationJob, baseline: Baseline, units: list[Unit]):
        """Yield ``(unit, per-batch sums)`` for each unit, run by run as the runs finish (in plan order on
        one thread), so that a checkpoint keeps every finished run when the caller stops.

        Consecutive units of one shard are computed together (at most
        :data:`LOCAL_RUN` at a time, fewer with several threads so that
        each gets :data:`RUNS_PER_THREAD` runs), sharing their set-up.
        """
        most = LOCAL_RUN if self.threads == 1 else max(1, min(
            LOCAL_RUN, math.ceil(len(units) / (self.threads * RUNS_PER_THREAD))))

        def sums_of(run: list[Unit]) -> np.ndarray:
            return unit_sums_many(job.model, job.sample, baseline.shards[run[0].shard.index], job.labels,
                                  job.settings, run)

        runs = list(shard_runs(units, most))
        started = time.perf_counter()
        for run, sums in self._as_finished(sums_of, runs):
            yield from zip(run, sums)
        self.timings["units"] = self.timings.get("units", 0.0) + time.perf_counter() - started

    def shutdown(self) -> None:
        """Stop the threads; the compiled evaluators stay cached in this process."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def describe(self) -> dict:
        """For the run's metadata (``workers``): every unit ran in this process, on this many threads."""
        return {"threads": self.threads}
