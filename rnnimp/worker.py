"""What a worker process does with a unit of work; knows nothing of Ray.

Each process keeps one compiled evaluator per (architecture, batch shape):
the model is built and its ``tf.function`` traced and compiled once, and a
new set of weights is only assigned to the existing variables. A worker can
therefore be warmed up with the architecture alone, before the weights exist
(while the driver is still training).
"""

from __future__ import annotations

import hashlib
import resource
from dataclasses import dataclass

import numpy as np

from .method import Layout, Shard, ShardEvaluator, Unit, keras_forward
from .modelio import ModelSpec


@dataclass(frozen=True)
class EvaluationJob:
    """Everything a unit needs besides its own fields.

    ``sample``: the evaluation sample (series, time, features) float32.
    """

    model: ModelSpec
    sample: np.ndarray
    layout: Layout
    noise_scale: float
    jit_compile: bool = True


@dataclass
class _CachedEvaluator:
    model: object
    evaluator: ShardEvaluator
    fingerprint: str | None


_EVALUATORS: dict[tuple, _CachedEvaluator] = {}


def _cached(architecture_json: str, batch_size: int, time_steps: int, n_features: int,
            jit_compile: bool) -> _CachedEvaluator:
    """This process's evaluator for an architecture and batch shape, built and compiled once."""
    key = (hashlib.sha256(architecture_json.encode()).hexdigest(), batch_size, time_steps, n_features, jit_compile)
    if key not in _EVALUATORS:
        import keras

        model = keras.models.model_from_json(architecture_json)
        evaluator = ShardEvaluator(keras_forward(model, jit_compile), batch_size, time_steps, n_features)
        evaluator.forward(evaluator._buffer)  # trace and compile now
        _EVALUATORS[key] = _CachedEvaluator(model, evaluator, None)
    return _EVALUATORS[key]


def warm_up(architecture_json: str, batch_size: int, time_steps: int, n_features: int,
            jit_compile: bool) -> None:
    """Build and compile the forward pass for an architecture before its weights are known."""
    _cached(architecture_json, batch_size, time_steps, n_features, jit_compile)


def evaluator_for(model: ModelSpec, layout: Layout, sample_shape: tuple[int, ...],
                  jit_compile: bool) -> ShardEvaluator:
    """This process's evaluator for ``model`` at the layout's batch size, holding its weights."""
    cached = _cached(model.architecture_json, layout.batch_size, sample_shape[1], sample_shape[2], jit_compile)
    if cached.fingerprint != model.fingerprint:
        cached.model.set_weights(list(model.weights))
        cached.fingerprint = model.fingerprint
    return cached.evaluator


def predict_shard(model: ModelSpec, sample: np.ndarray, layout: Layout, shard: Shard,
                  jit_compile: bool) -> np.ndarray:
    """Unperturbed predictions of one shard: float32 (shard rows, outputs)."""
    return evaluator_for(model, layout, sample.shape, jit_compile).predict(sample, shard)


def unit_sums(model: ModelSpec, sample: np.ndarray, baseline: np.ndarray, layout: Layout,
              unit: Unit, noise_scale: float, jit_compile: bool) -> np.ndarray:
    """Per-batch sums of squared prediction changes of one unit: float64 (batches,)."""
    evaluator = evaluator_for(model, layout, sample.shape, jit_compile)
    return evaluator.squared_change_sums(sample, baseline, unit, noise_scale)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LocalExecutor:
    """Runs every unit in this process, one after the other."""

    name = "local"

    def evaluate(self, job: EvaluationJob, units: list[Unit]):
        """Yield ``(unit, per-batch sums)`` for each unit, in plan order."""
        baselines = {
            shard.index: predict_shard(job.model, job.sample, job.layout, shard, job.jit_compile)
            for shard in job.layout.shards
        }
        for unit in units:
            yield unit, unit_sums(job.model, job.sample, baselines[unit.shard.index], job.layout,
                                  unit, job.noise_scale, job.jit_compile)
