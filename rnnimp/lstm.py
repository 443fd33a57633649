"""A fused forward pass for Keras recurrent models that are one chain of layers (pure TensorFlow, no Ray).

``model(x)`` runs each recurrent layer as a ``while`` loop over time steps on
batch-major tensors, (batch, units). For the small layers rnnimp usually
sees (a few to a few dozen units), most of that time goes to moving narrow
rows around. Here the batch is the last, contiguous axis instead: every
time step is ``W·x + U·h + b`` on (gates·units, batch) tensors followed by
the gate arithmetic, the time loop is unrolled and the whole chain is
compiled by XLA into one program. It computes Keras' own cells on the
model's own variables, so new weights assigned to the model are used
without retracing. Outputs agree with ``model(x)`` to float32 rounding
(a few 1e-7 here), not bit for bit.

What qualifies (:func:`fusable`; :func:`fused_forward` returns None for
anything else and the caller falls back to ``model(x)``):

* the model is a ``keras.Sequential``, or a functional ``keras.Model`` whose
  graph from its one input to its one output is a single chain (each layer
  called on the previous layer's output only, with no arguments other than
  the mask Keras propagates and ``training=False``), or any other functional
  graph (several inputs, static covariates, branches, several outputs) of
  such calls and of merges (``Concatenate`` along any axis but the batch,
  ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``
  of tensors of one shape), whose inputs carry no mask;
* the inputs are float32, (batch, time, features) or, in a graph, also
  (batch, features); every layer computes and stores float32;
* the layers are Keras' own (not subclasses) ``LSTM``, ``GRU`` (either
  ``reset_after``), ``SimpleRNN``, ``Bidirectional`` around those (merge
  mode concat, sum, mul or ave), ``Dense``, ``Flatten`` (channels_last),
  ``Dropout``, ``Masking`` and ``RepeatVector`` (and in a graph the merges
  above); at least one recurrent layer;
* recurrent layers are not stateful, return no state, and their cells'
  activations are Keras' element-wise activations (``tanh``, ``sigmoid``,
  ``relu``, ...; see :data:`ELEMENTWISE_ACTIVATIONS`); ``go_backwards``,
  ``unroll``, ``dropout`` and ``recurrent_dropout`` (inactive at
  inference) are fine;
* Dense layers are neither quantized nor LoRA-enabled.

Masking follows Keras 3 exactly (for finite values: a masked step sets the
gates so that the update is the identity, and an infinite candidate would
turn into NaN where Keras keeps the state): a ``Masking`` layer zeroes the steps whose
features all equal its ``mask_value`` and masks them; Dense and Dropout pass
the mask on; a recurrent layer keeps its state over a masked step and
outputs its previous output there (zeros before the first unmasked step),
or zeros when its ``zero_output_for_mask`` is set (which ``Bidirectional``
does for layers that return sequences); a layer that returns sequences
passes the mask on (unreversed even with ``go_backwards``, as Keras does),
one that returns its last output ends it, and so does ``Flatten``.

An input of unknown length is unrolled over the length of the batches it is
called on (one trace per length).

:func:`fused_kind` names the pass recorded in run metadata (``forward``):

* ``fused-lstm``: no mask, and every recurrent layer a plain ``LSTM``;
* ``fused-rnn``: no mask, with a ``GRU``, ``SimpleRNN`` or ``Bidirectional``;
* ``fused-rnn-masked``: any qualifying chain with a ``Masking`` layer;
* ``fused-graph``: a qualifying functional model that is not one chain.

A graph runs its layers in Keras' order (deepest first, :func:`_graph`);
every tensor is batch last, a static one (features, batch).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RECURRENT_LAYERS = ("LSTM", "GRU", "SimpleRNN")
FUSABLE_LAYERS = (*RECURRENT_LAYERS, "Bidirectional", "Dense", "Flatten", "Dropout", "Masking")
BIDIRECTIONAL_MERGE_MODES = ("concat", "sum", "mul", "ave")
MERGE_LAYERS = ("Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
GRAPH_LAYERS = (*FUSABLE_LAYERS, *MERGE_LAYERS, "RepeatVector")  # what a functional graph may hold
# Keras activations that act on each value alone, hence on any layout (softmax, say, does not).
ELEMENTWISE_ACTIVATIONS = frozenset({
    "tanh", "sigmoid", "hard_sigmoid", "relu", "relu6", "linear", "elu", "selu", "gelu", "softplus", "softsign",
    "silu", "swish", "hard_silu", "hard_swish", "exponential", "leaky_relu", "mish", "log_sigmoid", "hard_tanh",
})


def _kind(layer) -> str:
    return type(layer).__name__


def _is_keras_layer(layer, kind: str) -> bool:
    """Whether ``layer`` is exactly Keras' own layer class ``kind`` (no subclass, no look-alike)."""
    import keras

    return kind in GRAPH_LAYERS + ("InputLayer",) and type(layer) is getattr(keras.layers, kind)


