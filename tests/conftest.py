"""Shared fixtures: small hand-built Keras models and a trained reference model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def linear_lstm_free_model(weights_per_feature: list[float], time_steps: int = 4):
    """A Keras model y[s, t] = sum_f w_f * x[s, t, f] (a Dense layer applied per step).

    Its outputs are linear in the inputs, so the RMS change caused by noise
    on feature f is |w_f| times the RMS of that noise: importance by hand.
    """
    import keras

    n_features = len(weights_per_feature)
    model = keras.Sequential([
        keras.Input((time_steps, n_features)),
        keras.layers.Dense(1, use_bias=False),
        keras.layers.Flatten(),
    ])
    model.layers[0].set_weights([np.asarray(weights_per_feature, dtype=np.float32).reshape(n_features, 1)])
    return model


@pytest.fixture(scope="session")
def reference_training():
    """The reference LSTM trained on its full schedule (about 15 s with XLA), once per test run."""
    from rnnimp import reference

    return reference.train_model(seed=0)


@pytest.fixture(scope="session")
def reference_model_file(reference_training, tmp_path_factory):
    """The session's trained reference LSTM as a ``model.keras`` file, for jobs run with ``--model``
    instead of training their own."""
    path = tmp_path_factory.mktemp("reference_model") / "model.keras"
    reference_training.model.save(path)
    return path
