"""The method: perturb one feature, run the model, measure how the output changes.

For a unit (target f, repeat r) the effect with the default metric is

    effect[f, r] = sqrt( Σ_s w_s Σ_o (ŷ_f,r[s, o] − ŷ[s, o])² / (Σ_s w_s · outputs) )

where ŷ are the model's predictions on the evaluation sample X (series, time,
features), ŷ_f,r its predictions with the features of target f perturbed with
repeat r's random draws (see :mod:`rnnimp.perturb`), and w_s = 1, or a
Poisson(1) bootstrap weight per series when repeats also resample the series.
Other metrics replace the squared change by the absolute change (``mae``) or
by the increase of the loss against labels (``loss-increase``), and drop the
square root.

Work is split into shards of whole batches. A shard returns, per batch, the
weighted sum of the metric's terms and the weighted count of values; the
effect adds those exactly (``math.fsum``), so it is bit-identical whatever the
shard size or the number of workers. The model always runs on batches of the
same fixed size (the last one padded), so each sample's prediction does not
depend on how the work was split either.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .conditional import conditional_permutation
from .errors import API_NAMES, InvalidParameterError, Names
from .inputs import InputLayout, real_steps
from .perturb import Perturbation, bootstrap_weights, perturb_inputs, permutation
from .seeding import noise_key, resample_key

METRICS = ("rms", "mae", "loss-increase")
LOSSES = ("mse", "binary-crossentropy")
_BCE_EPSILON = 1e-7  # Keras' clipping of probabilities in binary cross-entropy


@dataclass(frozen=True)
class Shard:
    """Samples ``start .. stop-1`` of the evaluation sample."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class Target:
    """What one result row perturbs: one feature, or a group of features jointly."""

    name: str
    features: tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """One unit of work: perturb ``features`` (at ``step`` or every step) on one shard.

    ``target`` indexes the result row; ``key`` is the Philox key of the noise
    or permutation and ``resample`` that of the bootstrap weights (or None),
    plain integers.
    """

    target: int
    features: tuple[int, ...]
    step: int | None
    repeat: int
    shard: Shard
    key: tuple[int, int]
    resample: tuple[int, int] | None = None