def _sequential_chain(model) -> list | None:
    return list(model.layers)


def _propagated_mask(mask, tensor) -> bool:
    """Whether the ``mask`` argument a layer was called with on ``tensor`` is the one Keras propagates.

    That is ``tensor``'s own Keras mask, or, in a model loaded from a file,
    where Keras records a ``Masking`` layer's mask as the ops that compute
    it: ``any(not_equal(x, mask_value), axis=-1)`` on the very input ``x``
    of the ``Masking`` layer that produced ``tensor``.
    """
    from keras.src.backend.common.masking import get_keras_mask

    if mask is get_keras_mask(tensor):
        return True
    history, mask_history = getattr(tensor, "_keras_history", None), getattr(mask, "_keras_history", None)
    if history is None or mask_history is None or _kind(history.operation) != "Masking":
        return False
    masking_node = history.operation._inbound_nodes[history.node_index]
    reduce = mask_history.operation
    if type(reduce).__name__ != "Any" or getattr(reduce, "keepdims", True) or list(
            np.atleast_1d(getattr(reduce, "axis", None) or [None])) not in ([-1], [len(tensor.shape) - 1]):
        return False
    (compared,) = reduce._inbound_nodes[mask_history.node_index].arguments.args
    compared_history = getattr(compared, "_keras_history", None)
    if compared_history is None or type(compared_history.operation).__name__ != "NotEqual":
        return False
    arguments = compared_history.operation._inbound_nodes[compared_history.node_index].arguments.args
    return (len(arguments) == 2 and arguments[0] is masking_node.arguments.args[0]
            and isinstance(arguments[1], (int, float)) and arguments[1] == history.operation.mask_value)


def _functional_chain(model, model_input) -> list | None:
    """The layers from ``model_input`` to the model's one output, in call order, or None if not one chain."""
    from keras.src.backend.common.masking import get_keras_mask

    if len(model.outputs) != 1:
        return None
    input_layer = model_input._keras_history.operation
    layers = []
    tensor = model.outputs[0]
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        operation = history.operation
        if operation is input_layer:
            return layers[::-1]
        node = operation._inbound_nodes[history.node_index]
        if len(node.arguments.args) != 1 or len(node.output_tensors) != 1:
            return None  # a merge, or a layer with several outputs
        (tensor,) = node.arguments.args
        kwargs = dict(node.arguments.kwargs)
        # Keras records the mask it propagates (and which we reproduce) as a call argument and input.
        mask = kwargs.pop("mask", None)
        if mask is not None and not _propagated_mask(mask, tensor):
            return None  # a mask of the user's own
        if kwargs.pop("training", None) or kwargs or any(
                other is not tensor and other is not mask for other in node.input_tensors):
            return None  # a call in training mode, with extra arguments or extra inputs
        layers.append(operation)


def _chain(model) -> list | None:
    """The model's layers in call order if it is one chain from one float32 (batch, time, features) input."""
    import keras
    from keras.src.models.functional import Functional

    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        return None  # a model that was never built
    if len(inputs) != 1 or len(inputs[0].shape) != 3 or inputs[0].dtype != "float32":
        return None
    if type(model) is keras.Sequential:
        return _sequential_chain(model)
    if type(model) is Functional:
        return _functional_chain(model, inputs[0])
    return None


class _Graph:
    """A functional model's graph as steps in call order, for :func:`_run_graph`.

    ``inputs``/``outputs``: the ids of the model's input and output tensors
    (``model.inputs``, ``model.outputs`` order); ``steps``: (layer, ids of
    its input tensors, id of its output tensor), a merge's inputs in its
    call's order.
    """

    def __init__(self, inputs: list[int], outputs: list[int], steps: list[tuple]) -> None:
        self.inputs, self.outputs, self.steps = inputs, outputs, steps

    @property
    def layers(self) -> list:
        return [layer for layer, _, _ in self.steps]


