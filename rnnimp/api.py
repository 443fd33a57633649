"""The public entry point: ``sensitivity_importance(model, X, ...)``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from . import output, stats, validation
from .checkpoint import Checkpoint, unit_id
from .errors import InvalidParameterError
from .inputs import (InputLayout, check_padding, feature_names, input_arrays, layout_of, model_input_names,
                     resolve_mask_values)
from .method import LOSSES, METRICS, Layout, Metric, Target, effect, forward_kind, plan_units
from .modelio import ModelSpec
from .perturb import Perturbation
from .seeding import Stream, generator
from .worker import EvaluationJob, LocalExecutor, Settings

DEFAULT_BATCH_SIZE = 4096
DEFAULT_SHARD_SIZE = 65536
PERTURBATIONS = ("noise", "permute", "ablate")
INTERVALS = ("t", "percentile", "bca")


def library_versions() -> dict[str, str]:
    """Installed versions of rnnimp and the libraries its numbers depend on."""
    versions = {}
    for name in ("rnnimp", "ray", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scipy", "pyarrow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class ImportanceResult:
    """Raw effects beside their per-target summary.

    ``effects`` has shape (targets, repeats), or (targets, steps, repeats) for
    a time-step map; ``effects[f, r]`` is the effect of perturbing target f
    with repeat r's draws. With adaptive repeats, repeats a target did not
    need are NaN. Targets are the features, then the groups.

    ``cells`` lists the (target, step) pairs of a time-step map that were
    run, in summary order; step None for a target of static features, whose
    effects sit at step 0 of ``effects`` (its other steps, and steps beyond
    a shorter input's length, are NaN). ``target_inputs``: with several model
    inputs, the input(s) of each target's features.
    """

    target_names: list[str]
    target_features: list[list[str]]
    effects: np.ndarray
    summary: stats.Summary
    confidence: float
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    cells: list[tuple[int, int | None]] | None = None
    target_inputs: list[str] | None = None

    @property
    def per_step(self) -> bool:
        return self.effects.ndim == 3

    @property
    def feature_names(self) -> list[str]:
        return self.target_names

    def _row_cells(self) -> list[tuple[int, int | None]]:
        """(target, step) of each summary row."""
        if self.cells is not None:
            return list(self.cells)
        n_steps = self.effects.shape[1] if self.per_step else 1
        return [(t, s if self.per_step else None) for t in range(len(self.target_names)) for s in range(n_steps)]

    def _grid(self, values: np.ndarray) -> np.ndarray:
        """Summary-row ``values`` placed in the (targets[, steps]) grid of ``effects``, NaN elsewhere."""
        grid = np.full(self.effects.shape[:-1], np.nan)
        for (target, step), value in zip(self._row_cells(), values):
            grid[(target, step or 0) if self.per_step else target] = value
        return grid

    @property
    def importances_mean(self) -> np.ndarray:
        return self._grid(self.summary.mean)

    @property
    def importances_std(self) -> np.ndarray:
        return self._grid(self.summary.std)

    def _cells(self) -> dict[str, pa.Array]:
        """Columns naming each summary row: target index, name, input, features, and step."""
        cells = self._row_cells()
        index = np.array([t for t, _ in cells], dtype=np.int64)
        columns = {
            "feature_index": pa.array(index, pa.int32()),
            "feature": pa.array([self.target_names[i] for i in index], pa.string()),
        }
        if self.target_inputs is not None:
            columns["input"] = pa.array([self.target_inputs[i] for i in index], pa.string())
        columns["features"] = pa.array([self.target_features[i] for i in index], pa.list_(pa.string()))
        if self.per_step:
            columns["step"] = pa.array([s for _, s in cells], pa.int32())
        return columns

    def effects_table(self) -> pa.Table:
        """One row per (target[, step], repeat) that was run."""
        cells = self._cells()
        n_steps = self.effects.shape[1] if self.per_step else 1
        rows = [t * n_steps + (s or 0) for t, s in self._row_cells()]
        flat = self.effects.reshape(-1, self.effects.shape[-1])[rows]
        cell_index, repeat = np.nonzero(np.isfinite(flat))
        columns = {name: column.take(pa.array(cell_index)) for name, column in cells.items()}
        first_repeat = self.metadata.get("configuration", {}).get("first_repeat", 0)
        columns["repeat"] = pa.array(first_repeat + repeat, pa.int32())
        columns["effect"] = pa.array(flat[cell_index, repeat], pa.float64())
        return output.with_metadata(pa.table(columns), self.metadata)

    def summary_table(self) -> pa.Table:
        """One row per target (and step): n_repeats, mean, std, intervals, rank."""
        s = self.summary
        columns = dict(self._cells())
        columns.update({
            "n_repeats": pa.array(s.n_repeats, pa.int64()),
            "mean": s.mean, "std": s.std,
            "t_low": s.t_low, "t_high": s.t_high,
            "bootstrap_low": s.bootstrap_low, "bootstrap_high": s.bootstrap_high,
            "bootstrap_method": pa.array(s.bootstrap_method, pa.string()),
            "rank": pa.array(s.rank, pa.int64()),
        })
        target = self.metadata.get("adaptive")
        if target:
            columns["target_met"] = pa.array(target["met"], pa.bool_())
        return output.with_metadata(pa.table(columns), self.metadata)

    def comparisons_table(self) -> pa.Table:
        """Pairwise differences of targets with their intervals (not for time-step maps)."""
        return output.with_metadata(
            stats.pairwise_comparisons(self.effects, self.target_names, self.confidence), self.metadata)

    def rank_probabilities_table(self) -> pa.Table:
        return output.with_metadata(stats.rank_probabilities(self.effects, self.target_names), self.metadata)

    def write(self, out: str, model_bytes: bytes | None = None, chart: bool = True) -> dict[str, str]:
        """Write every result file into ``out``, each atomically, then drop the checkpoint."""
        paths = {}
        if model_bytes is not None:
            paths["model"] = output.write_bytes(model_bytes, out, output.MODEL_FILE)
        paths["effects"] = output.write_table(self.effects_table(), out, output.EFFECTS_FILE)
        if not self.per_step:
            paths["comparisons"] = output.write_table(self.comparisons_table(), out, output.COMPARISONS_FILE)
            paths["rank_probabilities"] = output.write_table(self.rank_probabilities_table(), out, output.RANKS_FILE)
        if chart:
            paths["chart"] = output.write_bytes(self.chart_png(), out, output.CHART_FILE)
        paths["summary"] = output.write_table(self.summary_table(), out, output.SUMMARY_FILE)
        if self.checkpoint is not None:
            self.checkpoint.remove()
        return paths

    def chart_png(self) -> bytes:
        """A PNG: bar chart of mean effects with intervals, or a heatmap of a time-step map."""
        from . import plots

        if self.per_step:
            mapped = sorted({t for t, step in self._row_cells() if step is not None})  # static features: no map
            return plots.png_bytes(plots.heatmap_figure(self.importances_mean[mapped],
                                                        [self.target_names[t] for t in mapped]))
        s = self.summary
        level = f"{self.confidence:.0%} t-interval"
        return plots.png_bytes(plots.bar_figure(self.target_names, s.mean, s.t_low, s.t_high,
                                                title=f"Effect of perturbing each input (mean, {level})"))

    def format_summary(self) -> str:
        """The summary as a plain-text table, most important first."""
        from .report import format_summary

        return format_summary(self.summary_table(), self.confidence)


def _feature_names(names: Sequence[str] | None, n_features: int) -> list[str]:
    if names is None:
        return [f"x{i + 1}" for i in range(n_features)]
    names = [str(name) for name in names]
    if len(names) != n_features or len(set(names)) != n_features or not all(names):
        raise InvalidParameterError(
            "feature_names", f"must be {n_features} distinct non-empty names, one per feature", names)
    return names


def _feature_index(reference: str | int, names: list[str], parameter: str) -> int:
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        if 0 <= reference < len(names):
            return int(reference)
    elif reference in names:
        return names.index(reference)
    raise InvalidParameterError(parameter, f"must name known features ({', '.join(names)}) "
                                f"or indexes 0..{len(names) - 1}", reference)


def resolve_targets(names: list[str], groups: Mapping[str, Sequence[str | int]] | None) -> list[Target]:
    """One target per feature, then one per group (features perturbed jointly)."""
    targets = [Target(name, (index,)) for index, name in enumerate(names)]
    for group_name, members in (groups or {}).items():
        if not group_name or group_name in names or not members:
            raise InvalidParameterError("groups", "need a new non-empty name and at least one feature",
                                        f"{group_name}={list(members or [])}")
        indexes = tuple(sorted({_feature_index(m, names, "groups") for m in members}))
        targets.append(Target(str(group_name), indexes))
    return targets


def _feature_values(sample, mask_values: Sequence[float | None] = ()) -> list[np.ndarray]:
    """Per input, its values as (values, features), padded steps of masked inputs left out."""
    arrays = [sample] if isinstance(sample, np.ndarray) else list(sample)
    masks = list(mask_values) or [None] * len(arrays)
    values = []
    for array, mask_value in zip(arrays, masks):
        rows = array.reshape(-1, array.shape[-1])
        if mask_value is not None:
            rows = rows[np.any(rows != np.float32(mask_value), axis=1)]
        values.append(rows)
    return values


def resolve_perturbation(kind: str, sample, noise_scale: float, noise_relative: float | None,
                         ablate_value: str | float, mask_values: Sequence[float | None] = ()) -> Perturbation:
    """The perturbation with its per-feature scales or replacement values fixed on ``sample``.

    ``sample``: one array (series, time, features), or one array per model
    input; scales and values are per global feature (inputs in order), their
    statistics taken over real steps only where an input has a mask value.
    """
    if kind not in PERTURBATIONS:
        raise InvalidParameterError("perturbation", f"must be one of {', '.join(PERTURBATIONS)}", kind)
    per_input = _feature_values(sample, mask_values)
    n_features = sum(v.shape[1] for v in per_input)
    if kind == "noise":
        if noise_relative is not None:
            relative = validation.positive_finite("noise_relative", noise_relative)
            stds = np.concatenate([v.std(axis=0, dtype=np.float64) for v in per_input])
            return Perturbation("noise", scales=tuple(float(relative * s) for s in stds))
        scale = validation.positive_finite("noise_scale", noise_scale)
        return Perturbation("noise", scales=(scale,) * n_features)
    if kind == "permute":
        n_series = len(sample) if isinstance(sample, np.ndarray) else len(sample[0])
        if n_series < 2:
            raise InvalidParameterError("X", "must hold at least 2 series to permute", n_series)
        return Perturbation("permute")
    if ablate_value == "mean":
        values = np.concatenate([v.mean(axis=0, dtype=np.float64) for v in per_input])
    elif ablate_value == "zero":
        values = np.zeros(n_features)
    else:
        try:
            constant = float(ablate_value)
        except (TypeError, ValueError):
            constant = math.nan
        if not math.isfinite(constant):
            raise InvalidParameterError("ablate_value", "must be 'mean', 'zero' or a finite number", ablate_value)
        values = np.full(n_features, constant)
    return Perturbation("ablate", values=tuple(float(v) for v in values))


def _n_outputs(model) -> int | None:
    try:
        shapes = [tuple(o.shape[1:]) for o in model.outputs]
    except (AttributeError, TypeError, ValueError):
        return None
    if any(d is None for shape in shapes for d in shape):
        return None
    return int(sum(np.prod(shape, dtype=np.int64) for shape in shapes))


def _check_model_fits(model, sample: np.ndarray) -> None:
    expected = tuple(model.input_shape[1:])
    actual = sample.shape[1:]
    if len(expected) != 2 or any(e is not None and e != a for e, a in zip(expected, actual)):
        raise InvalidParameterError(
            "X", f"must match the model's input shape (series, {expected[0]}, {expected[-1]})",
            f"shape {sample.shape}")


def resolve_metric(name: str, loss: str, y, model, n_series: int) -> tuple[Metric, np.ndarray | None]:
    """The metric and, for loss-increase, labels as float32 (series, outputs)."""
    if name not in METRICS:
        raise InvalidParameterError("metric", f"must be one of {', '.join(METRICS)}", name)
    if name != "loss-increase":
        return Metric(name), None
    if loss not in LOSSES:
        raise InvalidParameterError("loss", f"must be one of {', '.join(LOSSES)}", loss)
    if y is None:
        raise InvalidParameterError("y", "labels are required for the loss-increase metric", None)
    labels = np.asarray(y, dtype=np.float32)
    labels = labels.reshape(labels.shape[0], -1) if labels.ndim else labels
    n_outputs = _n_outputs(model)
    if labels.ndim != 2 or labels.shape[0] != n_series or (n_outputs is not None and labels.shape[1] != n_outputs):
        raise InvalidParameterError(
            "y", f"must hold one label per model output for each of the {n_series} series "
            f"({n_outputs} outputs)", f"shape {np.shape(y)}")
    if not np.isfinite(labels).all():
        raise InvalidParameterError("y", "must hold only finite values", "NaN or infinite labels")
    return Metric(name, loss), labels


def _resolve_executor(executor):
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from .distributed import RayExecutor

        return RayExecutor()
    if hasattr(executor, "evaluate") and hasattr(executor, "baseline"):
        return executor
    raise InvalidParameterError("executor", "must be 'local', 'ray' or an executor object", executor)


def data_fingerprint(sample, labels: np.ndarray | None) -> str:
    """SHA-256 of the sample (one array, or one per input) and the labels."""
    arrays = [sample] if isinstance(sample, np.ndarray) else list(sample)
    digest = hashlib.sha256(str(arrays[0].shape).encode())
    for index, array in enumerate(arrays):
        if index:
            digest.update(str(array.shape).encode())
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


@dataclass(frozen=True)
class Options:
    """Every option of an importance run, with its default.

    n_repeats : repeats per target (>= 2, for the intervals); with
        ``target_halfwidth``, the first wave.
    first_repeat : index of the first repeat: runs of repeats 0..14 and
        15..29 draw exactly the units of one run of 30 (see jobs.merge).
    perturbation : ``"noise"`` (add N(0, noise_scale²), or noise_relative ×
        the feature's standard deviation), ``"permute"`` (exchange a feature's
        whole trajectory between series) or ``"ablate"`` (replace by
        ``ablate_value``: "mean", "zero" or a number).
    metric : ``"rms"`` or ``"mae"`` output change, or ``"loss-increase"``
        (``loss`` "mse" or "binary-crossentropy" against labels ``y``,
        (series, ...) with one label per model output).
    groups : {name: [feature names or indexes]} perturbed jointly, reported
        as extra rows after the features.
    per_step : a (targets, steps) map: perturb at each time step t alone.
    resample : each repeat also weights the series by a Poisson(1)
        bootstrap draw, so intervals include the choice of series.
    random_state : the one seed every draw derives from.
    confidence, interval : level of the intervals; the bootstrap method
        ("bca" where defined, else "percentile"; or "percentile", or "t").
    target_halfwidth, relative, max_repeats, wave_repeats : adaptive
        repeats: after the first wave, add waves of ``wave_repeats`` to the
        targets whose t-interval half-width exceeds ``target_halfwidth``
        (times |mean| if ``relative``), up to ``max_repeats``.
    feature_names : one name per feature (default x1, x2, ...); with several
        inputs, a list over all inputs' features in input order, or
        {input name: names}.
    mask_value : padding value of the sequence inputs: None (the
        ``mask_value`` of a Keras ``Masking`` layer reading the input, if
        any, else no mask), a number, or {input name: number}. Padded steps
        (all features equal to it) are never perturbed; masked outputs are
        left out of the metric.
    padding : "post" or "pre": where series were padded; aligns the real
        steps of series of different lengths when a permutation exchanges them.
    batch_size, shard_size : the model runs on batches of ``batch_size``
        series; a unit of work covers ``shard_size`` series (a multiple of
        ``batch_size``). Neither changes the effects.
    jit_compile : compile the forward pass with XLA; a ``keras.Sequential``
        stack of LSTM (and Dense, Flatten, Dropout) layers then runs as
        rnnimp's fused program (:mod:`rnnimp.lstm`, equal to ``model(x)`` to
        float32 rounding). False: plain ``model(x)`` in a ``tf.function``.
    """

    n_repeats: int = 30
    first_repeat: int = 0
    perturbation: str = "noise"
    noise_scale: float = 0.2
    noise_relative: float | None = None
    ablate_value: str | float = "mean"
    metric: str = "rms"
    loss: str = "mse"
    groups: Mapping[str, Sequence[str | int]] | None = None
    per_step: bool = False
    resample: bool = False
    random_state: int = 0
    confidence: float = 0.95
    interval: str = "bca"
    target_halfwidth: float | None = None
    relative: bool = False
    max_repeats: int | None = None
    wave_repeats: int = 5
    feature_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None
    mask_value: float | Mapping[str, float] | None = None
    padding: str = "post"
    batch_size: int = DEFAULT_BATCH_SIZE
    shard_size: int = DEFAULT_SHARD_SIZE
    jit_compile: bool = True


@dataclass(frozen=True)
class Request:
    """A validated run: the options resolved against the model and the data."""

    options: Options
    sample: np.ndarray | tuple[np.ndarray, ...]  # one array for a single-input model, else one per input
    labels: np.ndarray | None
    names: list[str]
    targets: list[Target]
    steps: list[list[int | None]]  # per target: the steps of a time-step map, or [None]
    settings: Settings
    max_repeats: int | None
    configuration: dict[str, Any]

    @property
    def inputs(self) -> InputLayout:
        return self.settings.inputs

    @property
    def cells(self) -> list[tuple[int, int | None]]:
        return [(t, s) for t, steps in enumerate(self.steps) for s in steps]

    def target_inputs(self) -> list[str] | None:
        """Per target, the comma-separated names of the inputs its features come from (several inputs only)."""
        if self.inputs.n_inputs == 1:
            return None
        return [",".join(self.inputs.names[k] for k, _, _ in self.inputs.parts(t.features)) for t in self.targets]


def prepare(model, X, y=None, options: Options = Options()) -> Request:
    """Validate ``options`` against ``model`` and data ``X`` (and labels ``y``); no model runs.

    Raises InvalidParameterError naming the option, the rule and the value.
    """
    o = options
    n_repeats = validation.positive_int("n_repeats", o.n_repeats)
    if n_repeats < 2:
        raise InvalidParameterError("n_repeats", "must be at least 2 for a confidence interval", n_repeats)
    validation.seed("random_state", o.random_state)
    validation.seed("first_repeat", o.first_repeat)
    confidence = validation.open_unit_interval("confidence", o.confidence)
    if o.interval not in INTERVALS:
        raise InvalidParameterError("interval", f"must be one of {', '.join(INTERVALS)}", o.interval)
    validation.positive_int("batch_size", o.batch_size)
    validation.positive_int("shard_size", o.shard_size)
    validation.positive_int("wave_repeats", o.wave_repeats)
    max_repeats = None
    if o.target_halfwidth is not None:
        validation.positive_finite("target_halfwidth", o.target_halfwidth)
        max_repeats = validation.positive_int("max_repeats", o.max_repeats or 10 * n_repeats)
        if max_repeats < n_repeats:
            raise InvalidParameterError("max_repeats", f"must be at least n_repeats ({n_repeats})", max_repeats)
    padding = check_padding(o.padding)
    if len(model.inputs) == 1 and len(model.inputs[0].shape) == 3 and isinstance(X, np.ndarray):
        sample = validation.series_array("X", X)
        _check_model_fits(model, sample)
        input_names, arrays = model_input_names(model), [sample]
    else:
        input_names, arrays = input_arrays(model, X)
        sample = arrays[0] if len(arrays) == 1 else tuple(arrays)
    mask_values = resolve_mask_values(o.mask_value, model, input_names, arrays)
    inputs = layout_of(input_names, arrays, mask_values, padding)
    n_samples, time_steps, n_features = len(arrays[0]), inputs.max_time_steps, inputs.n_features
    names = feature_names(input_names, arrays, o.feature_names)
    targets = resolve_targets(names, o.groups)
    perturb = resolve_perturbation(o.perturbation, arrays, o.noise_scale, o.noise_relative, o.ablate_value,
                                   mask_values)
    measure, labels = resolve_metric(o.metric, o.loss, y, model, n_samples)
    layout = Layout.for_sample(n_samples, o.batch_size, o.shard_size)
    steps = [_target_steps(inputs, target, o.per_step) for target in targets]
    configuration = {
        "perturbation": o.perturbation, "scales": list(perturb.scales), "ablate_values": list(perturb.values),
        "metric": o.metric, "loss": o.loss if o.metric == "loss-increase" else None,
        "n_repeats": n_repeats, "first_repeat": o.first_repeat, "noise_scale": o.noise_scale if o.perturbation == "noise" else None,
        "noise_relative": o.noise_relative if o.perturbation == "noise" else None,
        "groups": {t.name: [names[i] for i in t.features] for t in targets[n_features:]},
        "per_step": o.per_step, "resample": o.resample, "confidence": confidence, "interval": o.interval,
        "target_halfwidth": o.target_halfwidth, "relative": o.relative, "max_repeats": max_repeats,
        "wave_repeats": o.wave_repeats, "n_samples": n_samples, "time_steps": time_steps,
        "n_features": n_features, "feature_names": names, "batch_size": layout.batch_size,
        "shard_size": layout.shard_size, "jit_compile": o.jit_compile,
    }
    if inputs.n_inputs > 1 or any(v is not None for v in mask_values):
        configuration["inputs"] = {name: {"kind": inputs.kind(k), "shape": list(inputs.shapes[k]),
                                          "mask_value": inputs.mask_values[k]}
                                   for k, name in enumerate(inputs.names)}
        configuration["padding"] = padding
    return Request(o, sample, labels, names, targets, steps,
                   Settings(layout, perturb, measure, o.jit_compile, inputs), max_repeats, configuration)


def _target_steps(inputs: InputLayout, target: Target, per_step: bool) -> list[int | None]:
    """The steps of a target in a time-step map: those of its longest sequence input, or [None]."""
    if not per_step:
        return [None]
    parts = inputs.parts(target.features)
    sequence = [k for k, _, _ in parts if inputs.is_sequence(k)]
    if not sequence:
        return [None]
    if len(sequence) < len(parts):
        raise InvalidParameterError("groups", "must not mix static and sequence features in a time-step map "
                                    "(per_step)", target.name)
    return list(range(max(inputs.shapes[k][0] for k in sequence)))


def sensitivity_importance(
    model,
    X: np.ndarray,
    y: np.ndarray | None = None,
    *,
    executor: Any = None,
    progress: bool = False,
    checkpoint: str | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> ImportanceResult:
    """Importance of each input feature (or group) of ``model`` by perturbation.

    For every target f and repeat r, perturbs the features of f at every time
    step (or, with ``per_step``, at each step alone) in every series of ``X``
    (series, time, features), runs the model and measures the change of all
    its outputs; by default the RMS change under N(0, 0.2²) noise.

    ``y``: labels (series, ...), one per model output, for the loss-increase
    metric. ``options``: any field of :class:`Options` (n_repeats,
    perturbation, noise_scale, metric, groups, per_step, resample,
    random_state, confidence, interval, target_halfwidth, feature_names,
    batch_size, shard_size, ...). ``executor``: ``"local"`` (in-process, the
    default), ``"ray"``, or an executor such as
    :class:`rnnimp.distributed.RayExecutor`; all give identical effects.
    ``checkpoint``: an output location where finished units are kept, so a
    rerun computes only what is missing. ``metadata``: extra provenance.

    Returns an ImportanceResult with ``effects`` (targets, [steps,] repeats).
    """
    try:
        parsed = Options(**options)
    except TypeError as error:
        raise InvalidParameterError("options", "must be fields of rnnimp.api.Options", str(error)) from None
    request = prepare(model, X, y, parsed)
    return run(model, request, executor=executor, progress=progress, checkpoint=checkpoint, metadata=metadata)


def run(model, request: Request, *, executor: Any = None, progress: bool = False,
        checkpoint: str | None = None, metadata: dict[str, Any] | None = None) -> ImportanceResult:
    """Evaluate a prepared request (see :func:`prepare`) on ``executor``."""
    o, settings = request.options, request.settings
    runner = _resolve_executor(executor)
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
        raise InvalidParameterError("y", f"must hold one label per model output ({baseline.n_outputs})",
                                    f"shape {request.labels.shape}")

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
                sums[uid[:3]].append(finished[uid])
                from_checkpoint += 1
            else:
                todo.append(unit)
        for unit, batch_sums in _with_progress(runner.evaluate(job, baseline, todo), len(todo), progress):
            sums[unit_id(unit)[:3]].append(batch_sums)
            if store is not None:
                store.record(unit, batch_sums)
        done_repeats += wave
        if o.target_halfwidth is None:
            break
        effects = _effects_matrix(sums, cells, o.first_repeat, done_repeats, settings.metric)
        limit = o.target_halfwidth * (np.abs(np.nanmean(effects, axis=1)) if o.relative else 1.0)
        met = halfwidths(effects, o.confidence) <= limit
        active = {cell for cell, ok in zip(cells, met) if not ok}
        wave = min(o.wave_repeats, request.max_repeats - done_repeats)
    evaluate_s = time.perf_counter() - started

    effects = _effects_matrix(sums, cells, o.first_repeat, done_repeats, settings.metric)
    summary = stats.summarize(effects, o.confidence, generator(o.random_state, Stream.BOOTSTRAP),
                              interval=o.interval)
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
        "timings_s": {"evaluate": evaluate_s, **getattr(runner, "timings", {})},
    }
    if o.target_halfwidth is not None:
        run_metadata["adaptive"] = {"met": met.tolist(), "repeats_used": summary.n_repeats.tolist()}
    for key, value in (metadata or {}).items():
        if isinstance(value, dict) and isinstance(run_metadata.get(key), dict):
            run_metadata[key] = {**run_metadata[key], **value}
        else:
            run_metadata[key] = value
    n_targets = len(request.targets)
    if o.per_step:
        grid = np.full((n_targets, request.inputs.max_time_steps or 1, done_repeats), np.nan)
        for row, (target, step) in enumerate(request.cells):
            grid[target, step or 0] = effects[row]
    else:
        grid = effects.reshape(n_targets, done_repeats)
    return ImportanceResult(
        [t.name for t in request.targets], [[request.names[i] for i in t.features] for t in request.targets],
        grid, summary, o.confidence, run_metadata, store,
        cells=request.cells if o.per_step else None, target_inputs=request.target_inputs())


def _effects_matrix(sums, cells, first_repeat: int, n_repeats: int, metric: Metric) -> np.ndarray:
    """(cells, repeats) effects from the collected sums; NaN where a repeat was not run."""
    effects = np.full((len(cells), n_repeats), np.nan)
    for row, (target, step) in enumerate(cells):
        for column in range(n_repeats):
            pieces = sums.get((target, step, first_repeat + column))
            if pieces:
                effects[row, column] = effect(pieces, metric)
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