@dataclass(frozen=True)
class Metric:
    """How a change of the predictions becomes an effect."""

    name: str = "rms"
    loss: str | None = None

    def terms(self, perturbed: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None,
              baseline_loss: np.ndarray | None) -> np.ndarray:
        """Per-value terms (rows, outputs) float64 whose weighted mean is the effect (before finalize).

        ``baseline_loss``: :meth:`baseline_loss` of these baseline rows and labels (computed once for
        every unit of a batch).
        """
        if self.name == "rms":
            return np.square(perturbed - baseline)
        if self.name == "mae":
            return np.abs(perturbed - baseline)
        return self._loss(labels, perturbed) - baseline_loss

    def baseline_loss(self, baseline: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
        """The loss of the unperturbed predictions (rows, outputs) that ``loss-increase`` subtracts; None for the
        other metrics."""
        return self._loss(labels, baseline) if self.name == "loss-increase" else None

    def _loss(self, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        if self.loss == "mse":
            return np.square(labels - predictions)
        p = np.clip(predictions, _BCE_EPSILON, 1.0 - _BCE_EPSILON)
        return -(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p))

    def finalize(self, mean_term: float) -> float:
        return math.sqrt(mean_term) if self.name == "rms" else mean_term


@dataclass(frozen=True)
class Layout:
    """How the evaluation sample is cut into fixed-size batches and shards."""

    n_samples: int
    batch_size: int
    shard_size: int

    @classmethod
    def for_sample(cls, n_samples: int, batch_size: int, shard_size: int, names: Names = API_NAMES) -> "Layout":
        """Effective layout: batches never exceed the sample; shards hold whole batches.

        ``names``: how an error names ``batch_size`` and ``shard_size``.
        """
        if n_samples <= shard_size:
            return cls(n_samples, min(batch_size, n_samples), n_samples)
        if shard_size % batch_size != 0:
            raise InvalidParameterError(
                names("shard_size"), f"must be a multiple of {names('batch_size')} ({batch_size})", shard_size
            )
        return cls(n_samples, batch_size, shard_size)

    @property
    def shards(self) -> list[Shard]:
        return [
            Shard(index, start, min(start + self.shard_size, self.n_samples))
            for index, start in enumerate(range(0, self.n_samples, self.shard_size))
        ]


def plan_units(
    seed: int, targets: Sequence[Target], repeats: Iterable[int], shards: Sequence[Shard],
    steps: Sequence[int | None] = (None,), resample: bool = False,
    target_steps: Sequence[Sequence[int | None]] | None = None,
) -> list[Unit]:
    """All units for ``targets`` × ``steps`` × ``repeats`` × ``shards``, repeat-major.

    ``target_steps[i]``, if given, replaces ``steps`` for target i (a static
    feature has no steps in a time-step map; a short input fewer).
    """
    units = []
    for repeat in repeats:
        weights_key = resample_key(seed, repeat) if resample else None
        for index, target in enumerate(targets):
            for step in (steps if target_steps is None else target_steps[index]):
                key = noise_key(seed, index, repeat) if step is None else noise_key(seed, index, repeat, step)
                units.extend(Unit(index, target.features, step, repeat, shard, key, weights_key)
                             for shard in shards)
    return units


@dataclass
class _BatchSetUp:
    """What every unit of a :meth:`ShardEvaluator.unit_sums_many` call shares for one batch of the shard.

    ``baseline`` (rows, outputs) and ``labels`` (rows, outputs) or None are the
    batch's slices; ``segments`` (rows,) its segment ids or None; ``real`` the
    unperturbed batch's real steps per input (set on first use); ``valid``
    (rows, outputs) bool, the outputs present (set on first use with an output mask).
    """

    start: int
    stop: int
    baseline: np.ndarray
    labels: np.ndarray | None
    segments: np.ndarray | None
    real: list | None = None
    valid: np.ndarray | None = None
    baseline_losses: dict = field(default_factory=dict)  # metric index -> Metric.baseline_loss, on first use


class ShardEvaluator:
    """Runs a model on fixed-size batches of a sample, plain or perturbed.

    The sample is one array per model input (see :mod:`rnnimp.inputs`), or a
    single (series, time, features) array for a single-input model. Each
    input has its own fixed-size batch buffer. ``forward`` maps the buffers
    (the one buffer of a single-input model, else a list in input order) to
    predictions (batch_size, outputs), or, with ``output_mask``, to
    (predictions, weights): weights (batch_size, outputs) are 0 at outputs
    Keras masks (padded output steps) and 1 elsewhere.

    With ``output_mask``, baseline predictions are NaN at masked outputs and
    those outputs are left out of every metric (weight 0, as Keras' masked
    losses do).
    """

    def __init__(self, forward: Callable, batch_size: int, time_steps: int | None = None,
                 n_features: int | None = None, *, inputs: InputLayout | None = None,
                 output_mask: bool = False) -> None:
        self.forward = forward
        self.batch_size = batch_size
        self.inputs = inputs if inputs is not None else InputLayout.single(time_steps, n_features)
        self.output_mask = output_mask
        self._buffers = [np.zeros((batch_size, *shape), dtype=np.float32) for shape in self.inputs.shapes]
        self._holds: list[tuple | None] = [None] * self.inputs.n_inputs  # (array ref, start, stop) held unchanged
        self._permutation: tuple[tuple, np.ndarray] | None = None
        self._stratified: tuple | None = None  # (key, strata ids, donors) of the last conditional permutation

    def lane(self) -> "ShardEvaluator":
        """A new evaluator on the same compiled forward pass, with buffers of its own: one per thread that
        evaluates at the same time as others (the buffers and the kept permutation are per evaluator)."""
        return ShardEvaluator(self.forward, self.batch_size, inputs=self.inputs, output_mask=self.output_mask)

    def compile(self) -> None:
        """Trace and compile the forward pass now (on the zero buffers), not on the first unit."""
        self._forward()

    def _forward(self):
        return self.forward(self._buffers[0] if len(self._buffers) == 1 else list(self._buffers))

    def _batches(self, shard: Shard) -> Iterable[tuple[int, int]]:
        for start in range(shard.start, shard.stop, self.batch_size):
            yield start, min(start + self.batch_size, shard.stop)

    def _load(self, sample: Sequence[np.ndarray], start: int, stop: int) -> list[np.ndarray]:
        """Copy ``sample[k][start:stop]`` into each zero-padded buffer; return the filled rows.

        A buffer that still holds exactly these unperturbed rows is not copied again.
        """
        rows = stop - start
        views = []
        for index, (buffer, array) in enumerate(zip(self._buffers, sample)):
            held = self._holds[index]
            if held is None or held[0]() is not array or held[1:] != (start, stop):
                buffer[:rows] = array[start:stop]
                buffer[rows:] = 0.0
                self._holds[index] = (weakref.ref(array), start, stop)
            views.append(buffer[:rows])
        return views

    def _run(self, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Model outputs for the first ``rows`` rows of the buffers, (rows, outputs), and their weights."""
        outputs = self._forward()
        weights = None
        if self.output_mask:
            outputs, weights = outputs
            weights = np.asarray(weights).reshape(self.batch_size, -1)[:rows]
        return np.asarray(outputs).reshape(self.batch_size, -1)[:rows], weights

    def _sources(self, key: tuple[int, int], n_samples: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != (key, n_samples):
            self._permutation = ((key, n_samples), permutation(key, n_samples))
        return self._permutation[1]

    def predict(self, sample, shard: Shard) -> np.ndarray:
        """Predictions for ``sample[shard]``: float32 (shard rows, outputs); NaN at masked outputs."""
        sample = as_inputs(sample)
        pieces = []
        for start, stop in self._batches(shard):
            self._load(sample, start, stop)
            predictions, weights = self._run(stop - start)
            if weights is not None:
                predictions = np.where(weights > 0, predictions, np.float32(np.nan))
            pieces.append(predictions)
        return np.concatenate(pieces)

    def unit_sums(
        self, sample, baseline: np.ndarray, labels: np.ndarray | None, unit: Unit,
        perturbation: Perturbation, metric: Metric, *, measures: "Measures | None" = None,
    ) -> np.ndarray:
        """Per-batch weighted sums of the metric's terms and weighted counts of values.

        ``sample``: the whole evaluation sample (one array per input, or one
        (series, time, features) array), never modified; ``baseline``:
        unperturbed predictions of the unit's shard (shard rows, outputs), NaN
        at masked outputs; ``labels``: (series, outputs) or None. Returns
        float64 (batches in shard, 2): column 0 the sums, column 1 the counts.

        With ``measures`` (several metrics, per-output sums, segments or
        donor strata, see :class:`Measures`), returns float64 (batches in
        shard, columns, 2), one column per (metric, segment, output) in
        :meth:`Measures.columns` order, all from the same forward passes.
        """
        return self.unit_sums_many(sample, baseline, labels, (unit,), perturbation, metric, measures=measures)[0]

    def unit_sums_many(
        self, sample, baseline: np.ndarray, labels: np.ndarray | None, units: Sequence[Unit],
        perturbation: Perturbation, metric: Metric, *, measures: "Measures | None" = None,
    ) -> np.ndarray:
        """:meth:`unit_sums` of several units of one shard, stacked: float64 (units, batches in shard, 2),
        or (units, batches in shard, columns, 2) with ``measures``.

        Each unit's sums are exactly those :meth:`unit_sums` gives for it
        alone (the same forward passes on the same fixed-size batches); what
        the units share is set up once: the batches' unperturbed real steps,
        baseline slices, valid outputs, labels and segments.
        """
        if not units:
            raise ValueError("unit_sums_many needs at least one unit")
        shard = units[0].shard
        if any(unit.shard != shard for unit in units):
            raise ValueError("the units of one unit_sums_many call must share a shard")
        sample = as_inputs(sample)
        layout = self.inputs
        plain = measures is None
        measures = Measures((metric,)) if measures is None else measures
        batches = [_BatchSetUp(start, stop, baseline[start - shard.start:stop - shard.start],
                               None if labels is None else labels[start:stop],
                               None if measures.segment_ids is None else measures.segment_ids[start:stop])
                   for start, stop in self._batches(shard)]
        weights_of: dict[tuple[tuple[int, int], int], np.ndarray] = {}  # (resample key, start) -> weights
        sums = None
        for number, unit in enumerate(units):
            sources = None
            if perturbation.kind == "permute":
                sources = (self._sources(unit.key, len(sample[0])) if measures.donor_strata is None
                           else self._stratified_sources(unit.key, measures.donor_strata[unit.target]))
            for index, batch in enumerate(batches):
                start, stop = batch.start, batch.stop
                views = self._load(sample, start, stop)
                if batch.real is None:  # the unperturbed rows' real steps, the same for every unit
                    batch.real = [real_steps(view, mask_value) if layout.is_sequence(k) else None
                                  for k, (view, mask_value) in enumerate(zip(views, layout.mask_values))]
                changed = perturb_inputs(views, sample, start, unit.features, unit.step, perturbation, unit.key,
                                         layout, batch.real, sources)
                for k in changed:
                    self._holds[k] = None
                perturbed = self._run(stop - start)[0].astype(np.float64)
                if sums is None:
                    sums = np.empty((len(units), len(batches), measures.n_columns(perturbed.shape[1]), 2))
                if self.output_mask and batch.valid is None:
                    batch.valid = ~np.isnan(batch.baseline)
                weights = None
                if unit.resample is not None:
                    weights = weights_of.get((unit.resample, start))
                    if weights is None:
                        weights = weights_of[unit.resample, start] = bootstrap_weights(unit.resample, start,
                                                                                        stop - start)
                column = 0
                for metric_index, measure in enumerate(measures.metrics):
                    if metric_index not in batch.baseline_losses:
                        batch.baseline_losses[metric_index] = measure.baseline_loss(batch.baseline, batch.labels)
                    terms = measure.terms(perturbed, batch.baseline, batch.labels,
                                          batch.baseline_losses[metric_index])
                    if batch.valid is not None:
                        terms = np.where(batch.valid, terms, 0.0)
                    for segment in range(measures.n_segments):
                        chosen = None if batch.segments is None else batch.segments == segment
                        column = _batch_sums(sums[number, index], column, terms, batch.valid, weights, chosen,
                                             measures.per_output)
        return sums[:, :, 0, :] if plain else sums

    def _stratified_sources(self, key: tuple[int, int], strata_ids: np.ndarray) -> np.ndarray:
        held = self._stratified
        if held is None or held[0] != key or held[1] is not strata_ids:
            held = self._stratified = (key, strata_ids, conditional_permutation(key, strata_ids))
        return held[2]


@dataclass(frozen=True)
class Measures:
    """What a unit's forward passes are summed into, beyond one metric pooled over everything.

    ``metrics``: every metric asked for (one set of forward passes serves
    all); ``per_output``: also one column per output value; ``segment_ids``:
    int64 (series,), the segment of each series (0 .. n_segments-1) or None;
    ``donor_strata``: int64 (series,) or None: a permutation exchanges
    trajectories only between series of one stratum (conditional
    permutation, and permutation within segments).

    Columns, in order: for each metric, for each segment, the pooled sum
    over all outputs, then (``per_output``) one per output value.
    """

    metrics: tuple[Metric, ...]
    per_output: bool = False
    segment_ids: np.ndarray | None = field(default=None, compare=False)
    n_segments: int = 1
    donor_strata: tuple[np.ndarray, ...] | None = field(default=None, compare=False)

    def outputs_per_segment(self, n_outputs: int) -> int:
        return 1 + n_outputs if self.per_output else 1

    def n_columns(self, n_outputs: int) -> int:
        return len(self.metrics) * self.n_segments * self.outputs_per_segment(n_outputs)

    def columns(self, n_outputs: int) -> list[tuple[int, int, int]]:
        """(metric index, segment, output) of each column; output -1: all outputs pooled."""
        outputs = [-1, *range(n_outputs)] if self.per_output else [-1]
        return [(m, g, o) for m in range(len(self.metrics)) for g in range(self.n_segments) for o in outputs]


def _batch_sums(row: np.ndarray, column: int, terms: np.ndarray, valid: np.ndarray | None,
                weights: np.ndarray | None, chosen: np.ndarray | None, per_output: bool) -> int:
    """Fill ``row[column:]`` (columns, 2) with one batch's sums and counts; return the next column.

    ``terms`` (rows, outputs); ``valid`` (rows, outputs) bool or None (all
    valid); ``weights`` (rows,) bootstrap weights or None; ``chosen`` (rows,)
    bool, the rows of one segment, or None (all rows). The pooled column sums
    each row over the outputs first, then the rows exactly (``math.fsum``),
    as a run without these extras does, so its results are bit-identical.
    """
    if chosen is not None:
        terms = terms[chosen]
        valid = None if valid is None else valid[chosen]
        weights = None if weights is None else weights[chosen]
    counts = None if valid is None else valid.sum(axis=1).astype(np.float64)
    # math.fsum is exact whatever the order and type of its values: fed Python floats (tolist), it is faster
    if weights is None:
        row[column] = math.fsum(terms.sum(axis=1).tolist()), terms.size if counts is None else counts.sum()
    else:
        row[column] = (math.fsum((terms * weights[:, None]).sum(axis=1).tolist()),
                       weights.sum() * terms.shape[1] if counts is None else (weights * counts).sum())
    column += 1
    if per_output:
        for output in range(terms.shape[1]):
            values = terms[:, output]
            present = np.ones(len(values)) if valid is None else valid[:, output].astype(np.float64)
            if weights is None:
                row[column] = math.fsum(values.tolist()), present.sum()
            else:
                row[column] = math.fsum((values * weights).tolist()), (weights * present).sum()
            column += 1
    return column


def as_inputs(sample) -> Sequence[np.ndarray]:
    """The sample as one array per model input (a tuple or list); anything else (an array,
    a :class:`rnnimp.dataset.SampleView`) is the single input's."""
    return sample if isinstance(sample, (tuple, list)) else (sample,)


def effect(batch_sums: Iterable[np.ndarray], metric: Metric) -> float:
    """The effect of one (target, step, repeat) from the per-batch sums of its shards."""
    stacked = np.concatenate(list(batch_sums))
    count = math.fsum(stacked[:, 1].tolist())
    if count == 0:  # e.g. a bootstrap draw that weights every series of a segment 0
        return math.nan
    return metric.finalize(math.fsum(stacked[:, 0].tolist()) / count)
