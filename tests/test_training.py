"""The compiled reference training takes the same steps on the same batches as plain Keras ``fit``."""

import numpy as np
import pytest

from rnnimp import reference
from rnnimp.errors import InvalidParameterError
from rnnimp.seeding import Stream, generator

# A short schedule: two epochs, so that the optimizer's state must carry over from one compiled call to the next.
SHORT = dict(epochs=2, steps_per_epoch=25, batch_size=5)


def test_batches_are_the_seeds_training_series_cut_in_order():
    inputs, targets = reference.training_batches(3, **SHORT)
    assert inputs.shape == (2, 25, 5, reference.TIME_STEPS, reference.N_FEATURES) and inputs.dtype == np.float32
    assert targets.shape == (2, 25, 5, reference.TIME_STEPS)
    series, series_targets = reference.make_series(generator(3, Stream.TRAINING), 2 * 25 * 5)
    # Batch j of epoch e holds series (e * 25 + j) * 5 onwards: no shuffling, epochs in order.
    np.testing.assert_array_equal(inputs[1, 7], series[(25 + 7) * 5:(25 + 8) * 5])
    np.testing.assert_array_equal(targets[1, 7], series_targets[(25 + 7) * 5:(25 + 8) * 5])
    again, _ = reference.training_batches(3, **SHORT)
    np.testing.assert_array_equal(inputs, again)


def test_a_different_seed_gives_different_batches():
    inputs, _ = reference.training_batches(3, **SHORT)
    other, _ = reference.training_batches(4, **SHORT)
    assert not np.any(np.all(inputs == other, axis=(-2, -1)))


@pytest.mark.parametrize("parameter", ["epochs", "steps_per_epoch", "batch_size"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_schedule_must_be_positive_integers(parameter, value):
    with pytest.raises(InvalidParameterError, match=parameter):
        reference.training_batches(0, **{**SHORT, parameter: value})


def _running_loss_recorder():
    """A Keras callback keeping ``fit``'s running mean loss after every batch (in ``.running``)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.running = []

        def on_train_batch_end(self, batch, logs=None):
            self.running.append(float(logs["loss"]))

    return Recorder()


@pytest.fixture(scope="module")
def compiled_and_plain():
    """The short schedule of seed 5, trained compiled and with plain ``fit`` (per-batch running losses)."""
    import keras

    compiled = reference.train_model(5, **SHORT)
    inputs, targets = reference.training_batches(5, **SHORT)
    plain = reference.build_model(5)
    plain.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy")
    recorder = _running_loss_recorder()
    epoch_losses = reference._fit_epochs(plain, inputs, targets, callbacks=[recorder])
    running = np.asarray(recorder.running).reshape(SHORT["epochs"], SHORT["steps_per_epoch"])
    return compiled, plain, epoch_losses, running


@pytest.mark.slow
def test_compiled_training_follows_fits_loss_trajectory(compiled_and_plain):
    compiled, _, epoch_losses, fit_running = compiled_and_plain
    assert compiled.step_losses.shape == (SHORT["epochs"], SHORT["steps_per_epoch"])
    # fit reports the running mean of the epoch's batch losses; the compiled loop returns each batch's loss.
    running = np.cumsum(compiled.step_losses, axis=1) / np.arange(1, SHORT["steps_per_epoch"] + 1)
    np.testing.assert_allclose(running, fit_running, atol=1e-5)
    np.testing.assert_allclose(compiled.losses, epoch_losses, atol=1e-5)
    assert compiled.final_loss == compiled.losses[-1]
    untrained = reference.build_model(5).get_weights()
    assert max(np.max(np.abs(a - b)) for a, b in zip(compiled.model.get_weights(), untrained)) > 1e-3  # it trained


@pytest.mark.slow
def test_compiled_training_ends_with_fits_weights_and_optimizer_state(compiled_and_plain):
    compiled, plain, _, _ = compiled_and_plain
    for trained, reference_weights in zip(compiled.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(trained, reference_weights, atol=1e-5)
    steps = SHORT["epochs"] * SHORT["steps_per_epoch"]
    assert int(compiled.model.optimizer.iterations.numpy()) == int(plain.optimizer.iterations.numpy()) == steps
    for ours, theirs in zip(compiled.model.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compare_training_reports_both_runs_on_the_same_batches():
    comparison = reference.compare_training(6, epochs=1, steps_per_epoch=10, batch_size=5)
    assert comparison.compiled.step_losses is not None and comparison.plain.step_losses is None
    assert comparison.final_loss_difference < 1e-5
    assert comparison.max_weight_difference < 1e-5
    assert comparison.compiled_seconds > 0 and comparison.plain_seconds > 0


def test_compiled_epoch_refuses_other_architectures():
    import keras

    model = keras.Sequential([keras.Input((4, 2)), keras.layers.GRU(3, return_sequences=True), keras.layers.Flatten()])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="build_model"):
        reference.compiled_epoch(model)