def _graph_node(node) -> tuple | None:
    """One node of a functional graph as (layer, its input tensors), or None if it does not qualify.

    A merge takes one list of tensors, any other layer one tensor; no call
    argument other than ``training=False`` and the mask Keras propagates; a
    merge or ``RepeatVector`` only on inputs that carry no mask (Keras'
    merged masks are not reproduced).
    """
    from keras import KerasTensor
    from keras.src.backend.common.masking import get_keras_mask

    layer = node.operation
    kind = _kind(layer)
    if not _is_keras_layer(layer, kind) or kind == "InputLayer" or len(node.outputs) != 1:
        return None
    if len(node.arguments.args) != 1:
        return None
    (argument,) = node.arguments.args
    merge = kind in MERGE_LAYERS
    sources = list(argument) if merge and isinstance(argument, (list, tuple)) else [argument]
    if merge != isinstance(argument, (list, tuple)) or not all(isinstance(t, KerasTensor) for t in sources):
        return None
    kwargs = dict(node.arguments.kwargs)
    mask = kwargs.pop("mask", None)
    if kwargs.pop("training", None) or kwargs:
        return None
    masks = [get_keras_mask(tensor) for tensor in sources]
    if merge or kind == "RepeatVector":
        if any(m is not None for m in masks) or (mask is not None and any(m is not None for m in mask)):
            return None
        mask = None
    elif mask is not None and not _propagated_mask(mask, sources[0]):
        return None  # a mask of the user's own
    if any(all(other is not t for t in sources) and other is not mask for other in node.input_tensors):
        return None
    return layer, sources


def _merge_ok(layer, sources) -> bool:
    """Whether a merge layer's inputs fit its batch-last form: a concatenation not along the batch, an
    element-wise merge of tensors of one shape."""
    if _kind(layer) == "Concatenate":
        return layer.axis % len(sources[0].shape) != 0
    return len({tuple(tensor.shape[1:]) for tensor in sources}) == 1


def _data_nodes(outputs) -> set[int] | None:
    """The ids of the nodes that compute ``outputs`` from the model's inputs along call arguments (not
    masks); None where a tensor has no Keras history."""
    from keras import KerasTensor

    needed: set[int] = set()
    pending = list(outputs)
    while pending:
        history = getattr(pending.pop(), "_keras_history", None)
        if history is None:
            return None
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in needed or node.is_input:
            continue
        needed.add(id(node))
        for argument in node.arguments.args:
            pending.extend(t for t in (argument if isinstance(argument, (list, tuple)) else [argument])
                           if isinstance(t, KerasTensor))
    return needed


def _graph(model) -> _Graph | None:
    """A functional model's graph if every node qualifies (see :func:`_graph_node`), else None.

    Inputs: float32, (batch, time, features) or (batch, features) (a
    static covariate).
    """
    from keras.src.models.functional import Functional

    if type(model) is not Functional:
        return None
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        return None
    if any(tensor.dtype != "float32" or len(tensor.shape) not in (2, 3) for tensor in inputs):
        return None
    needed = _data_nodes(outputs)
    if needed is None:
        return None
    steps = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # the deepest first: every input before its use
        for node in model._nodes_by_depth[depth]:
            if node.is_input or id(node) not in needed:
                continue  # an input, or an op of a mask's computation (Keras records Masking's as nodes)
            found = _graph_node(node)
            if found is None:
                return None
            layer, sources = found
            if _kind(layer) in MERGE_LAYERS and not _merge_ok(layer, sources):
                return None
            steps.append((layer, [id(tensor) for tensor in sources], id(node.outputs[0])))
    return _Graph([id(tensor) for tensor in inputs], [id(tensor) for tensor in outputs], steps)


def _structure(model) -> list | _Graph | None:
    """The model's chain of layers (:func:`_chain`), else its functional graph (:func:`_graph`), else None."""
    chain = _chain(model)
    return chain if chain is not None else _graph(model)


def _elementwise(activation) -> bool:
    """Whether ``activation`` is one of Keras' own element-wise activation functions."""
    import keras

    name = getattr(activation, "__name__", "")
    return name in ELEMENTWISE_ACTIVATIONS and activation is keras.activations.get(name)


def _float32(layer) -> bool:
    return (getattr(layer, "compute_dtype", "float32") == "float32"
            and getattr(layer, "variable_dtype", "float32") == "float32")


