"""Throughput measurements for jobs.benchmark; pure TensorFlow, no Ray (not part of the library).

Throughput is counted in sample-steps per second: series × time steps
evaluated by the model per second.
"""

from __future__ import annotations

import time
from typing import Callable

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
    evaluator, whole = _compiled_evaluator(model, sample, batch_size, fused)
    started = time.perf_counter()
    for _ in range(passes):
        evaluator.predict(sample, whole)
    return (time.perf_counter() - started) / passes


def _compiled_evaluator(model, sample: np.ndarray, batch_size: int, fused: bool):
    """(a compiled :class:`rnnimp.method.ShardEvaluator` of ``model`` at ``batch_size``, the shard of the whole
    ``sample``); ``fused``: rnnimp's forward pass, else ``model(x)`` under XLA."""
    from rnnimp.forward import keras_forward, model_forward
    from rnnimp.method import Layout, ShardEvaluator

    n_samples, time_steps, n_features = sample.shape
    layout = Layout.for_sample(n_samples, batch_size, n_samples)
    forward = model_forward(model, jit_compile=True) if fused else keras_forward(model, jit_compile=True)
    evaluator = ShardEvaluator(forward, layout.batch_size, time_steps, n_features)
    evaluator.compile()
    return evaluator, layout.shards[0]


def forward_steps_per_s(model, sample: np.ndarray, batch_size: int, window_s: float,
                        start: Callable[[], None] = lambda: None) -> float:
    """Sample-steps per second of the forward rnnimp's workers run, in whole passes over ``sample`` for ``window_s``.

    As :func:`forward_seconds_per_pass` with ``fused=True`` (fixed batches,
    nothing but the compiled forward); compiles and makes one untimed pass,
    then calls ``start()`` (e.g. waits for a signal, so that several
    processes time the same moment) and repeats passes until ``window_s``
    have gone by.
    """
    evaluator, whole = _compiled_evaluator(model, sample, batch_size, fused=True)
    evaluator.predict(sample, whole)
    start()
    started, passes = time.perf_counter(), 0
    while passes == 0 or time.perf_counter() - started < window_s:
        evaluator.predict(sample, whole)
        passes += 1
    return passes * sample.shape[0] * sample.shape[1] / (time.perf_counter() - started)


PLAIN_TF_BATCH_SIZES = (4096, 16384)  # and the whole sample


def tf_function_seconds_per_pass(model, sample: np.ndarray, batch_size: int, jit_compile: bool,
                                 passes: int = 2) -> float:
    """Best seconds per pass of plain TensorFlow: ``tf.function`` around ``model(x)``.

    The route a TensorFlow user would take: ``model(x, training=False)`` in a
    ``tf.function`` (with or without XLA) called on consecutive slices of
    ``batch_size`` series of ``sample`` (series, time, features); the last
    slice is shorter, not padded. One untimed pass compiles every shape, then
    the best of ``passes`` timed passes.
    """
    import tensorflow as tf

    call = tf.function(lambda batch: model(batch, training=False), jit_compile=jit_compile)
    slices = [sample[start:start + batch_size] for start in range(0, len(sample), batch_size)]

    def one_pass() -> float:
        started = time.perf_counter()
        for batch in slices:
            call(batch).numpy()
        return time.perf_counter() - started

    one_pass()
    return min(one_pass() for _ in range(passes))


def best_plain_tf_seconds_per_pass(model, sample: np.ndarray) -> dict:
    """Plain TensorFlow at batch sizes 4096, 16384 and the whole sample, without and with XLA.

    Returns {"<batch>_xla" or "<batch>_graph": seconds per pass, ...} where <batch> is the batch size or
    "whole". A batch size above the sample's size is the whole sample: those are timed once and share the
    figure.
    """
    seconds, timed = {}, {}
    for batch_size in (*PLAIN_TF_BATCH_SIZES, len(sample)):
        label = "whole" if batch_size == len(sample) else str(batch_size)
        for jit_compile in (False, True):
            key = (min(batch_size, len(sample)), jit_compile)
            if key not in timed:
                timed[key] = tf_function_seconds_per_pass(model, sample, key[0], jit_compile)
            seconds[f"{label}_{'xla' if jit_compile else 'graph'}"] = timed[key]
    return seconds


# --- per-model-kind forward speed-ups -------------------------------------------------------------

