"""Forward passes of a Keras model for the workers: input batch(es) float32 -> (batch, outputs).

Beside :mod:`rnnimp.lstm` (the fused program for recurrent models);
:mod:`rnnimp.method` only ever sees the resulting function, so it stays pure
numpy. TensorFlow is imported when a forward pass is built, not before.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import lstm

Forward = Callable[[np.ndarray], np.ndarray]


def keras_forward(model, jit_compile: bool = False, output_mask: bool = False) -> Callable:
    """``model(x, training=False)`` in one ``tf.function``: (batch, outputs) numpy.

    ``x`` is one array for a single-input model, else a list of arrays in
    ``model.inputs`` order (passed to Keras as a dict keyed by input name).
    Models with several outputs have them flattened and concatenated. With
    ``output_mask``, returns (predictions, weights): weights (batch, outputs)
    float32, 0 where Keras masks an output value (the output's ``_keras_mask``
    broadcast over its trailing axes), 1 elsewhere.
    """
    import tensorflow as tf

    from .inputs import model_input_names

    names = model_input_names(model) if len(model.inputs) > 1 else None

    def flat(tensors, rows):
        return tf.concat([tf.reshape(tf.cast(t, tf.float32), [rows, -1]) for t in tensors], axis=1)

    def call(batch):
        outputs = tf.nest.flatten(model(dict(zip(names, batch)) if names else batch, training=False))
        rows = tf.shape(tf.nest.flatten(batch)[0])[0]
        if not output_mask:
            return flat(outputs, rows)
        weights = []
        for tensor in outputs:
            mask = getattr(tensor, "_keras_mask", None)
            weight = tf.ones_like(tensor, tf.float32)
            if mask is not None:
                mask = tf.cast(mask, tf.float32)
                while mask.shape.rank < tensor.shape.rank:
                    mask = mask[..., None]
                weight = weight * mask
            weights.append(weight)
        return flat(outputs, rows), flat(weights, rows)

    compiled = direct_calls(tf.function(call, jit_compile=jit_compile, reduce_retracing=True, autograph=False))
    if output_mask:
        return lambda batch: tuple(t.numpy() for t in compiled(batch))
    return lambda batch: compiled(batch).numpy()


def direct_calls(compiled) -> Callable:
    """``compiled``, a ``tf.function``, called through the concrete function it runs for each batch shape.

    ``compiled.get_concrete_function(batch)`` is the very trace (and XLA
    program) that ``compiled(batch)`` runs; calling it directly skips the
    argument binding and trace lookup that every call of a ``tf.function``
    repeats: about a third of a call's time on the small batches of a
    per-step map, and the same results; and the concrete function is
    called on its flat inputs (:func:`flat_call`), skipping its own binding
    too. ``batch``: one array, or a list of arrays (one per model input);
    the trace is looked up once per shapes and dtypes.
    """
    traces: dict = {}

    def call(batch):
        arrays = batch if isinstance(batch, (list, tuple)) else (batch,)
        key = tuple((tuple(array.shape), str(array.dtype)) for array in arrays)
        concrete = traces.get(key)
        if concrete is None:
            concrete = traces[key] = flat_call(compiled.get_concrete_function(batch), batch)
        return concrete(batch)

    return call


def flat_call(concrete, batch) -> Callable:
    """``concrete`` called on its flat list of input tensors, without binding its arguments again.

    A concrete function's ``__call__`` binds its arguments to its signature
    first (about 0.5 ms a call here, about a tenth of a 4096-series batch's
    forward pass); ``_call_flat`` is the call it then makes, TensorFlow's
    own. Used only where this TensorFlow has it and it gives ``concrete(batch)``'s
    outputs on ``batch`` (checked once, here), else ``concrete`` itself.
    """
    import tensorflow as tf

    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:
        return concrete

    def call(batch):
        return call_flat([tf.convert_to_tensor(array) for array in tf.nest.flatten(batch)], concrete.captured_inputs)

    try:
        same = all(np.array_equal(ours, theirs) for ours, theirs in
                   zip(tf.nest.flatten(call(batch)), tf.nest.flatten(concrete(batch)), strict=True))
    except Exception:  # another TensorFlow's private call: keep the public one
        same = False
    return call if same else concrete


def output_masked(model) -> bool:
    """Whether Keras propagates a mask to any of the model's outputs (a ``Masking`` layer upstream, say)."""
    return any(getattr(tensor, "_keras_mask", None) is not None for tensor in getattr(model, "outputs", None) or [])


def forward_kind(model, jit_compile: bool) -> str:
    """Which forward pass :func:`model_forward` uses for ``model``: keras-xla, keras or a fused one.

    The fused ones are named by :func:`rnnimp.lstm.fused_kind` (fused-lstm,
    fused-rnn, fused-rnn-masked, fused-graph). A model whose outputs carry a Keras mask
    never takes them: its metric needs the output mask that ``model(x)`` gives.
    """
    kind = lstm.fused_kind(model) if jit_compile and not output_masked(model) else None
    return kind or ("keras-xla" if jit_compile else "keras")


def model_forward(model, jit_compile: bool = True) -> Callable:
    """The fastest faithful forward pass: input batch(es) float32 -> (batch, outputs).

    With ``jit_compile``, models of recurrent layers (LSTM, GRU, SimpleRNN,
    Bidirectional, behind a Masking layer or not), chains or functional graphs
    with several inputs and merges, run as rnnimp's fused XLA program
    (:mod:`rnnimp.lstm`), other models (outputs that carry a mask, other
    layers) as ``model(x)`` under XLA; without it, always ``model(x)`` in a
    plain ``tf.function``. A model whose outputs carry a Keras mask returns
    (predictions, weights) (see :func:`keras_forward`).
    """
    if forward_kind(model, jit_compile).startswith("fused"):
        return lstm.fused_forward(model)
    return keras_forward(model, jit_compile, output_mask=output_masked(model))