def _recurrent_ok(layer) -> bool:
    kind = _kind(layer)
    if not (kind in RECURRENT_LAYERS and _is_keras_layer(layer, kind)) or not _float32(layer):
        return False
    if layer.stateful or layer.return_state:
        return False
    cell = layer.cell
    activations = [cell.activation] + ([] if kind == "SimpleRNN" else [cell.recurrent_activation])
    return all(_elementwise(activation) for activation in activations)


def _layer_ok(layer) -> bool:
    kind = _kind(layer)
    if not _is_keras_layer(layer, kind) or not _float32(layer):
        return False
    if kind in RECURRENT_LAYERS:
        return _recurrent_ok(layer)
    if kind == "Bidirectional":
        return (layer.merge_mode in BIDIRECTIONAL_MERGE_MODES and not layer.return_state
                and _recurrent_ok(layer.forward_layer) and _recurrent_ok(layer.backward_layer))
    if kind == "Dense":
        return getattr(layer, "quantization_mode", None) is None and not getattr(layer, "lora_enabled", False)
    if kind == "Flatten":
        return layer.data_format == "channels_last"
    return True  # Dropout, Masking, merges (checked on their inputs by _graph), RepeatVector


def fusable(model) -> bool:
    """Whether :func:`fused_forward` can run ``model`` (see the module's rules)."""
    structure = _structure(model)
    layers = structure.layers if isinstance(structure, _Graph) else structure
    return (layers is not None and any(_kind(layer) in RECURRENT_LAYERS + ("Bidirectional",) for layer in layers)
            and all(_layer_ok(layer) for layer in layers))


def fused_kind(model) -> str | None:
    """The name of the fused pass for ``model`` (fused-lstm, fused-rnn, fused-rnn-masked or fused-graph), None
    if it has none."""
    if not fusable(model):
        return None
    structure = _structure(model)
    if isinstance(structure, _Graph):
        return "fused-graph"
    kinds = {_kind(layer) for layer in structure}
    if "Masking" in kinds:
        return "fused-rnn-masked"
    return "fused-lstm" if not kinds & {"GRU", "SimpleRNN", "Bidirectional"} else "fused-rnn"


def _value(variable):
    import tensorflow as tf

    return tf.convert_to_tensor(variable.value)


def _projection(kernel_t, bias):
    """The input side of a cell, ``W·x + b`` for each step: (time, features, batch) -> [(gates·units, batch)].

    One product per step: as fast here as one product for all steps, which
    XLA does not fuse into the steps.
    """
    import tensorflow as tf

    def project(sequence):
        return [tf.matmul(kernel_t, x) if bias is None else tf.matmul(kernel_t, x) + bias
                for x in tf.unstack(sequence)]

    return project


# Each cell below is ``(project, step)``: ``project`` its input side (see :func:`_projection`; an LSTM's is
# :func:`_stacked_inputs`, its step multiplies input and state at once), ``step`` its recurrent side. A step
# takes its step's projection (or input), batch last: ``step(projected, state, keep) -> (h, state)``,
# ``state`` None before the first step (zeros: its recurrent terms are skipped), ``keep`` None without a
# mask, else a (1, batch) bool, False where the step is masked. A masked step must leave h and the state
# exactly as they were (Keras selects the old ones); rather than selecting after the step, which makes XLA
# split and recompute the step's fusions, the gates are set so that the update is the identity: a forget
# or update gate of 1 and an input gate of 0 (so c_old·1 + 0·candidate = c_old and h_old·1 + 0·hh = h_old,
# exact for a finite candidate), and the LSTM keeps its output gate, so h = o·act(c) comes out the same.


def _is_activation(activation, name: str) -> bool:
    """Whether ``activation`` is Keras' own activation ``name``."""
    import keras

    return getattr(activation, "__name__", "") == name and activation is keras.activations.get(name)


def _stacked_inputs(sequence):
    """The input side of a cell that multiplies its input and its state at once: each step's (features, batch)."""
    import tensorflow as tf

    return tf.unstack(sequence)


