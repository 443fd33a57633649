"""The reference experiment: synthetic series, the stacked LSTM, its training.

Series have 10 time steps and 3 features drawn uniformly from [0, 1); the
target at each step is x1 * x2, so feature 3 is irrelevant by construction.
The model is three stacked LSTM layers returning sequences (10 relu, 5 relu,
1 sigmoid units) flattened to 10 outputs: 908 parameters.

Training (:func:`train_model`) runs each epoch as one XLA program
(:func:`compiled_epoch`) on the batches of :func:`training_batches`, with
Keras' own loss and Adam; :func:`compare_training` checks it against plain
``fit`` on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InvalidParameterError
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
    """A trained reference model and its losses.

    ``losses`` holds one loss per epoch, the mean of that epoch's batch
    losses (what Keras' ``fit`` reports); ``step_losses`` holds every batch's
    loss, shape (epochs, steps_per_epoch), where the run recorded them (the
    compiled loop does; plain ``fit`` reports running means only, so None).
    """

    model: object
    final_loss: float
    losses: tuple[float, ...]
    step_losses: np.ndarray | None = None


def training_batches(
    seed: int, *, epochs: int, steps_per_epoch: int, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every training batch of the seed's schedule, in the order they are used.

    Fresh series from the training stream of ``seed``, drawn up front in one
    call and cut in order, unshuffled: batch ``j`` of epoch ``e`` holds
    series ``(e * steps_per_epoch + j) * batch_size`` onwards. Returns
    inputs (epochs, steps_per_epoch, batch_size, 10, 3) and targets
    (epochs, steps_per_epoch, batch_size, 10), float32.
    """
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(name, "must be a positive integer", value)
    inputs, targets = make_series(generator(seed, Stream.TRAINING), epochs * steps_per_epoch * batch_size)
    return (inputs.reshape(epochs, steps_per_epoch, batch_size, TIME_STEPS, N_FEATURES),
            targets.reshape(epochs, steps_per_epoch, batch_size, TIME_STEPS))


def train_model(
    seed: int, *, epochs: int = 5, steps_per_epoch: int = 1000, batch_size: int = 5,
    fast: bool = True, on_built: Callable[[], None] | None = None,
) -> TrainingResult:
    """Train the reference LSTM: ``epochs`` × ``steps_per_epoch`` batches of fresh series.

    Binary cross-entropy, Adam with Keras' defaults, on the batches of
    :func:`training_batches` in order. ``fast`` runs each epoch as one
    XLA-compiled program (:func:`compiled_epoch`: a loop over the epoch's
    steps, each the forward pass, the loss, its gradient and Keras' own Adam
    update); otherwise plain Keras ``fit``, one step per call, no XLA. Both
    take the same steps on the same batches; their losses agree to float32
    rounding (see :func:`compare_training`).

    ``on_built()``, if given, is called once the model is built (its
    initial weights drawn) and its training program traced, before it
    trains: work started there, in another thread, may build and trace
    other Keras models and functions without racing the seeded
    initialisation (Keras draws initialisers' seeds from Python's global
    ``random``), nor the names TensorFlow numbers its functions with in
    tracing order (which key XLA's persistent cache).
    """
    import keras

    inputs, targets = training_batches(seed, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size)
    model = build_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy")
    if fast:
        step_losses = _train_compiled(model, inputs, targets, on_built)
        losses = tuple(float(np.mean(epoch, dtype=np.float64)) for epoch in step_losses)
    else:
        step_losses = None
        if on_built is not None:
            on_built()
        losses = tuple(float(loss) for loss in _fit_epochs(model, inputs, targets))
    del inputs, targets
    release_free_heap()  # the training's buffers, before the evaluation sample is allocated
    return TrainingResult(model, losses[-1], losses, step_losses)


def compiled_epoch(model):
    """One epoch of training as one XLA program: ``f(inputs, targets) -> batch losses``.

    ``inputs`` (steps, batch, 10, 3) and ``targets`` (steps, batch, 10) hold
    the epoch's batches in order; the program loops over them (a rolled
    ``while`` loop, so its size and compile time do not grow with the
    number of steps) and per step computes the model's predictions, the
    compiled loss (``model.compute_loss``, as ``fit``'s train step does), its
    gradient with respect to the model's trainable variables and applies
    the model's own optimizer (``model.optimizer.apply``). It returns the
    batch losses, (steps,) float32, and leaves the trained weights and the
    optimizer's state in their variables, as ``fit`` would.

    The forward pass computes Keras' LSTM cell (gates i, f, c, o) with the
    three layers advanced together over one rolled loop over time steps,
    which compiles to a much smaller program than ``model(x)``'s three
    ``while`` loops. Only :func:`build_model`'s architecture qualifies: a
    ``keras.Sequential`` of LSTM layers returning sequences, then Flatten.
    The model must be compiled and its optimizer built.
    """
    import keras
    import tensorflow as tf

    *lstm_layers, flatten = model.layers
    if (type(model) is not keras.Sequential or not lstm_layers or not isinstance(flatten, keras.layers.Flatten)
            or not all(isinstance(layer, keras.layers.LSTM) and layer.return_sequences and not layer.go_backwards
                       and layer.dropout == 0 and layer.recurrent_dropout == 0 for layer in lstm_layers)):
        raise ValueError("compiled_epoch runs only build_model's architecture: LSTM layers returning sequences, "
                         "then Flatten")
    cells = [layer.cell for layer in lstm_layers]
    variables = list(model.trainable_variables)
    optimizer = model.optimizer

    def predictions(batch):
        """The model's output for ``batch`` (batch, time, features): (batch, time * last units)."""
        time_steps, batch_size = batch.shape[1], batch.shape[0]
        sequence = tf.transpose(batch, (1, 0, 2))  # (time, batch, features)
        weights = [(tf.convert_to_tensor(cell.kernel.value), tf.convert_to_tensor(cell.recurrent_kernel.value),
                    tf.convert_to_tensor(cell.bias.value)) for cell in cells]

        def time_step(t, states, outputs):
            below = sequence[t]
            advanced = []
            for cell, (kernel, recurrent_kernel, bias), (state, carry) in zip(cells, weights, states):
                z = tf.matmul(below, kernel)
                z = z + tf.matmul(state, recurrent_kernel)
                z = z + bias
                z_i, z_f, z_c, z_o = tf.split(z, 4, axis=1)
                carry = (cell.recurrent_activation(z_f) * carry
                         + cell.recurrent_activation(z_i) * cell.activation(z_c))
                state = cell.recurrent_activation(z_o) * cell.activation(carry)
                advanced.append((state, carry))
                below = state
            return t + 1, advanced, outputs.write(t, below)

        zeros = [(tf.zeros((batch_size, cell.units)), tf.zeros((batch_size, cell.units))) for cell in cells]
        _, _, outputs = tf.while_loop(
            lambda t, *_: t < time_steps, time_step,
            (tf.constant(0), zeros, tf.TensorArray(tf.float32, size=time_steps)),
            maximum_iterations=time_steps)
        stacked = tf.transpose(outputs.stack(), (1, 0, 2))  # (batch, time, last units)
        return tf.reshape(stacked, (batch_size, -1))

    def epoch(inputs, targets):
        steps = inputs.shape[0]

        def train_step(step, losses):
            batch, batch_targets = inputs[step], targets[step]
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x=batch, y=batch_targets, y_pred=predictions(batch), training=True)
            optimizer.apply(tape.gradient(loss, variables), variables)
            return step + 1, losses.write(step, loss)

        _, losses = tf.while_loop(
            lambda step, _: step < steps, train_step,
            (tf.constant(0), tf.TensorArray(tf.float32, size=steps)), maximum_iterations=steps)
        return losses.stack()

    return tf.function(epoch, jit_compile=True, autograph=False)


