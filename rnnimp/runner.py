"""Running a prepared request: waves of repeats, checkpoints, the effects matrix, the metadata.

:func:`run` plans the units of a :class:`~rnnimp.options.Request`, has an
:class:`Executor` compute them (in this process, or on Ray), keeps each
finished unit in the checkpoint, and with adaptive repeats adds waves until
every row's interval is tight enough. It never imports Ray itself.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np

from . import stats
from .checkpoint import Checkpoint, unit_id
from .errors import InvalidParameterError
from .forward import forward_kind
from .method import Metric, Unit, effect, plan_units
from .modelio import ModelSpec
from .options import Request
from .result import ImportanceResult
from .seeding import Stream, generator
from .worker import Baseline, EvaluationJob, LocalExecutor


@runtime_checkable
class Executor(Protocol):
    """Where units run: :class:`rnnimp.worker.LocalExecutor` or :class:`rnnimp.distributed.RayExecutor`.

    ``timings`` holds the wall times of its phases (seconds by name), merged
    into the run's metadata. Every executor gives identical effects.
    """

    name: str
    timings: dict[str, float]

    def baseline(self, job: EvaluationJob) -> Baseline:
        """Unperturbed predictions of every shard of ``job``'s sample."""

    def evaluate(self, job: EvaluationJob, baseline: Baseline, units: list[Unit]) -> Iterable[tuple[Unit, Any]]:
        """``(unit, per-batch sums float64 (batches, 2))`` for every unit, in any order."""

    def shutdown(self) -> None:
        """Release what the executor holds (its workers)."""

    def describe(self) -> dict[str, Any] | None:
        """Where the units ran, for the metadata's ``workers`` entry (None: nothing to record)."""