def _lstm_cell(cell):
    """Keras' LSTM cell (gates i, f, c, o): state (h, c), with a mask (h, c, output gate).

    A step is one product, ``[W U]·[x; h] + b`` on the gates reordered to
    (i, f, o, c): one product writes each step's pre-activations once,
    where ``W·x`` and ``U·h`` apart wrote and read them twice (about a
    fifth of the pass's time on LSTM layers of 16 and 8 units). With Keras' sigmoid
    gates and tanh activation the four blocks take one ``tanh``
    (``sigmoid(z) = tanh(z/2)/2 + 1/2``, cheaper than XLA's sigmoid);
    otherwise the three gates take one call of their activation (a sigmoid
    again as that ``tanh``). On the reference model (relu LSTMs) the pass
    is about 1.4 times as fast as with the two products and Keras' sigmoid.
    """
    import tensorflow as tf

    units = cell.units
    order = np.r_[0:2 * units, 3 * units:4 * units, 2 * units:3 * units]  # i, f, o, c
    kernel_t = tf.transpose(tf.gather(_value(cell.kernel), order, axis=1))  # (4 units, features)
    stacked_t = tf.concat([kernel_t, tf.transpose(tf.gather(_value(cell.recurrent_kernel), order, axis=1))],
                          axis=1)  # (4 units, features + units)
    bias = None if cell.bias is None else tf.gather(_value(cell.bias), order)[:, None]
    activation, gate = cell.activation, cell.recurrent_activation
    if _is_activation(gate, "sigmoid") and _is_activation(activation, "tanh"):
        scale = tf.constant(np.r_[np.full(3 * units, 0.5), np.ones(units)].astype(np.float32)[:, None])
        shift = 1.0 - scale

        def activate(z):
            return tf.split(tf.tanh(z * scale) * scale + shift, 4, axis=0)
    else:
        gates = (lambda z: tf.tanh(z * 0.5) * 0.5 + 0.5) if _is_activation(gate, "sigmoid") else gate

        def activate(z):
            return (*tf.split(gates(z[:3 * units]), 3, axis=0), activation(z[3 * units:]))

    def step(x, state, keep):
        z = tf.matmul(kernel_t, x) if state is None else tf.matmul(stacked_t, tf.concat([x, state[0]], axis=0))
        i, f, o, g = activate(z if bias is None else z + bias)
        if keep is not None:
            i = tf.where(keep, i, 0.0)
            o = tf.where(keep, o, 0.0 if state is None else state[2])
        candidate = i * g
        if state is None:
            c = candidate
        else:
            if keep is not None:
                f = tf.where(keep, f, 1.0)
            c = f * state[1] + candidate
        h = o * activation(c)
        return h, ((h, c) if keep is None else (h, c, o))

    return _stacked_inputs, step


def _gru_cell(cell):
    """Keras' GRU cell (gates z, r, h; either ``reset_after``): state (h,)."""
    import tensorflow as tf

    units = cell.units
    kernel_t = tf.transpose(_value(cell.kernel))  # (3 units, features)
    recurrent_t = tf.transpose(_value(cell.recurrent_kernel))  # (3 units, units)
    input_bias = recurrent_bias = None
    if cell.bias is not None:
        bias = _value(cell.bias)
        if cell.reset_after:  # (2, 3 units): input and recurrent biases
            input_bias, recurrent_bias = bias[0][:, None], bias[1][:, None]
        else:
            input_bias = bias[:, None]
    activation, gate = cell.activation, cell.recurrent_activation

    def step(projected, state, keep):
        x_z, x_r, x_h = tf.split(projected, 3, axis=0)
        h_prev = None if state is None else state[0]
        if cell.reset_after:
            inner = None if h_prev is None else tf.matmul(recurrent_t, h_prev)
            if recurrent_bias is not None:
                inner = recurrent_bias if inner is None else inner + recurrent_bias
            if inner is None:  # no state yet and no recurrent bias: the recurrent terms are zero
                z, hh = gate(x_z), activation(x_h)
            else:
                r_z, r_r, r_h = tf.split(inner, 3, axis=0)
                z, r = gate(x_z + r_z), gate(x_r + r_r)
                hh = activation(x_h + r * r_h)
        elif h_prev is None:
            z, hh = gate(x_z), activation(x_h)
        else:
            r_z, r_r = tf.split(tf.matmul(recurrent_t[:2 * units], h_prev), 2, axis=0)
            z, r = gate(x_z + r_z), gate(x_r + r_r)
            hh = activation(x_h + tf.matmul(recurrent_t[2 * units:], r * h_prev))
        if keep is not None:
            z = tf.where(keep, z, 1.0)
        h = (1 - z) * hh if h_prev is None else z * h_prev + (1 - z) * hh
        return h, (h,)

    return _projection(kernel_t, input_bias), step


