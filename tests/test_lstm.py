"""The fused LSTM forward pass against ``model(x)``, on models the test builds with seeded weights."""

import numpy as np
import pytest

from rnnimp import reference
from rnnimp.lstm import fusable, fused_forward
from rnnimp.forward import forward_kind, model_forward

keras = pytest.importorskip("keras")


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.6, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def sequential(*layers, time_steps=7, features=4):
    return keras.Sequential([keras.Input((time_steps, features)), *layers])


def assert_matches_keras(model, n_series=300, seed=0):
    batch = np.random.default_rng(seed).normal(size=(n_series, *model.inputs[0].shape[1:])).astype(np.float32)
    expected = np.asarray(model(batch, training=False)).reshape(n_series, -1)
    actual = fused_forward(model)(batch)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6)


def test_reference_lstm_matches_keras():
    model = randomize(reference.build_model(0), 1)
    assert fusable(model) and forward_kind(model, True) == "fused-lstm"
    assert_matches_keras(model)


def test_weights_assigned_after_tracing_are_used():
    model = randomize(reference.build_model(0), 1)
    forward = fused_forward(model)
    batch = reference.evaluation_sample(0, 64)
    before = forward(batch)
    randomize(model, 2)
    after = forward(batch)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, np.asarray(model(batch)).reshape(64, -1), rtol=0, atol=2e-6)


@pytest.mark.parametrize("layers", [
    lambda: [keras.layers.LSTM(8), keras.layers.Dense(3, activation="softmax")],
    lambda: [keras.layers.LSTM(6, return_sequences=True, use_bias=False), keras.layers.Dropout(0.5),
             keras.layers.Dense(2, activation="tanh"), keras.layers.Flatten()],
    lambda: [keras.layers.LSTM(5, return_sequences=True, activation="relu", recurrent_activation="hard_sigmoid"),
             keras.layers.LSTM(4), keras.layers.Dense(1, use_bias=False)],
    lambda: [keras.layers.LSTM(3, return_sequences=True)],
], ids=["last-state-dense-softmax", "no-bias-dropout-per-step-dense", "relu-hard-sigmoid-stack", "sequence-out"])
def test_other_lstm_stacks_match_keras(layers):
    keras.utils.set_random_seed(3)
    assert_matches_keras(randomize(sequential(*layers()), 4))


@pytest.mark.parametrize("build", [
    lambda: sequential(keras.layers.GRU(4)),
    lambda: sequential(keras.layers.Dense(2), keras.layers.Flatten()),
    lambda: sequential(keras.layers.LSTM(4, go_backwards=True)),
    lambda: sequential(keras.layers.Bidirectional(keras.layers.LSTM(4))),
    lambda: sequential(keras.layers.LSTM(4, dtype="mixed_float16")),
    lambda: sequential(keras.layers.LSTM(4, activation="softmax")),
    lambda: keras.Model(*(lambda i: (i, keras.layers.LSTM(4)(i)))(keras.Input((7, 4)))),
], ids=["gru", "no-lstm", "backwards", "bidirectional", "mixed-precision", "softmax-cell", "functional"])
def test_other_models_fall_back_to_keras(build):
    model = build()
    assert not fusable(model) and fused_forward(model) is None
    assert forward_kind(model, True) == "keras-xla" and forward_kind(model, False) == "keras"
    batch = np.random.default_rng(0).normal(size=(16, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(model_forward(model, jit_compile=False)(batch),
                               np.asarray(model(batch)).reshape(16, -1).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_input_of_unknown_length_is_unrolled_over_the_batch_length():
    keras.utils.set_random_seed(5)
    model = randomize(sequential(keras.layers.LSTM(5, return_sequences=True), keras.layers.LSTM(3), time_steps=None), 6)
    batch = np.random.default_rng(0).normal(size=(32, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(fused_forward(model)(batch), np.asarray(model(batch)), rtol=0, atol=2e-6)