def library_versions() -> dict[str, str]:
    """Installed versions of rnnimp and the libraries its numbers depend on."""
    versions = {}
    for name in ("rnnimp", "ray", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scipy", "pyarrow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def data_fingerprint(sample, labels: np.ndarray | None) -> str:
    """SHA-256 of the sample's shape and bytes, one array or one per model input (and the labels').

    A dataset input contributes its plan's fingerprint instead of its bytes
    (files, sizes, modification times, row counts, schema: see
    :func:`rnnimp.dataset.plan_fingerprint`), so the driver never reads the rows.
    """
    arrays = list(sample) if isinstance(sample, (tuple, list)) else [sample]
    digest = hashlib.sha256(str(arrays[0].shape).encode())
    for index, array in enumerate(arrays):
        if index:
            digest.update(str(array.shape).encode())
        if getattr(array, "is_dataset", False):
            digest.update(b"dataset " + array.fingerprint.encode())
        else:
            digest.update(memoryview(array).cast("B"))
    if labels is not None:
        digest.update(memoryview(np.ascontiguousarray(labels)).cast("B"))
    return digest.hexdigest()


def halfwidths(effects: np.ndarray, confidence: float) -> np.ndarray:
    """Half-width of each row's Student-t interval of the mean (rows, repeats; NaN = not run).

    Rows with fewer than 2 effects get infinity (never tight enough).
    """
    bounds = stats.intervals(effects, confidence, "t")
    return np.nan_to_num((bounds.high - bounds.low) / 2, nan=np.inf)


def make_executor(executor: Any) -> tuple[Executor, bool]:
    """The executor for ``executor`` ("local", "ray", None or an Executor) and whether it was made here."""
    if executor is None or executor == "local":
        return LocalExecutor(), True
    if executor == "ray":
        from .distributed import RayExecutor

        return RayExecutor(), True
    if isinstance(executor, Executor):
        return executor, False
    raise InvalidParameterError("executor", "must be 'local', 'ray' or an executor object", executor)


def run(model, request: Request, *, executor: Any = None, progress: bool = False,
        checkpoint: str | None = None, metadata: dict[str, Any] | None = None) -> ImportanceResult:
    """Evaluate a prepared request (see :func:`rnnimp.options.prepare`) on ``executor``.

    ``executor``: "local" (default), "ray", or an :class:`Executor`. One made
    here from a name is shut down before returning; one passed in is left
    running, for the caller to reuse and shut down.
    """
    runner, owned = make_executor(executor)
    try:
        return _run(model, request, runner, progress, checkpoint, metadata)
    finally:
        if owned:
            runner.shutdown()


def _run(model, request: Request, runner: Executor, progress: bool, checkpoint: str | None,
         metadata: dict[str, Any] | None) -> ImportanceResult:
    o, settings = request.options, request.settings
    spec = ModelSpec.from_model(model)
    store = None
    finished: dict = {}
    fingerprint_of_data = data_fingerprint(request.sample, request.labels)
    if checkpoint is not None:
        store = Checkpoint(checkpoint, {"configuration": request.configuration, "seed": o.random_state,
                                        "job": (metadata or {}).get("job", {}),
                                        "model_fingerprint": spec.fingerprint,
                                        "data_fingerprint": fingerprint_of_data})
        finished = store.open()

    started = time.perf_counter()
    job = EvaluationJob(spec, request.sample, request.labels, settings)
    baseline = runner.baseline(job)
    if request.labels is not None and request.labels.shape[1] != baseline.n_outputs:
        raise InvalidParameterError(request.names("y"), f"must hold one label per model output ({baseline.n_outputs})",
                                    f"shape {request.labels.shape}")

    panels = panel_labels(request, baseline.n_outputs)
    n_columns = len(panels)
    sums: dict[tuple[int, int, int], list[np.ndarray]] = defaultdict(list)
    cells = [(t, -1 if s is None else s) for t, s in request.cells]
    active = set(cells)
    done_repeats, wave, n_units, from_checkpoint = 0, o.n_repeats, 0, 0
    met = np.zeros(len(cells), dtype=bool)
    while active and wave > 0:
        repeats = range(o.first_repeat + done_repeats, o.first_repeat + done_repeats + wave)
        units = [u for u in plan_units(o.random_state, request.targets, repeats, settings.layout.shards,
                                       resample=o.resample, target_steps=request.steps)
                 if (u.target, -1 if u.step is None else u.step) in active]
        n_units += len(units)
        todo = []
        for unit in units:
            uid = unit_id(unit)
            if uid in finished:
                sums[uid[:3]].append(_columns(finished[uid], n_columns))
                from_checkpoint += 1
            else:
                todo.append(unit)
        try:
            for unit, batch_sums in _with_progress(runner.evaluate(job, baseline, todo), len(todo), progress):
                sums[unit_id(unit)[:3]].append(_columns(batch_sums, n_columns))
                if store is not None:
                    store.record(unit, batch_sums)
        finally:  # every finished unit of the wave is kept, also when the run fails (a kill loses seconds)
            if store is not None:
                store.flush()
        done_repeats += wave
        if o.target_halfwidth is None:
            break
        met = np.ones(len(cells), dtype=bool)  # a cell is done when every panel's row is tight enough
        for column, panel in enumerate(panels):
            effects = _effects_matrix(sums, cells, o.first_repeat, done_repeats, panel.metric, column)
            limit = o.target_halfwidth * (np.abs(np.nanmean(effects, axis=1)) if o.relative else 1.0)
            met &= halfwidths(effects, o.confidence) <= limit
        active = {cell for cell, ok in zip(cells, met) if not ok}
        wave = min(o.wave_repeats, o.max_repeats - done_repeats)
    evaluate_s = time.perf_counter() - started

    run_metadata = {
        "configuration": request.configuration,
        "seed": o.random_state,
        "model_fingerprint": spec.fingerprint,
        "data_fingerprint": fingerprint_of_data,
        "executor": runner.name,
        "forward": forward_kind(model, o.jit_compile),
        "n_units": n_units,
        "units_from_checkpoint": from_checkpoint,
        "versions": library_versions(),
        "timings_s": {"evaluate": evaluate_s, **runner.timings},
    }
    workers = runner.describe()  # where the units ran (Ray: count, GPU share, devices; local: threads)
    if workers is not None:
        run_metadata["workers"] = workers
    results = []
    for column, panel in enumerate(panels):
        effects = _effects_matrix(sums, cells, o.first_repeat, done_repeats, panel.metric, column)
        # a fresh bootstrap stream per panel: each panel's summary equals that of a run of it alone
        summary = stats.summarize(effects, o.confidence, generator(o.random_state, Stream.BOOTSTRAP),
                                  interval=o.interval)
        results.append(_result(request, effects, summary, done_repeats, store, dict(run_metadata), panel.labels))
    if o.target_halfwidth is not None:
        for result in results:
            result.metadata["adaptive"] = {"met": met.tolist(), "repeats_used": result.summary.n_repeats.tolist()}
    for result in results:
        for key, value in (metadata or {}).items():
            if isinstance(value, dict) and isinstance(result.metadata.get(key), dict):
                result.metadata[key] = {**result.metadata[key], **value}
            else:
                result.metadata[key] = value
    first = results[0]
    if len(results) > 1:
        first.panels = results
    return first


@dataclass(frozen=True)
class Panel:
    """One column of a unit's sums: a metric, and where given a segment and an output.

    ``labels``: the values of the columns that name its rows in the tables
    (``metric``, ``segment``, ``output``, ``output_name``), only those the run asked for.
    """

    metric: Metric
    labels: dict[str, Any]


def panel_labels(request: Request, n_outputs: int) -> list[Panel]:
    """The panels of a run, in the order of :meth:`rnnimp.method.Measures.columns`.

    Refuses output names that do not match the model's ``n_outputs`` output values.
    """
    settings, o = request.settings, request.options
    measures = settings.measures
    if measures is None:
        return [Panel(settings.metric, {})]
    names = o.output_names
    if names is not None and len(names) != n_outputs:
        raise InvalidParameterError(request.names("output_names"),
                                    f"must give {n_outputs} names, one per output value of the model", list(names))
    segment_labels = request.configuration.get("segment_labels")
    several = len(measures.metrics) > 1
    panels = []
    for m, g, output in measures.columns(n_outputs):
        labels: dict[str, Any] = {}
        if several:
            labels["metric"] = measures.metrics[m].name
        if segment_labels:
            labels["segment"] = segment_labels[g]
        if measures.per_output:
            labels["output"] = output
            if names is not None:
                labels["output_name"] = None if output < 0 else names[output]
        panels.append(Panel(measures.metrics[m], labels))
    return panels


def _columns(batch_sums: np.ndarray, n_columns: int) -> np.ndarray:
    """A unit's sums as (batches, columns, 2) (a checkpoint keeps them flattened to rows of 2)."""
    return np.asarray(batch_sums, dtype=np.float64).reshape(-1, n_columns, 2)


def _result(request: Request, effects: np.ndarray, summary: stats.Summary, done_repeats: int, store,
            run_metadata: dict[str, Any], labels: dict[str, Any]) -> ImportanceResult:
    """One panel's result from its (cells, repeats) effects."""
    o = request.options
    n_targets = len(request.targets)
    if o.per_step:  # static targets at step 0, steps beyond a shorter input NaN
        grid = np.full((n_targets, request.inputs.max_time_steps or 1, done_repeats), np.nan)
        for row, (target, step) in enumerate(request.cells):
            grid[target, step or 0] = effects[row]
    else:
        grid = effects.reshape(n_targets, done_repeats)
    names = request.feature_names
    return ImportanceResult(
        [t.name for t in request.targets], [[names[i] for i in t.features] for t in request.targets],
        grid, summary, o.confidence, run_metadata, store,
        cells=request.cells if o.per_step else None, target_inputs=request.target_inputs(), labels=labels)


def _effects_matrix(sums, cells, first_repeat: int, n_repeats: int, metric: Metric, column: int = 0) -> np.ndarray:
    """(cells, repeats) effects of one column of the collected sums; NaN where a repeat was not run."""
    effects = np.full((len(cells), n_repeats), np.nan)
    for row, (target, step) in enumerate(cells):
        for repeat in range(n_repeats):
            pieces = sums.get((target, step, first_repeat + repeat))
            if pieces:
                effects[row, repeat] = effect([piece[:, column, :] for piece in pieces], metric)
    return effects


def _with_progress(results, total: int, enabled: bool):
    if not enabled or total == 0:
        yield from results
        return
    from tqdm import tqdm

    with tqdm(total=total, desc="units", unit="unit", mininterval=1.0) as bar:
        for item in results:
            yield item
            bar.update()
