"""What a worker process does with a unit of work; knows nothing of Ray.

Each process keeps one compiled evaluator per model fingerprint, so the
model is built and traced once per process and reused by every unit.
"""

from __future__ import annotations

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


_EVALUATORS: dict[tuple[str, int, bool], ShardEvaluator] = {}


def evaluator_for(model: ModelSpec, layout: Layout, sample_shape: tuple[int, ...],
                  jit_compile: bool) -> ShardEvaluator:
    """This process's evaluator for ``model`` at the layout's batch size (built once)."""
    cache_key = (model.fingerprint, layout.batch_size, jit_compile)
    if cache_key not in _EVALUATORS:
        forward = keras_forward(model.build(), jit_compile=jit_compile)
        _EVALUATORS[cache_key] = ShardEvaluator(forward, layout.batch_size, *sample_shape[1:])
    return _EVALUATORS[cache_key]


def predict_shard(model: ModelSpec, sample: np.ndarray, layout: Layout, shard: Shard,
                  jit_compile: bool) -> np.ndarray:
    """Unperturbed predictions of one shard: float32 (shard rows, outputs)."""
    return evaluator_for(model, layout, sample.shape, jit_compile).predict(sample, shard)


def unit_sums(model: ModelSpec, sample: np.ndarray, baseline: np.ndarray, layout: Layout,
              unit: Unit, noise_scale: float, jit_compile: bool) -> np.ndarray:
    """Per-batch sums of squared prediction changes of one unit: float64 (batches,)."""
    evaluator = evaluator_for(model, layout, sample.shape, jit_compile)
    return evaluator.squared_change_sums(sample, baseline, unit, noise_scale)


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