KIND_TIME_STEPS, KIND_FEATURES, KIND_STATIC = 10, 3, 2
KIND_NAMES = ("LSTM Sequential", "GRU", "SimpleRNN", "Bidirectional LSTM", "functional chain", "masked LSTM",
              "two inputs + static")  # the keys of kind_models, in its order


def kind_models(seed: int) -> dict:
    """Small models of each kind, random weights from ``seed``: name -> (model, takes_two_inputs).

    Every model takes (batch, 10, 3); the two-input one also a static
    covariate (batch, 2). Masked: a ``Masking(0.0)`` layer ahead of an LSTM.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    steps = keras.Input((KIND_TIME_STEPS, KIND_FEATURES), name="series")
    functional_hidden = layers.LSTM(16, return_sequences=True, name="f_lstm_16")(steps)
    functional_out = layers.Dense(1, name="f_dense")(layers.LSTM(8, name="f_lstm_8")(functional_hidden))
    sequence = keras.Input((KIND_TIME_STEPS, KIND_FEATURES), name="sequence")
    static = keras.Input((KIND_STATIC,), name="static")
    merged = layers.Concatenate(name="join")([layers.LSTM(16, name="t_lstm")(sequence), static])

    def sequential(*stack):
        return keras.Sequential([keras.Input((KIND_TIME_STEPS, KIND_FEATURES)), *stack])

    return {
        "LSTM Sequential": (sequential(layers.LSTM(16, return_sequences=True), layers.LSTM(8),
                                       layers.Dense(1)), False),
        "GRU": (sequential(layers.GRU(16, return_sequences=True), layers.GRU(8), layers.Dense(1)), False),
        "SimpleRNN": (sequential(layers.SimpleRNN(16, return_sequences=True), layers.SimpleRNN(8),
                                 layers.Dense(1)), False),
        "Bidirectional LSTM": (sequential(layers.Bidirectional(layers.LSTM(8, return_sequences=True)),
                                          layers.LSTM(8), layers.Dense(1)), False),
        "functional chain": (keras.Model(steps, functional_out, name="chain"), False),
        "masked LSTM": (sequential(layers.Masking(0.0), layers.LSTM(16, return_sequences=True), layers.LSTM(8),
                                   layers.Dense(1)), False),
        "two inputs + static": (keras.Model([sequence, static], layers.Dense(1, name="t_dense")(merged),
                                            name="two_inputs"), True),
    }


def kind_inputs(seed: int, n_series: int, two_inputs: bool) -> list[np.ndarray]:
    """Inputs of :func:`kind_models`: [(series, 10, 3)] or [(series, 10, 3), (series, 2)], float32.

    A quarter of the series end in zero (masked) steps, so a masked model has
    something to mask.
    """
    rng = np.random.default_rng(seed)
    series = rng.random((n_series, KIND_TIME_STEPS, KIND_FEATURES), dtype=np.float32) + 0.1
    lengths = rng.integers(KIND_TIME_STEPS // 2, KIND_TIME_STEPS + 1, n_series)
    series[np.arange(KIND_TIME_STEPS)[None, :] >= lengths[:, None]] = 0.0
    return [series, rng.random((n_series, KIND_STATIC), dtype=np.float32)] if two_inputs else [series]


def _batches(inputs: list[np.ndarray], batch_size: int) -> list:
    """Consecutive batches of ``batch_size`` series: each one array, or a list of arrays with several inputs."""
    n_series = len(inputs[0])
    batches = [[array[start:start + batch_size] for array in inputs] for start in range(0, n_series, batch_size)]
    return [batch if len(inputs) > 1 else batch[0] for batch in batches]


def _predictions(outputs) -> np.ndarray:
    """The predictions of a forward pass; a forward that also returns output weights gives (predictions, weights)."""
    return np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)


def interleaved_seconds(forwards: list, batches: list, rounds: int = 5) -> tuple[list[float], list[np.ndarray]]:
    """Best seconds per pass over ``batches`` of each forward, and its predictions (series, outputs).

    One untimed pass each compiles; then ``rounds`` rounds time one pass of
    each forward in turn, so that a slow moment of a shared machine does not
    fall on one of them only.
    """
    predictions = [np.concatenate([_predictions(forward(batch)) for batch in batches]) for forward in forwards]
    best = [float("inf")] * len(forwards)
    for _ in range(rounds):
        for index, forward in enumerate(forwards):
            started = time.perf_counter()
            for batch in batches:
                _predictions(forward(batch))
            best[index] = min(best[index], time.perf_counter() - started)
    return best, predictions


def xla_model_call(model):
    """``model(x, training=False)`` in a ``tf.function`` under XLA: batch (one array or a list) -> (batch, outputs).

    The reference for the speed-ups; unlike :func:`rnnimp.forward.keras_forward` on main, it takes a list of
    arrays for a model with several inputs.
    """
    import tensorflow as tf

    compiled = tf.function(lambda batch: model(batch, training=False), jit_compile=True)
    return lambda batch: np.asarray(compiled(batch)).reshape(len(tf.nest.flatten(batch)[0]), -1)


def forward_speedup(model, inputs: list[np.ndarray], batch_size: int) -> dict:
    """``model(x)`` under XLA (:func:`xla_model_call`) vs rnnimp's forward pass for ``model``, this process's threads.

    Returns {"forward": forward_kind, "keras_xla_s", "rnnimp_s", "speedup" (keras / rnnimp),
    "max_abs_diff" of the outputs}; rnnimp's figures are None, with "error", where
    :func:`rnnimp.forward.model_forward` does not accept the model or its inputs.
    """
    from rnnimp.forward import forward_kind, model_forward

    batches = _batches(inputs, batch_size)
    reference = xla_model_call(model)
    figures = {"forward": forward_kind(model, jit_compile=True), "keras_xla_s": None,
               "rnnimp_s": None, "speedup": None, "max_abs_diff": None}
    try:
        forward = model_forward(model, jit_compile=True)
        _predictions(forward(batches[0]))
    except Exception as error:  # noqa: BLE001 - a model kind rnnimp does not take yet is a result, not a failure
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        figures["error"] = f"{type(error).__name__}: {lines[-1][:200] if lines else ''}"
        (figures["keras_xla_s"],), _ = interleaved_seconds([reference], batches)
        return figures
    (keras_s, rnnimp_s), (expected, predictions) = interleaved_seconds([reference, forward], batches)
    figures.update(keras_xla_s=keras_s, rnnimp_s=rnnimp_s, speedup=keras_s / rnnimp_s,
                   max_abs_diff=float(np.max(np.abs(predictions - expected))))
    return figures


# --- scikit-learn's permutation_importance on the same model ----------------------------------------

def sklearn_permutation_importance(model, sample: np.ndarray, labels: np.ndarray, n_repeats: int, n_jobs: int,
                                   seed: int) -> dict:
    """scikit-learn's ``permutation_importance`` of ``model``, each feature's whole trajectory permuted.

    How sklearn is made to permute whole trajectories, faithfully: sklearn
    permutes the rows of one column of a 2-D ``X`` at a time
    (``X[:, j] = X[shuffled, j]``). We hand it an integer ``X`` of shape
    (series, features) whose entry [i, j] is the series whose trajectory of
    feature j series i carries, initially i. Permuting column j therefore
    permutes feature j's whole trajectory between series, exactly as rnnimp's
    permutation does, and the estimator's ``predict`` gathers the
    (series, time, features) input from ``sample`` by these indices before
    calling ``model.predict(batch_size=8192)``. The gather is the only work
    the wrapper adds (a few milliseconds per call). The score is minus the MSE
    against ``labels`` (series, outputs), so sklearn's importance (baseline
    score minus permuted score) is the MSE loss increase, rnnimp's
    ``--metric loss-increase --loss mse``.

    Returns {"means": [per feature], "seconds": the permutation_importance call alone}.
    """
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.inspection import permutation_importance

    class TrajectoryIndexEstimator(RegressorMixin, BaseEstimator):
        """A fitted Keras model behind an (series, features) array of trajectory indices."""

        def __init__(self, model=None, sample=None):
            self.model = model
            self.sample = sample

        def fit(self, X, y=None):  # already trained; sklearn only requires the method
            return self

        def predict(self, X):
            features = np.arange(self.sample.shape[2])
            gathered = self.sample[X, :, features].transpose(0, 2, 1)  # [i, :, j] = sample[X[i, j], :, j]
            return self.model.predict(np.ascontiguousarray(gathered), batch_size=8192, verbose=0)

    estimator = TrajectoryIndexEstimator(model, sample)
    trajectory_index = np.repeat(np.arange(len(sample))[:, None], sample.shape[2], axis=1)
    started = time.perf_counter()
    result = permutation_importance(estimator, trajectory_index, labels, scoring="neg_mean_squared_error",
                                    n_repeats=n_repeats, n_jobs=n_jobs, random_state=seed)
    return {"means": [float(m) for m in result.importances_mean], "seconds": time.perf_counter() - started}
