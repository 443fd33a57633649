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
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import InvalidParameterError
from .perturb import Perturbation, bootstrap_weights, perturb_batch, permutation
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

    def terms(self, perturbed: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """Per-value terms (rows, outputs) float64 whose weighted mean is the effect (before finalize)."""
        if self.name == "rms":
            return np.square(perturbed - baseline)
        if self.name == "mae":
            return np.abs(perturbed - baseline)
        return self._loss(labels, perturbed) - self._loss(labels, baseline)

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
    def for_sample(cls, n_samples: int, batch_size: int, shard_size: int) -> "Layout":
        """Effective layout: batches never exceed the sample; shards hold whole batches."""
        if n_samples <= shard_size:
            return cls(n_samples, min(batch_size, n_samples), n_samples)
        if shard_size % batch_size != 0:
            raise InvalidParameterError(
                "shard_size", f"must be a multiple of batch_size ({batch_size})", shard_size
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
) -> list[Unit]:
    """All units for ``targets`` × ``steps`` × ``repeats`` × ``shards``, repeat-major."""
    units = []
    for repeat in repeats:
        weights_key = resample_key(seed, repeat) if resample else None
        for index, target in enumerate(targets):
            for step in steps:
                key = noise_key(seed, index, repeat) if step is None else noise_key(seed, index, repeat, step)
                units.extend(Unit(index, target.features, step, repeat, shard, key, weights_key)
                             for shard in shards)
    return units


class ShardEvaluator:
    """Runs a model on fixed-size batches of a sample, plain or perturbed.

    ``forward`` maps a float32 batch (batch_size, time, features) to
    predictions (batch_size, outputs).
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 time_steps: int, n_features: int) -> None:
        self.forward = forward
        self.batch_size = batch_size
        self._buffer = np.zeros((batch_size, time_steps, n_features), dtype=np.float32)
        self._permutation: tuple[tuple, np.ndarray] | None = None

    def compile(self) -> None:
        """Trace and compile the forward pass now (on the zero buffer), not on the first unit."""
        self.forward(self._buffer)

    def _batches(self, shard: Shard) -> Iterable[tuple[int, int]]:
        for start in range(shard.start, shard.stop, self.batch_size):
            yield start, min(start + self.batch_size, shard.stop)

    def _load(self, sample: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copy ``sample[start:stop]`` into the zero-padded batch buffer; return its filled rows."""
        rows = stop - start
        self._buffer[:rows] = sample[start:stop]
        self._buffer[rows:] = 0.0
        return self._buffer[:rows]

    def _run(self, rows: int) -> np.ndarray:
        """Model outputs for the first ``rows`` rows of the buffer, as (rows, outputs)."""
        outputs = np.asarray(self.forward(self._buffer))
        return outputs.reshape(self.batch_size, -1)[:rows]

    def _sources(self, key: tuple[int, int], n_samples: int) -> np.ndarray:
        if self._permutation is None or self._permutation[0] != (key, n_samples):
            self._permutation = ((key, n_samples), permutation(key, n_samples))
        return self._permutation[1]

    def predict(self, sample: np.ndarray, shard: Shard) -> np.ndarray:
        """Predictions for ``sample[shard]``: float32 (shard rows, outputs)."""
        pieces = []
        for start, stop in self._batches(shard):
            self._load(sample, start, stop)
            pieces.append(self._run(stop - start))
        return np.concatenate(pieces)

    def unit_sums(
        self, sample: np.ndarray, baseline: np.ndarray, labels: np.ndarray | None, unit: Unit,
        perturbation: Perturbation, metric: Metric,
    ) -> np.ndarray:
        """Per-batch weighted sums of the metric's terms and weighted counts of values.

        ``sample``: the whole evaluation sample (series, time, features), never
        modified; ``baseline``: unperturbed predictions of the unit's shard
        (shard rows, outputs); ``labels``: (series, outputs) or None. Returns float64
        (batches in shard, 2): column 0 the sums, column 1 the counts.
        """
        sources = self._sources(unit.key, len(sample)) if perturbation.kind == "permute" else None
        sums = np.empty((math.ceil((unit.shard.stop - unit.shard.start) / self.batch_size), 2))
        for index, (start, stop) in enumerate(self._batches(unit.shard)):
            batch = self._load(sample, start, stop)
            perturb_batch(batch, sample, start, unit.features, unit.step, perturbation, unit.key, sources)
            perturbed = self._run(stop - start).astype(np.float64)
            offset = start - unit.shard.start
            terms = metric.terms(perturbed, baseline[offset:offset + stop - start],
                                 None if labels is None else labels[start:stop])
            if unit.resample is None:
                sums[index] = math.fsum(terms.sum(axis=1)), terms.size
            else:
                weights = bootstrap_weights(unit.resample, start, stop - start)
                sums[index] = math.fsum((terms * weights[:, None]).sum(axis=1)), weights.sum() * terms.shape[1]
        return sums


def effect(batch_sums: Iterable[np.ndarray], metric: Metric) -> float:
    """The effect of one (target, step, repeat) from the per-batch sums of its shards."""
    stacked = np.concatenate(list(batch_sums))
    return metric.finalize(math.fsum(stacked[:, 0]) / math.fsum(stacked[:, 1]))


def keras_forward(model, jit_compile: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``model(x, training=False)`` in one ``tf.function``: (batch, outputs) numpy.

    Models with several outputs have them flattened and concatenated.
    """
    import tensorflow as tf

    def call(batch):
        outputs = tf.nest.flatten(model(batch, training=False))
        rows = tf.shape(batch)[0]
        return tf.concat([tf.reshape(tf.cast(o, tf.float32), [rows, -1]) for o in outputs], axis=1)

    compiled = tf.function(call, jit_compile=jit_compile, reduce_retracing=True)
    return lambda batch: compiled(batch).numpy()


def forward_kind(model, jit_compile: bool) -> str:
    """Which forward pass :func:`model_forward` uses for ``model``: keras-xla, keras or a fused one.

    The fused ones are named by :func:`rnnimp.lstm.fused_kind` (fused-lstm, fused-rnn, fused-rnn-masked).
    """
    from .lstm import fused_kind

    kind = fused_kind(model) if jit_compile else None
    return kind or ("keras-xla" if jit_compile else "keras")


def model_forward(model, jit_compile: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """The fastest faithful forward pass: (batch, time, features) float32 -> (batch, outputs).

    With ``jit_compile``, chains of recurrent layers run as rnnimp's fused XLA
    program (:mod:`rnnimp.lstm`), other models as ``model(x)`` under XLA;
    without it, always ``model(x)`` in a plain ``tf.function``.
    """
    from .lstm import fused_forward

    if forward_kind(model, jit_compile).startswith("fused"):
        return fused_forward(model)
    return keras_forward(model, jit_compile)
