"""Forward passes of a Keras model for the workers: (batch, time, features) float32 -> (batch, outputs).

Beside :mod:`rnnimp.lstm` (the fused program for stacks of LSTM layers);
:mod:`rnnimp.method` only ever sees the resulting function, so it stays pure
numpy. TensorFlow is imported when a forward pass is built, not before.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import lstm

Forward = Callable[[np.ndarray], np.ndarray]


def keras_forward(model, jit_compile: bool = False) -> Forward:
    """``model(x, training=False)`` in one ``tf.function``: (batch, outputs) numpy.

    Models with several outputs have them flattened and concatenated.
    """
    import tensorflow as tf

    def call(batch):
        outputs = tf.nest.flatten(model(batch, training=False))
        rows = tf.shape(batch)[0]
        return tf.concat([tf.reshape(tf.cast(o, tf.float32), [rows, -1]) for o in outputs], axis=1)

    compiled = tf.function(call, jit_compile=jit_compile, reduce_retracing=True)
    return lambda batch: compiled(batch).numpy()


def forward_kind(model, jit_compile: bool) -> str:
    """Which forward pass :func:`model_forward` uses for ``model``: fused-lstm, keras-xla or keras."""
    if jit_compile and lstm.fusable(model):
        return "fused-lstm"
    return "keras-xla" if jit_compile else "keras"


def model_forward(model, jit_compile: bool = True) -> Forward:
    """The fastest faithful forward pass: (batch, time, features) float32 -> (batch, outputs).

    With ``jit_compile``, stacks of LSTM layers run as rnnimp's fused XLA
    program (:mod:`rnnimp.lstm`), other models as ``model(x)`` under XLA;
    without it, always ``model(x)`` in a plain ``tf.function``.
    """
    if forward_kind(model, jit_compile) == "fused-lstm":
        return lstm.fused_forward(model)
    return keras_forward(model, jit_compile)
