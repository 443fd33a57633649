"""A fused forward pass for Keras models made of stacked LSTM layers (pure TensorFlow, no Ray).

``model(x)`` runs each LSTM layer as a ``while`` loop over time steps on
batch-major tensors, (batch, units). For the small layers rnnimp usually
sees (a few to a few dozen units), most of that time goes to moving narrow
rows around. Here the batch is the last, contiguous axis instead: every
time step is ``W·x + U·h + b`` on (4·units, batch) tensors followed by the
gate arithmetic, the time loop is unrolled and the whole stack is compiled
by XLA into one program. It computes Keras' LSTM cell (gates in Keras'
order i, f, c, o; its ``activation`` and ``recurrent_activation``) on the
model's own variables, so new weights assigned to the model are used
without retracing. Outputs agree with ``model(x)`` to float32 rounding
(a few 1e-7 here), not bit for bit.

Only a ``keras.Sequential`` chain of LSTM, Dense, Flatten and Dropout layers
(at least one LSTM) in float32 qualifies; :func:`fused_forward` returns None
for anything else and the caller falls back to ``model(x)``. An input of
unknown length is unrolled over the length of the batches it is called on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

FUSABLE_LAYERS = ("LSTM", "Dense", "Flatten", "Dropout")
# Keras activations that act on each value alone, hence on any layout (softmax, say, does not).
ELEMENTWISE_ACTIVATIONS = frozenset({
    "tanh", "sigmoid", "hard_sigmoid", "relu", "relu6", "linear", "elu", "selu", "gelu", "softplus", "softsign",
    "silu", "swish", "hard_silu", "hard_swish", "exponential", "leaky_relu", "mish", "log_sigmoid", "hard_tanh",
})


def fusable(model) -> bool:
    """Whether :func:`fused_forward` can run ``model`` (see the module's rules)."""
    import keras

    if type(model) is not keras.Sequential or len(model.inputs) != 1 or len(model.inputs[0].shape) != 3:
        return False
    if not any(type(layer).__name__ == "LSTM" for layer in model.layers):
        return False  # nothing to fuse
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in FUSABLE_LAYERS or type(layer).__module__.split(".")[0] != "keras":
            return False
        if getattr(layer, "compute_dtype", "float32") != "float32":
            return False
        if kind == "LSTM" and (layer.go_backwards or layer.stateful or layer.return_state
                               or not {_name(layer.cell.activation), _name(layer.cell.recurrent_activation)}
                               <= ELEMENTWISE_ACTIVATIONS):
            return False
    return True


def _name(activation) -> str:
    return getattr(activation, "__name__", "")


def _lstm(layer, sequence):
    """One LSTM layer on (time, features, batch): (time, units, batch), or (units, batch) for the last step only."""
    import tensorflow as tf

    cell = layer.cell
    kernel_t = tf.transpose(tf.convert_to_tensor(cell.kernel.value))  # (4 units, features)
    recurrent_t = tf.transpose(tf.convert_to_tensor(cell.recurrent_kernel.value))  # (4 units, units)
    bias = None if cell.bias is None else tf.convert_to_tensor(cell.bias.value)[:, None]
    state = c = None
    outputs = []
    for step in range(sequence.shape[0]):
        z = tf.matmul(kernel_t, sequence[step])
        if state is not None:
            z = z + tf.matmul(recurrent_t, state)
        if bias is not None:
            z = z + bias
        i, f, g, o = tf.split(z, 4, axis=0)
        candidate = cell.recurrent_activation(i) * cell.activation(g)
        c = candidate if c is None else cell.recurrent_activation(f) * c + candidate
        state = cell.recurrent_activation(o) * cell.activation(c)
        outputs.append(state)
    return tf.stack(outputs) if layer.return_sequences else state


def _dense(layer, tensor):
    """A Dense layer on (features, batch) or (time, features, batch), batch last."""
    import tensorflow as tf

    kernel_t = tf.transpose(tf.convert_to_tensor(layer.kernel.value))  # (units, features)
    out = tf.matmul(kernel_t, tensor) if tensor.shape.rank == 2 else tf.einsum("uf,tfb->tub", kernel_t, tensor)
    if layer.bias is not None:
        out = out + tf.convert_to_tensor(layer.bias.value)[:, None]
    # Applied batch-major, on the units' axis last, as Keras does: right for softmax and its kind too.
    order = (1, 0) if out.shape.rank == 2 else (2, 0, 1)
    inverse = (1, 0) if out.shape.rank == 2 else (1, 2, 0)
    return tf.transpose(layer.activation(tf.transpose(out, order)), inverse)


def _flatten(tensor):
    """Keras' Flatten of (batch, time, features) in the batch-last layout: (time * features, batch)."""
    import tensorflow as tf

    return tensor if tensor.shape.rank == 2 else tf.reshape(tensor, [-1, tf.shape(tensor)[-1]])


def fused_forward(model) -> Callable[[np.ndarray], np.ndarray] | None:
    """The model's fused, XLA-compiled forward pass, or None if it does not qualify.

    The returned function maps a float32 batch (batch, time, features) to
    predictions (batch, outputs), the model's output flattened per series.
    """
    if not fusable(model):
        return None
    import tensorflow as tf

    layers = list(model.layers)

    def call(batch):
        tensor = tf.transpose(tf.convert_to_tensor(batch, tf.float32), (1, 2, 0))  # (time, features, batch)
        for layer in layers:
            kind = type(layer).__name__
            if kind == "LSTM":
                tensor = _lstm(layer, tensor)
            elif kind == "Dense":
                tensor = _dense(layer, tensor)
            elif kind == "Flatten":
                tensor = _flatten(tensor)
        return tf.transpose(_flatten(tensor))

    compiled = tf.function(call, jit_compile=True, reduce_retracing=True)
    return lambda batch: compiled(batch).numpy()