def _simple_rnn_cell(cell):
    """Keras' SimpleRNN cell: state (h,)."""
    import tensorflow as tf

    kernel_t = tf.transpose(_value(cell.kernel))  # (units, features)
    recurrent_t = tf.transpose(_value(cell.recurrent_kernel))  # (units, units)
    bias = None if cell.bias is None else _value(cell.bias)[:, None]

    def step(projected, state, keep):
        h = cell.activation(projected if state is None else projected + tf.matmul(recurrent_t, state[0]))
        if keep is not None:
            h = tf.where(keep, h, 0.0 if state is None else state[0])
        return h, (h,)

    return _projection(kernel_t, bias), step


CELLS = {"LSTM": _lstm_cell, "GRU": _gru_cell, "SimpleRNN": _simple_rnn_cell}


def _recurrent(layer, sequence, mask):
    """One recurrent layer on (time, features, batch) with an optional (time, batch) bool mask.

    Returns (time, units, batch) in the order the steps were processed
    (reversed with ``go_backwards``, as Keras does) if the layer returns
    sequences, else (units, batch) of the last processed step. A masked
    step outputs the last unmasked step's output (zeros before it), or
    zeros with ``zero_output_for_mask``.
    """
    import tensorflow as tf

    project, step = CELLS[_kind(layer)](layer.cell)
    projected = project(sequence)
    order = range(sequence.shape[0])
    if layer.go_backwards:
        order = reversed(order)
    state = None
    outputs = []
    for time in order:
        keep = None if mask is None else mask[time][None, :]
        output, state = step(projected[time], state, keep)
        if keep is not None and layer.zero_output_for_mask:
            output = tf.where(keep, output, 0.0)
        outputs.append(output)
    return tf.stack(outputs) if layer.return_sequences else outputs[-1]


def _bidirectional(layer, sequence, mask):
    """Keras' Bidirectional on (time, features, batch): its forward and backward layers, merged on the units axis."""
    import tensorflow as tf

    forward = _recurrent(layer.forward_layer, sequence, mask)
    backward = _recurrent(layer.backward_layer, sequence, mask)
    if layer.return_sequences:
        backward = tf.reverse(backward, [0])
    if layer.merge_mode == "concat":
        return tf.concat([forward, backward], axis=-2)
    if layer.merge_mode == "sum":
        return forward + backward
    if layer.merge_mode == "ave":
        return (forward + backward) / 2
    return forward * backward  # mul


def _dense(layer, tensor):
    """A Dense layer on (features, batch) or (time, features, batch), batch last."""
    import tensorflow as tf

    kernel_t = tf.transpose(_value(layer.kernel))  # (units, features)
    units = kernel_t.shape[0]
    if units == 1:
        # XLA turns a one-row product into a scalar loop that recomputes its producers (the last step's
        # gates, unvectorized: 0.7 of 4.4 ms a batch here); a second row of zeros keeps it a product.
        kernel_t = tf.concat([kernel_t, tf.zeros_like(kernel_t)], axis=0)
    out = tf.matmul(kernel_t, tensor) if tensor.shape.rank == 2 else tf.einsum("uf,tfb->tub", kernel_t, tensor)
    out = out[:units] if out.shape.rank == 2 else out[:, :units]
    if layer.bias is not None:
        out = out + _value(layer.bias)[:, None]
    # Applied batch-major, on the units' axis last, as Keras does: right for softmax and its kind too.
    order = (1, 0) if out.shape.rank == 2 else (2, 0, 1)
    inverse = (1, 0) if out.shape.rank == 2 else (1, 2, 0)
    return tf.transpose(layer.activation(tf.transpose(out, order)), inverse)


def _masking(layer, tensor):
    """Keras' Masking, batch last: the zeroed tensor and its mask, (time, batch) from (time, features, batch).

    On (features, batch) (after a layer that returned its last output) it
    zeroes the series whose features all equal ``mask_value``, as Keras
    does; no recurrent layer can follow to use that mask.
    """
    import tensorflow as tf

    features = tensor.shape.rank - 2
    mask = tf.reduce_any(tf.not_equal(tensor, layer.mask_value), axis=features)
    return tf.where(tf.expand_dims(mask, features), tensor, 0.0), mask


def _flatten(tensor):
    """Keras' Flatten of (batch, time, features) in the batch-last layout: (time * features, batch)."""
    import tensorflow as tf

    return tensor if tensor.shape.rank == 2 else tf.reshape(tensor, [-1, tf.shape(tensor)[-1]])


