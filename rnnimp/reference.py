"""The reference experiment: synthetic series, the stacked LSTM, its training.

Series have 10 time steps and 3 features drawn uniformly from [0, 1); the
target at each step is x1 * x2, so feature 3 is irrelevant by construction.
The model is three stacked LSTM layers returning sequences (10 relu, 5 relu,
1 sigmoid units) flattened to 10 outputs: 908 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seeding import Stream, generator, int_seed

TIME_STEPS = 10
N_FEATURES = 3
FEATURE_NAMES = ("x1", "x2", "x3")


def make_series(rng: np.random.Generator, n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n_series, 10, 3) uniform in [0, 1) and targets x1*x2 (n_series, 10), float32."""
    inputs = _draw_inputs(rng, n_series)
    targets = inputs[:, :, 0] * inputs[:, :, 1]
    return inputs, targets


def evaluation_sample(seed: int, n_series: int) -> np.ndarray:
    """The evaluation sample of the reference experiment: (n_series, 10, 3) float32.

    The inputs of :func:`make_series` on the evaluation stream, drawn without
    their targets (which the method never uses).
    """
    return _draw_inputs(generator(seed, Stream.EVALUATION_SAMPLE), n_series)


def evaluation_series(seed: int, n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation sample with its targets: (n_series, 10, 3) and x1*x2 (n_series, 10), float32.

    The inputs are exactly :func:`evaluation_sample`'s (the same draws of the
    evaluation stream); the targets are computed from them, for the
    loss-increase metric.
    """
    return make_series(generator(seed, Stream.EVALUATION_SAMPLE), n_series)


def _draw_inputs(rng: np.random.Generator, n_series: int) -> np.ndarray:
    """(n_series, 10, 3) float32 uniform in [0, 1)."""
    return rng.random((n_series, TIME_STEPS, N_FEATURES), dtype=np.float32)


def build_model(seed: int):
    """The uncompiled reference LSTM, its weights initialised from ``seed``.

    The input and every layer are named explicitly (Keras numbers unnamed
    ones), so that every build has the same architecture JSON: workers
    compile the forward pass from a fresh build before training ends.
    """
    import keras

    keras.utils.set_random_seed(int_seed(seed, Stream.WEIGHT_INIT))
    return keras.Sequential(
        [
            keras.Input((TIME_STEPS, N_FEATURES), name="series"),
            keras.layers.LSTM(10, activation="relu", return_sequences=True, name="lstm_10"),
            keras.layers.LSTM(5, activation="relu", return_sequences=True, name="lstm_5"),
            keras.layers.LSTM(1, activation="sigmoid", return_sequences=True, name="lstm_1"),
            keras.layers.Flatten(name="flatten"),
        ],
        name="reference_lstm",
    )


@dataclass(frozen=True)
class TrainingResult:
    model: object
    final_loss: float
    losses: tuple[float, ...]


def train_model(
    seed: int, *, epochs: int = 5, steps_per_epoch: int = 1000, batch_size: int = 5,
    fast: bool = True,
) -> TrainingResult:
    """Train the reference LSTM: ``epochs`` × ``steps_per_epoch`` batches of fresh series.

    Binary cross-entropy, Adam. Every batch is drawn from the training stream
    of ``seed`` up front, so the batches are the same whichever way the
    training runs. ``fast`` compiles with XLA and runs many steps per call
    (same batches and number of steps as plain ``fit``, several times faster).
    """
    import keras

    n_series = epochs * steps_per_epoch * batch_size
    inputs, targets = make_series(generator(seed, Stream.TRAINING), n_series)
    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="binary_crossentropy",
        jit_compile=fast,
        steps_per_execution=min(100, steps_per_epoch) if fast else 1,
    )
    history = _fit_epochs(model, inputs, targets, epochs, steps_per_epoch, batch_size)
    losses = tuple(float(loss) for loss in history)
    del inputs, targets
    release_free_heap()  # the training's buffers, before the evaluation sample is allocated
    return TrainingResult(model, losses[-1], losses)


def release_free_heap() -> bool:
    """Hand memory the C heap has freed back to the operating system (glibc's ``malloc_trim``).

    glibc keeps freed blocks for reuse, so a process's resident size stays at
    its high-water mark; trimming lowers it by about 0.15 GiB after training.
    Returns False where there is no glibc.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _fit_epochs(model, inputs, targets, epochs, steps_per_epoch, batch_size) -> list[float]:
    """One ``fit`` call per epoch on that epoch's slice, in order, unshuffled."""
    per_epoch = steps_per_epoch * batch_size
    losses = []
    for epoch in range(epochs):
        chunk = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        history = model.fit(
            inputs[chunk], targets[chunk], batch_size=batch_size, epochs=1,
            shuffle=False, verbose=0,
        )
        losses.append(history.history["loss"][-1])
    return losses
