"""What a worker process does with a unit of work; knows nothing of Ray.

Each process keeps one compiled evaluator per (architecture, batch shape):
the model is built and its ``tf.function`` traced and compiled once, and a
new set of weights is only assigned to the existing variables. A worker can
therefore be warmed up with the architecture alone, before the weights exist
(while the driver is still training).
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import logs, xlacache
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


InputShapes = tuple[tuple[int, ...], ...]  # per model input, the shape of one series' data


def _cached(architecture_json: str, batch_size: int, input_shapes: InputShapes, jit_compile: bool) -> _CachedEvaluator:
    """This process's evaluator for an architecture and batch shapes, built and compiled once.

    Keyed by the architecture JSON itself: a string caches its hash, and
    comparing two equal strings is far cheaper than hashing one with SHA-256
    on every call.
    """
    shapes = tuple(tuple(int(d) for d in shape) for shape in input_shapes)
    key = (architecture_json, batch_size, shapes, jit_compile)
    if key not in _EVALUATORS:
        import keras

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
    """
    layout = settings.inputs
    if layout is None:
        layout = InputLayout.single(*input_shapes(sample)[0])
    cached = _cached(model.architecture_json, settings.layout.batch_size, layout.shapes, settings.jit_compile)
    if cached.fingerprint != model.fingerprint:
        cached.model.set_weights(list(model.weights))
        cached.fingerprint = model.fingerprint
    cached.evaluator.inputs = layout
    return cached.evaluator


_READERS: "OrderedDict[tuple[str, int], object]" = OrderedDict()  # (dataset fingerprint, budget) -> ShardReader
_KEPT_READERS = 4


def shard_reader(dataset_input):
    """This process's :class:`~rnnimp.dataset.ShardReader` of a dataset input, kept across units, waves and
    jobs on the same data (the last few datasets' readers are kept; each within its byte budget)."""
    from .dataset import ShardReader

    key = (dataset_input.fingerprint, dataset_input.budget_bytes)
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


class LocalExecutor:
    """Runs every unit in this process, one after the other."""

    name = "local"

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def baseline(self, job: EvaluationJob) -> Baseline:
        """Predictions of every shard of the sample, in this process."""
        shards = tuple(predict_shard(job.model, job.sample, job.settings, shard)
                       for shard in job.settings.layout.shards)
        return Baseline(shards, shards[0].shape[1])

    def evaluate(self, job: EvaluationJob, baseline: Baseline, units: list[Unit]):
        """Yield ``(unit, per-batch sums)`` for each unit, in plan order.

        Consecutive units of one shard are computed together (at most
        :data:`LOCAL_RUN` at a time), sharing their set-up.
        """
        for run in shard_runs(units, LOCAL_RUN):
            sums = unit_sums_many(job.model, job.sample, baseline.shards[run[0].shard.index], job.labels,
                                  job.settings, run)
            yield from zip(run, sums)

    def shutdown(self) -> None:
        """Nothing to release: the compiled evaluators stay cached in this process."""

    def describe(self) -> None:
        """Nothing to record: every unit ran in this process (the metadata's ``executor`` says so)."""
        return None