def _repeat_vector(layer, tensor):
    """Keras' RepeatVector, batch last: (features, batch) -> (n, features, batch)."""
    import tensorflow as tf

    return tf.broadcast_to(tensor[None], [layer.n, *tensor.shape[:-1], tf.shape(tensor)[-1]])


def _apply(layer, tensor, mask):
    """One layer of a chain or graph on a batch-last tensor and the mask it carries: (tensor, mask)."""
    kind = _kind(layer)
    if kind in RECURRENT_LAYERS:
        return _recurrent(layer, tensor, mask), (mask if layer.return_sequences else None)
    if kind == "Bidirectional":
        return _bidirectional(layer, tensor, mask), (mask if layer.return_sequences else None)
    if kind == "Dense":
        return _dense(layer, tensor), mask
    if kind == "Flatten":
        return _flatten(tensor), None
    if kind == "Masking":
        return _masking(layer, tensor)
    if kind == "RepeatVector":
        return _repeat_vector(layer, tensor), None
    return tensor, mask  # Dropout and InputLayer: identity at inference, mask passed on


def _merge(layer, tensors):
    """A Keras merge layer on batch-last tensors (no masks), in Keras' order of operations."""
    import tensorflow as tf

    kind = _kind(layer)
    if kind == "Concatenate":  # Keras' axis counts the batch first; here the batch is last
        return tf.concat(tensors, axis=layer.axis % tensors[0].shape.rank - 1)
    if kind == "Subtract":
        return tensors[0] - tensors[1]
    operation = {"Add": tf.add, "Average": tf.add, "Multiply": tf.multiply, "Maximum": tf.maximum,
                 "Minimum": tf.minimum}[kind]
    output = tensors[0]
    for tensor in tensors[1:]:
        output = operation(output, tensor)
    return output / len(tensors) if kind == "Average" else output


def _run_chain(layers, tensor):
    """The chain's layers on (time, features, batch): the output, batch last, and the mask it carries (or None)."""
    mask = None
    for layer in layers:
        tensor, mask = _apply(layer, tensor, mask)
    return tensor, mask


def _run_graph(graph: _Graph, tensors: list) -> list:
    """The graph on its inputs, batch last ((time, features, batch) or (features, batch)): its outputs."""
    values = {key: (tensor, None) for key, tensor in zip(graph.inputs, tensors, strict=True)}
    for layer, sources, target in graph.steps:
        if _kind(layer) in MERGE_LAYERS:
            values[target] = (_merge(layer, [values[source][0] for source in sources]), None)
        else:
            values[target] = _apply(layer, *values[sources[0]])
    return [values[key][0] for key in graph.outputs]


def _batch_last(array):
    """(batch, ...) -> (..., batch), float32."""
    import tensorflow as tf

    tensor = tf.convert_to_tensor(array, tf.float32)
    return tf.transpose(tensor, [*range(1, tensor.shape.rank), 0])


def fused_forward(model) -> Callable | None:
    """The model's fused, XLA-compiled forward pass, or None if it does not qualify.

    The returned function maps a float32 batch (batch, time, features), or
    for a model with several inputs a list of arrays in ``model.inputs``
    order, to predictions (batch, outputs): the model's outputs flattened
    per series and concatenated in ``model.outputs`` order.
    """
    if not fusable(model):
        return None
    import tensorflow as tf

    structure = _structure(model)

    if isinstance(structure, _Graph):
        def call(batch):
            arrays = batch if isinstance(batch, (list, tuple)) else [batch]
            outputs = _run_graph(structure, [_batch_last(array) for array in arrays])
            return tf.transpose(tf.concat([_flatten(output) for output in outputs], axis=0))
    else:
        def call(batch):
            output, _ = _run_chain(structure, _batch_last(batch))  # (time, features, batch) in
            return tf.transpose(_flatten(output))

    shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
    if any(None in shape for shape in shapes):
        compiled = tf.function(call, jit_compile=True, autograph=False)  # one trace per length: the loop is unrolled
    else:
        specs = [tf.TensorSpec((None, *shape), tf.float32) for shape in shapes]
        signature = [specs[0]] if len(specs) == 1 else [specs]
        compiled = tf.function(call, jit_compile=True, autograph=False, input_signature=signature)
    from .forward import direct_calls  # forward imports this module

    compiled = direct_calls(compiled)
    return lambda batch: compiled(batch).numpy()
