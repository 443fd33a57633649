"""The method: perturb one feature, run the model, measure the RMS change.

For a unit (feature f, repeat r) the effect is

    effect[f, r] = sqrt( mean over samples s, outputs o of (ŷ_f,r[s, o] − ŷ[s, o])² )

where ŷ are the model's predictions on the evaluation sample X (series, time,
features) and ŷ_f,r its predictions with ``noise_scale * N(0, 1)`` noise added
to feature f at every time step, drawn from the counter-based stream of
(seed, f, r) (see :mod:`rnnimp.perturb`).

Work is split into shards of whole batches. A shard returns one float64 sum of
squared changes per batch; the effect adds those sums exactly (``math.fsum``),
so it is bit-identical whatever the shard size or the number of workers. The
model always runs on batches of the same fixed size (the last one padded), so
each sample's prediction does not depend on how the work was split either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import InvalidParameterError
from .perturb import add_noise_inplace, sample_noise
from .seeding import noise_key


@dataclass(frozen=True)
class Shard:
    """Samples ``start .. stop-1`` of the evaluation sample."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class Unit:
    """One unit of work: perturb ``features`` with repeat ``repeat``'s noise on one shard.

    ``target`` indexes the row of the result (a feature, or later a group);
    ``key`` is the Philox key of the noise, plain integers.
    """

    target: int
    features: tuple[int, ...]
    repeat: int
    shard: Shard
    key: tuple[int, int]


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

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)


def plan_units(
    seed: int, targets: Sequence[tuple[int, ...]], n_repeats: int, shards: Sequence[Shard],
    first_repeat: int = 0,
) -> list[Unit]:
    """All units for ``targets`` (tuples of feature indices) × repeats × shards."""
    return [
        Unit(target, features, repeat, shard, noise_key(seed, target, repeat))
        for repeat in range(first_repeat, first_repeat + n_repeats)
        for target, features in enumerate(targets)
        for shard in shards
    ]


class ShardEvaluator:
    """Runs a model on fixed-size batches of a sample, plain or perturbed.

    ``forward`` maps a float32 batch (batch_size, time, features) to
    predictions of any shape with leading dimension batch_size.
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], batch_size: int,
                 time_steps: int, n_features: int) -> None:
        self.forward = forward
        self.batch_size = batch_size
        self._buffer = np.zeros((batch_size, time_steps, n_features), dtype=np.float32)

    def _batches(self, shard: Shard) -> Iterable[tuple[int, int]]:
        for start in range(shard.start, shard.stop, self.batch_size):
            yield start, min(start + self.batch_size, shard.stop)

    def _run(self, rows: int) -> np.ndarray:
        """Model outputs for the first ``rows`` rows of the buffer, as (rows, outputs)."""
        outputs = np.asarray(self.forward(self._buffer))
        return outputs.reshape(self.batch_size, -1)[:rows]

    def predict(self, sample: np.ndarray, shard: Shard) -> np.ndarray:
        """Predictions for ``sample[shard]``: float32 (shard rows, outputs)."""
        pieces = []
        for start, stop in self._batches(shard):
            rows = stop - start
            self._buffer[:rows] = sample[start:stop]
            self._buffer[rows:] = 0.0
            pieces.append(self._run(rows))
        return np.concatenate(pieces)

    def squared_change_sums(
        self, sample: np.ndarray, baseline: np.ndarray, unit: Unit, noise_scale: float
    ) -> np.ndarray:
        """Per-batch sums of (ŷ_perturbed − ŷ)² over the unit's shard.

        ``sample``: the whole evaluation sample (series, time, features), never
        modified; ``baseline``: predictions of the shard (shard rows, outputs).
        Returns float64 of shape (batches in shard,).
        """
        time_steps = sample.shape[1]
        sums = []
        for start, stop in self._batches(unit.shard):
            rows = stop - start
            self._buffer[:rows] = sample[start:stop]
            self._buffer[rows:] = 0.0
            noise = sample_noise(unit.key, start, rows, time_steps, len(unit.features))
            add_noise_inplace(self._buffer[:rows], unit.features, noise, noise_scale)
            change = self._run(rows).astype(np.float64) - baseline[start - unit.shard.start:stop - unit.shard.start]
            sums.append(float(np.einsum("ij,ij->", change, change)))
        return np.asarray(sums, dtype=np.float64)


def rms_effect(batch_sums: Iterable[np.ndarray], n_values: int) -> float:
    """RMS change from per-batch squared sums: sqrt(exact sum / n_values)."""
    return math.sqrt(math.fsum(np.concatenate(list(batch_sums))) / n_values)


def keras_forward(model, jit_compile: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``model(x, training=False)`` wrapped in one ``tf.function``, returning numpy."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True)
    return lambda batch: call(batch).numpy()