def _train_compiled(model, inputs: np.ndarray, targets: np.ndarray,
                    on_built: Callable[[], None] | None = None) -> np.ndarray:
    """Every epoch through :func:`compiled_epoch`; the batch losses, (epochs, steps).

    ``on_built()`` is called once the epoch program is traced, before it is compiled and run.
    """
    from . import logs

    model.optimizer.build(model.trainable_variables)
    run_epoch = compiled_epoch(model)
    run_epoch.get_concrete_function(inputs[0], targets[0])  # traces it now (XLA compiles at the first call)
    if on_built is not None:
        on_built()
    losses = []
    for epoch, (epoch_inputs, epoch_targets) in enumerate(zip(inputs, targets)):
        # The first call compiles the program, or loads it from XLA's persistent cache (which the jobs turn on,
        # see rnnimp.xlacache), and XLA may report that load in lines the filter drops.
        with logs.filtered_stderr(epoch == 0 and not logs.verbose()):
            losses.append(run_epoch(epoch_inputs, epoch_targets).numpy())
    return np.stack(losses)


@dataclass(frozen=True)
class TrainingComparison:
    """The compiled training and plain ``fit`` on the same seed's batches, timed one after the other."""

    compiled: TrainingResult
    plain: TrainingResult
    compiled_seconds: float
    plain_seconds: float

    @property
    def final_loss_difference(self) -> float:
        """|compiled − plain| final (last epoch's mean) loss."""
        return abs(self.compiled.final_loss - self.plain.final_loss)

    @property
    def max_weight_difference(self) -> float:
        """The largest absolute difference between the two trained models' weights."""
        return max(float(np.max(np.abs(a - b)))
                   for a, b in zip(self.compiled.model.get_weights(), self.plain.model.get_weights()))

    @property
    def speedup(self) -> float:
        """Plain ``fit``'s wall time over the compiled training's."""
        return self.plain_seconds / self.compiled_seconds


def compare_training(seed: int, *, epochs: int = 5, steps_per_epoch: int = 1000,
                     batch_size: int = 5) -> TrainingComparison:
    """Train twice on the seed's schedule, compiled then with plain ``fit``, and time each.

    Wall times include everything :func:`train_model` does (drawing the
    batches, building the model, tracing and compiling). Run it with the
    machine otherwise idle for meaningful times.
    """
    import time

    started = time.perf_counter()
    compiled = train_model(seed, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size)
    compiled_seconds = time.perf_counter() - started
    started = time.perf_counter()
    plain = train_model(seed, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, fast=False)
    return TrainingComparison(compiled, plain, compiled_seconds, time.perf_counter() - started)


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


def _fit_epochs(model, inputs: np.ndarray, targets: np.ndarray, callbacks=None) -> list[float]:
    """Plain ``fit``, one call per epoch on that epoch's batches, in order, unshuffled.

    ``inputs`` (epochs, steps, batch, 10, 3), ``targets`` (epochs, steps,
    batch, 10). Returns each epoch's loss as ``fit`` reports it.
    """
    batch_size = inputs.shape[2]
    losses = []
    for epoch_inputs, epoch_targets in zip(inputs, targets):
        history = model.fit(
            epoch_inputs.reshape(-1, *epoch_inputs.shape[2:]), epoch_targets.reshape(-1, *epoch_targets.shape[2:]),
            batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks,
        )
        losses.append(history.history["loss"][-1])
    return losses
