"""Throughput measurements for jobs.benchmark; pure TensorFlow, no Ray (not part of the library).

Throughput is counted in sample-steps per second: series × time steps
evaluated by the model per second.
"""

from __future__ import annotations

import time

import numpy as np


def plainly_compiled(model):
    """A copy of ``model`` (same weights) compiled as a plain user would: Keras' defaults.

    The plain loop must not inherit the fast training's settings: with
    ``jit_compile=True`` and ``steps_per_execution=100``, ``predict`` runs
    100 batches of 32 per XLA call and is several times faster than the
    plain loop it stands for.
    """
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(optimizer="adam", loss="binary_crossentropy")
    return copy


def plain_loop_seconds_per_pass(model, sample: np.ndarray, noise_scale: float, passes: int,
                                rng: np.random.Generator) -> float:
    """Seconds per pass of the naive method: copy, perturb, ``model.predict`` (batch 32).

    ``model`` as a plain user holds it (see :func:`plainly_compiled`).

    Each pass perturbs one feature (cycling) of the whole ``sample`` (series,
    time, features) and computes the RMS change against a baseline computed
    the same way; the baseline is not timed.
    """
    baseline = model.predict(sample, verbose=0)
    started = time.perf_counter()
    for index in range(passes):
        perturbed = sample.copy()
        feature = index % sample.shape[2]
        perturbed[:, :, feature] += rng.normal(0.0, noise_scale, sample.shape[:2]).astype(sample.dtype)
        predictions = model.predict(perturbed, verbose=0)
        float(np.sqrt(np.mean((predictions - baseline) ** 2)))
    return (time.perf_counter() - started) / passes


def forward_seconds_per_pass(model, sample: np.ndarray, batch_size: int, fused: bool, passes: int = 1) -> float:
    """Seconds per pass of a compiled forward over the whole sample in fixed batches.

    The machine's forward-pass limit for this model: no perturbation, no
    reduction, nothing but the compiled model on batches of ``batch_size``
    (the last one padded, as rnnimp's workers do). ``fused``: the forward
    rnnimp's workers run (:func:`rnnimp.forward.model_forward`); otherwise
    ``model(x, training=False)`` in a ``tf.function`` under XLA. Compilation
    is not timed.
    """
    from rnnimp.forward import keras_forward, model_forward
    from rnnimp.method import Layout, ShardEvaluator

    n_samples, time_steps, n_features = sample.shape
    layout = Layout.for_sample(n_samples, batch_size, n_samples)
    forward = model_forward(model, jit_compile=True) if fused else keras_forward(model, jit_compile=True)
    evaluator = ShardEvaluator(forward, layout.batch_size, time_steps, n_features)
    evaluator.compile()
    started = time.perf_counter()
    for _ in range(passes):
        evaluator.predict(sample, layout.shards[0])
    return (time.perf_counter() - started) / passes
