"""The fused forward pass against ``model(x)``, on models the test builds with seeded weights."""

import numpy as np
import pytest

from rnnimp import reference
from rnnimp.lstm import fusable, fused_forward, fused_kind
from rnnimp.forward import forward_kind, model_forward

keras = pytest.importorskip("keras")
L = keras.layers

# Steps of the models' input: XLA unrolls the fused loop over them, so its compile time, most of this
# file's time, grows with them; 5 leave room for pre- and post-padding of every length 0..5.
TIME_STEPS = 5


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.6, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def sequential(*layers, time_steps=TIME_STEPS, features=4):
    return keras.Sequential([keras.Input((time_steps, features)), *layers])


def functional(*layers, time_steps=TIME_STEPS, features=4):
    """A functional model that calls ``layers`` one after the other on one keras.Input."""
    inputs = tensor = keras.Input((time_steps, features))
    for layer in layers:
        tensor = layer(tensor)
    return keras.Model(inputs, tensor)


def series(n_series, time_steps=TIME_STEPS, features=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n_series, time_steps, features)).astype(np.float32)


def padded(n_series=300, time_steps=TIME_STEPS, features=4, seed=0, pad_value=0.0):
    """Series of random lengths 0..time_steps, a third pre-padded and the rest post-padded with ``pad_value``."""
    rng = np.random.default_rng(seed)
    batch = series(n_series, time_steps, features, seed)
    lengths = rng.integers(0, time_steps + 1, n_series)
    lengths[:3] = time_steps, 0, 1  # a full series, a fully masked one and a single step
    for row, length in enumerate(lengths):
        if row % 3 == 0:
            batch[row, :time_steps - length] = pad_value  # pre-padded: the series ends at the last step
        else:
            batch[row, length:] = pad_value  # post-padded
    return batch


def assert_rebuilt_alike(model):
    """The workers (and the driver lane) run the model rebuilt from its architecture JSON; the run's
    metadata names the pass of the model the user gave: both must take the same pass."""
    from rnnimp.modelio import architecture

    assert forward_kind(keras.models.model_from_json(architecture(model)), True) == forward_kind(model, True)


def assert_matches_keras(model, batch=None, n_series=300, seed=0, forward=None):
    """The fused forward pass (``forward``, else a new one) against ``model(batch)``.

    XLA compiles once per batch shape and per ``fused_forward``: tests that call this twice on one model
    pass the forward they built and batches of one shape, so that it is compiled once.
    """
    if batch is None:
        batch = series(n_series, *model.inputs[0].shape[1:], seed=seed)
    expected = np.asarray(model(batch, training=False)).reshape(len(batch), -1)
    actual = (forward or fused_forward(model))(batch)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)


def test_reference_lstm_matches_keras():
    model = randomize(reference.build_model(0), 1)
    assert fusable(model) and fused_kind(model) == "fused-lstm" and forward_kind(model, True) == "fused-lstm"
    assert forward_kind(model, False) == "keras"
    assert_matches_keras(model)


@pytest.mark.parametrize("build", [
    lambda: reference.build_model(0),
    lambda: functional(L.GRU(5, return_sequences=True), L.Bidirectional(L.SimpleRNN(3)), L.Dense(2)),
    lambda: sequential(L.Masking(), L.Bidirectional(L.LSTM(4, return_sequences=True)), L.GRU(3)),
], ids=["lstm", "gru-bidirectional-functional", "masked"])
def test_weights_assigned_after_tracing_are_used(build):
    keras.utils.set_random_seed(0)
    model = randomize(build(), 1)
    forward = fused_forward(model)
    batch = padded(64, *model.inputs[0].shape[1:])
    before = forward(batch)
    randomize(model, 2)
    after = forward(batch)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, np.asarray(model(batch)).reshape(64, -1), rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("layers", [
    lambda: [L.LSTM(8), L.Dense(3, activation="softmax")],
    lambda: [L.LSTM(6, return_sequences=True, use_bias=False), L.Dropout(0.5),
             L.Dense(2, activation="tanh"), L.Flatten()],
    lambda: [L.LSTM(5, return_sequences=True, activation="relu", recurrent_activation="hard_sigmoid"),
             L.LSTM(4), L.Dense(1, use_bias=False)],
    lambda: [L.LSTM(3, return_sequences=True)],
    lambda: [L.LSTM(4, go_backwards=True, return_sequences=True, dropout=0.3, recurrent_dropout=0.4)],
], ids=["last-state-dense-softmax", "no-bias-dropout-per-step-dense", "relu-hard-sigmoid-stack", "sequence-out",
        "backwards-dropouts"])
def test_other_lstm_stacks_match_keras(layers):
    keras.utils.set_random_seed(3)
    model = randomize(sequential(*layers()), 4)
    assert fused_kind(model) == "fused-lstm"
    assert_matches_keras(model)


RNN_CHAINS = {
    "gru-reset-after": lambda: [L.GRU(6), L.Dense(2)],
    "gru-reset-before": lambda: [L.GRU(6, reset_after=False, return_sequences=True), L.Flatten()],
    "gru-no-bias-both": lambda: [L.GRU(5, use_bias=False, return_sequences=True),
                                 L.GRU(3, use_bias=False, reset_after=False)],
    "gru-activations": lambda: [L.GRU(4, activation="relu", recurrent_activation="hard_sigmoid",
                                      go_backwards=True, recurrent_dropout=0.3)],
    "gru-implementation-1": lambda: [L.GRU(4, implementation=1, return_sequences=True)],
    "simple-rnn": lambda: [L.SimpleRNN(6, return_sequences=True), L.SimpleRNN(3), L.Dense(1, activation="sigmoid")],
    "simple-rnn-no-bias-relu-backwards": lambda: [L.SimpleRNN(5, use_bias=False, activation="relu",
                                                              go_backwards=True, return_sequences=True)],
    "simple-rnn-linear-unrolled": lambda: [L.SimpleRNN(3, activation=None, unroll=True)],
    "bidirectional-concat": lambda: [L.Bidirectional(L.LSTM(4)), L.Dense(2)],
    "bidirectional-sum-sequences": lambda: [L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode="sum"),
                                            L.Dense(1)],
    "bidirectional-mul-backwards-inside": lambda: [
        L.Bidirectional(L.SimpleRNN(3, go_backwards=True, return_sequences=True), merge_mode="mul",
                        backward_layer=L.SimpleRNN(3, return_sequences=True))],
    "bidirectional-ave-stack": lambda: [L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="ave"),
                                        L.Bidirectional(L.GRU(3, reset_after=False))],
    "bidirectional-mixed-backward-layer": lambda: [
        L.Bidirectional(L.LSTM(3, return_sequences=True),
                        backward_layer=L.GRU(3, return_sequences=True, go_backwards=True))],
    "mixed-stack": lambda: [L.LSTM(5, return_sequences=True), L.Dropout(0.2), L.GRU(4, return_sequences=True),
                            L.Dense(3, activation="relu"), L.SimpleRNN(2)],
    "encoder-repeated-decoder": lambda: [L.LSTM(4), L.RepeatVector(3), L.GRU(3, return_sequences=True),
                                         L.Dense(1)],
}


# Every chain as a Sequential; a few also as functional models (the same layers, built by calls).
FUNCTIONAL_RNN_CHAINS = ("gru-reset-before", "simple-rnn", "bidirectional-ave-stack", "mixed-stack")


@pytest.mark.parametrize("name,build", [(name, sequential) for name in RNN_CHAINS]
                         + [(name, functional) for name in FUNCTIONAL_RNN_CHAINS])
def test_recurrent_chains_match_keras(name, build):
    keras.utils.set_random_seed(3)
    model = randomize(build(*RNN_CHAINS[name]()), 4)
    assert fused_kind(model) == ("fused-lstm" if name.startswith("lstm") else "fused-rnn")
    assert forward_kind(model, True) == fused_kind(model)
    assert_matches_keras(model)


def test_functional_lstm_chain_is_fused_lstm():
    model = randomize(functional(L.LSTM(4, return_sequences=True), L.LSTM(3), L.Dense(1)), 1)
    assert fused_kind(model) == "fused-lstm"
    assert_matches_keras(model)


def test_functional_chain_reusing_a_layer_matches_keras():
    shared = L.Dense(4)
    model = randomize(functional(shared, L.GRU(4, return_sequences=True), shared, L.LSTM(2)), 1)
    assert fused_kind(model) == "fused-rnn"
    assert_matches_keras(model)


MASKED_CHAINS = {
    "lstm-last": lambda: [L.Masking(), L.LSTM(5), L.Dense(2)],
    "lstm-sequences": lambda: [L.Masking(), L.LSTM(4, return_sequences=True)],
    "gru-stack-dense-between": lambda: [L.Masking(), L.GRU(5, return_sequences=True), L.Dense(3), L.Dropout(0.1),
                                        L.GRU(3, reset_after=False, return_sequences=True), L.Flatten()],
    "simple-rnn-backwards": lambda: [L.Masking(), L.SimpleRNN(4, go_backwards=True, return_sequences=True),
                                     L.SimpleRNN(2, go_backwards=True)],
    "zero-output-for-mask": lambda: [L.Masking(), L.LSTM(4, return_sequences=True, zero_output_for_mask=True),
                                     L.GRU(3, zero_output_for_mask=True)],
    "bidirectional-sequences": lambda: [L.Masking(), L.Bidirectional(L.LSTM(4, return_sequences=True)),
                                        L.Bidirectional(L.GRU(3), merge_mode="ave")],
    "bidirectional-sum-sequences-out": lambda: [
        L.Masking(), L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="sum")],
    "dense-before-masking": lambda: [L.Dense(4), L.Masking(mask_value=0.0), L.LSTM(3)],
    "masking-last-outputs": lambda: [L.Masking(), L.SimpleRNN(2, activation="relu"), L.Masking(), L.Dense(2)],
}


OUTPUTS_CARRY_THE_MASK = {"lstm-sequences", "bidirectional-sum-sequences-out", "masking-last-outputs"}


@pytest.mark.parametrize("build", [sequential, functional], ids=["sequential", "functional"])
@pytest.mark.parametrize("name", MASKED_CHAINS)
def test_masked_chains_match_keras_on_padded_series(name, build):
    keras.utils.set_random_seed(3)
    model = randomize(build(*MASKED_CHAINS[name]()), 4)
    # Outputs that carry Keras' mask run as model(x), whose mask weights the metric (rnnimp.forward).
    run_as = "keras-xla" if name in OUTPUTS_CARRY_THE_MASK else "fused-rnn-masked"
    assert fused_kind(model) == "fused-rnn-masked" and forward_kind(model, True) == run_as
    assert_rebuilt_alike(model)
    assert_matches_keras(model, padded())


def test_masking_with_a_mask_value_and_no_padding():
    model = randomize(sequential(L.Masking(mask_value=-1.0), L.GRU(4, return_sequences=True), L.LSTM(2)), 2)
    forward = fused_forward(model)
    assert_matches_keras(model, padded(pad_value=-1.0), forward=forward)
    assert_matches_keras(model, series(300), forward=forward)  # nothing masked (the same shape: one compile)


@pytest.mark.parametrize("cell", [L.SimpleRNN, L.GRU, L.LSTM], ids=["simple-rnn", "gru", "lstm"])
def test_masked_steps_carry_the_state_and_output_over(cell):
    """Keras 3.15's semantics, checked directly: a plain layer repeats its last output exactly at masked
    steps (zeros before the first unmasked one); a layer in Bidirectional returning sequences outputs zeros."""
    model = randomize(sequential(L.Masking(), cell(3, return_sequences=True), time_steps=5, features=2), 1)
    batch = series(2, 5, 2)
    batch[0, 3:] = 0.0
    batch[1, :2] = 0.0
    forward = fused_forward(model)
    out = forward(batch).reshape(2, 5, 3)
    np.testing.assert_array_equal(out[0, 3], out[0, 2])
    np.testing.assert_array_equal(out[0, 4], out[0, 2])
    np.testing.assert_array_equal(out[1, :2], 0.0)
    assert np.all(out[1, 2:] != 0.0)
    unmasked = fused_forward(randomize(sequential(cell(3), time_steps=3, features=2), 1))(batch[1:, 2:])
    np.testing.assert_allclose(out[1, 4], unmasked[0], rtol=1e-6, atol=1e-6)  # the padding never happened
    bidirectional = randomize(sequential(L.Masking(), L.Bidirectional(cell(3, return_sequences=True)),
                                         time_steps=5, features=2), 1)
    bidirectional_forward = fused_forward(bidirectional)
    out = bidirectional_forward(batch).reshape(2, 5, 6)
    np.testing.assert_array_equal(out[0, 3:], 0.0)
    np.testing.assert_array_equal(out[1, :2], 0.0)
    assert_matches_keras(model, batch, forward=forward)
    assert_matches_keras(bidirectional, batch, forward=bidirectional_forward)


def graph_inputs(model, n_series=300, seed=0):
    """Random inputs for each of the model's inputs; every sequence input padded (random lengths, see
    :func:`padded`), which a model without a Masking layer reads as data."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(n_series, *tensor.shape[1:])).astype(np.float32) for tensor in model.inputs]
    return [padded(n_series, *array.shape[1:], seed=seed + index) if array.ndim == 3 else array
            for index, array in enumerate(arrays)]


def assert_graph_matches_keras(model, arrays):
    outputs = model(arrays if len(arrays) > 1 else arrays[0], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    expected = np.concatenate([np.asarray(output).reshape(len(arrays[0]), -1) for output in outputs], axis=1)
    actual = fused_forward(model)(arrays if len(arrays) > 1 else arrays[0])
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)


def static_concatenated():
    sequence, static = keras.Input((TIME_STEPS, 4)), keras.Input((2,))
    return keras.Model([sequence, static], L.Dense(1)(L.Concatenate()([L.LSTM(3)(sequence), static])))


def branching():
    inputs = keras.Input((7, 4))
    return keras.Model(inputs, L.Concatenate()([L.LSTM(3)(inputs), L.GRU(2)(inputs)]))


def two_sequences_added():
    first, second = keras.Input((7, 4)), keras.Input((7, 4))
    return keras.Model([first, second], L.LSTM(3)(L.Add()([first, second])))


def static_repeated_over_time():
    """A static covariate repeated over the steps and joined to the features; two outputs."""
    static, sequence = keras.Input((3,)), keras.Input((TIME_STEPS, 4))
    repeated = L.RepeatVector(TIME_STEPS)(L.Dense(2, activation="tanh")(static))
    joined = L.Concatenate()([sequence, repeated])
    return keras.Model([static, sequence], [L.Dense(1)(L.LSTM(4)(joined)), L.Dense(2)(static)])


def masked_sequence_and_static():
    sequence, static = keras.Input((TIME_STEPS, 4)), keras.Input((2,))
    hidden = L.GRU(3)(L.LSTM(4, return_sequences=True)(L.Masking()(sequence)))
    return keras.Model([sequence, static], L.Dense(2)(L.Concatenate()([hidden, L.Dense(2)(static)])))


def steps_joined_and_merged():
    """Two series joined along time; element-wise merges of branches, each with its inputs in call order."""
    first, second = keras.Input((3, 4)), keras.Input((2, 4))
    sequences = L.GRU(3, return_sequences=True)(L.Concatenate(axis=1)([first, second]))
    a, b, c = L.Dense(3)(sequences), L.Dense(3, activation="relu")(sequences), L.SimpleRNN(3, return_sequences=True)(sequences)
    merged = [L.Subtract()([a, b]), L.Multiply()([a, b, c]), L.Average()([a, b, c]), L.Maximum()([a, c]),
              L.Minimum()([c, b])]
    return keras.Model([first, second], L.Flatten()(L.Concatenate(axis=-2)(merged)))


def shared_layer_on_two_inputs():
    first, second = keras.Input((TIME_STEPS, 4)), keras.Input((TIME_STEPS, 4))
    shared = L.LSTM(3)
    return keras.Model([first, second], L.Average()([shared(first), shared(second)]))


GRAPHS = {"static-concatenated": static_concatenated, "branching": branching,
          "two-sequences-added": two_sequences_added, "static-repeated-over-time": static_repeated_over_time,
          "masked-sequence-and-static": masked_sequence_and_static, "steps-joined-and-merged": steps_joined_and_merged,
          "shared-layer-on-two-inputs": shared_layer_on_two_inputs}


@pytest.mark.parametrize("name", GRAPHS)
def test_functional_graphs_match_keras(name):
    keras.utils.set_random_seed(3)
    model = randomize(GRAPHS[name](), 4)
    assert fusable(model) and fused_kind(model) == "fused-graph" and forward_kind(model, True) == "fused-graph"
    assert_rebuilt_alike(model)
    assert_graph_matches_keras(model, graph_inputs(model))


def merged_masked_sequences():
    inputs = keras.Input((7, 4))
    masked = L.Masking()(inputs)
    return keras.Model(inputs, L.LSTM(2)(L.Add()([L.LSTM(3, return_sequences=True)(masked),
                                                  L.GRU(3, return_sequences=True)(masked)])))


def dot_merge():
    inputs = keras.Input((7, 4))
    return keras.Model(inputs, L.Dot(axes=1)([L.LSTM(3)(inputs), L.GRU(3)(inputs)]))


def graph_called_with_training():
    sequence, static = keras.Input((7, 4)), keras.Input((2,))
    return keras.Model([sequence, static], L.Concatenate()([L.LSTM(3)(sequence), L.Dropout(0.5)(static, training=True)]))


def integer_input():
    sequence, codes = keras.Input((7, 4)), keras.Input((1,), dtype="int32")
    return keras.Model([sequence, codes], L.Concatenate()([L.LSTM(3)(sequence), L.Flatten()(L.Embedding(5, 2)(codes))]))


def nested_model():
    inputs = keras.Input((7, 4))
    inner = keras.Model(inputs, L.LSTM(3)(inputs))
    outer_inputs = keras.Input((7, 4))
    return keras.Model(outer_inputs, L.Dense(1)(inner(outer_inputs)))


def static_only():
    first, second = keras.Input((3,)), keras.Input((3,))
    return keras.Model([first, second], L.Dense(1)(L.Add()([first, second])))


def mask_of_another_value():
    """A Masking layer's output, passed a mask of the user's own (padding 1.0 instead of its 0.0)."""
    inputs = keras.Input((7, 4))
    own_mask = keras.ops.any(keras.ops.not_equal(inputs, 1.0), axis=-1)
    return keras.Model(inputs, L.LSTM(3)(L.Masking(0.0)(inputs), mask=own_mask))


@pytest.mark.parametrize("build", [
    lambda: functional(L.Masking(), L.LSTM(4, return_sequences=True), L.GRU(3)),
    lambda: sequential(L.Masking(), L.Bidirectional(L.LSTM(3))),
    masked_sequence_and_static,
], ids=["masked-chain", "masked-sequential", "masked-graph"])
def test_models_loaded_from_a_file_keep_their_fused_pass(build, tmp_path):
    """Keras records a loaded model's Masking mask as the ops that compute it; the fused pass still applies."""
    keras.utils.set_random_seed(3)
    model = randomize(build(), 5)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert fused_kind(loaded) == fused_kind(model) and fused_kind(loaded).startswith("fused")
    assert_graph_matches_keras(loaded, graph_inputs(loaded))


class LookalikeLSTM(L.LSTM):
    pass


def custom_tanh(x):
    return keras.activations.tanh(x)


def called_with_training():
    inputs = keras.Input((7, 4))
    return keras.Model(inputs, L.LSTM(3)(L.Dropout(0.5)(inputs, training=True)))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.lstm = L.LSTM(3)

    def call(self, inputs):
        return self.lstm(inputs)


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 7, 4), np.float32))
    return model


@pytest.mark.parametrize("build", [
    lambda: sequential(L.Dense(2), L.Flatten()),
    lambda: sequential(L.LSTM(4, dtype="mixed_float16")),
    lambda: sequential(L.GRU(4, dtype="float64")),
    lambda: keras.Model(*(lambda i: (i, L.LSTM(4)(i)))(keras.Input((7, 4), dtype="float64"))),
    lambda: sequential(L.LSTM(4, activation="softmax")),
    lambda: sequential(L.GRU(4, recurrent_activation=custom_tanh)),
    lambda: sequential(L.SimpleRNN(4, activation=keras.ops.tanh)),
    lambda: keras.Sequential([keras.Input(batch_shape=(16, 7, 4)), L.LSTM(4, stateful=True)]),
    lambda: sequential(L.LSTM(4, return_sequences=True), L.LayerNormalization(), L.Flatten()),
    lambda: sequential(L.Conv1D(3, 2), L.LSTM(2)),
    lambda: sequential(LookalikeLSTM(4)),
    lambda: sequential(L.Bidirectional(L.LSTM(4), merge_mode=None)),
    lambda: sequential(L.LSTM(4, return_sequences=True), L.Flatten(data_format="channels_first")),
    called_with_training,
    subclassed,
    merged_masked_sequences,
    dot_merge,
    graph_called_with_training,
    integer_input,
    nested_model,
    static_only,
    mask_of_another_value,
], ids=["no-recurrent", "mixed-precision", "float64-layer", "float64-input", "softmax-cell", "custom-activation",
        "ops-activation", "stateful", "layer-normalization", "conv1d", "lstm-subclass", "merge-mode-none",
        "flatten-channels-first", "called-with-training", "subclassed", "merged-masked-sequences", "dot-merge",
        "graph-called-with-training", "integer-input", "nested-model", "static-only",
        "mask-of-another-value"])
def test_other_models_fall_back_to_keras(build):
    model = build()
    assert not fusable(model) and fused_forward(model) is None and fused_kind(model) is None
    assert forward_kind(model, True) == "keras-xla" and forward_kind(model, False) == "keras"


@pytest.mark.parametrize("build", [
    lambda: sequential(L.LSTM(4, activation="softmax")),
    lambda: sequential(L.LSTM(4, return_sequences=True), L.LayerNormalization(), L.Flatten()),
], ids=["softmax-cell", "layer-normalization"])
def test_fallback_runs_model(build):
    model = build()
    batch = series(16)
    np.testing.assert_allclose(model_forward(model, jit_compile=False)(batch),
                               np.asarray(model(batch)).reshape(16, -1).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_input_of_unknown_length_is_unrolled_over_the_batch_length():
    keras.utils.set_random_seed(5)
    model = randomize(sequential(L.LSTM(5, return_sequences=True), L.Bidirectional(L.GRU(3)), time_steps=None), 6)
    forward = fused_forward(model)
    for time_steps in (6, 9):
        batch = series(32, time_steps)
        np.testing.assert_allclose(forward(batch), np.asarray(model(batch)), rtol=1e-6, atol=2e-6)


def test_batches_of_several_sizes_share_one_trace():
    model = randomize(sequential(L.GRU(3)), 1)
    forward = fused_forward(model)
    for n_series in (5, 17, 64):
        batch = series(n_series)
        np.testing.assert_allclose(forward(batch), np.asarray(model(batch)), rtol=1e-6, atol=2e-6)


def test_direct_calls_run_the_tf_functions_own_trace_bit_for_bit():
    import tensorflow as tf

    from rnnimp.forward import direct_calls

    model = randomize(sequential(L.LSTM(4, return_sequences=True), L.GRU(3)), 2)
    static = keras.Input((2,))
    sequence = keras.Input((TIME_STEPS, 4))
    two_inputs = keras.Model([sequence, static], L.Dense(2)(L.Concatenate()([L.LSTM(3)(sequence), static])))
    for build, batches in ((lambda b: model(b, training=False), [series(n) for n in (5, 17, 5)]),
                           (lambda b: two_inputs(b, training=False),
                            [[series(n), series(n, 1, 2)[:, 0]] for n in (8, 3, 8)])):
        compiled = tf.function(build, jit_compile=True, reduce_retracing=True)
        direct = direct_calls(compiled)
        for batch in batches:  # a new shape, then one seen before
            np.testing.assert_array_equal(direct(batch).numpy(), compiled(batch).numpy())


def test_flat_call_skips_the_argument_binding_only_where_it_gives_the_same_outputs():
    import tensorflow as tf

    from rnnimp.forward import flat_call

    model = randomize(sequential(L.LSTM(4)), 3)
    batch = series(6)
    concrete = tf.function(lambda b: (model(b, training=False), 2.0 * b), jit_compile=True).get_concrete_function(batch)
    fast = flat_call(concrete, batch)
    assert fast is not concrete  # this TensorFlow has the private call, and it agrees
    other_batch = series(6) + 1.0
    for ours, theirs in zip(fast(other_batch), concrete(other_batch), strict=True):  # a tuple, as concrete's
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())

    class Disagreeing:  # another TensorFlow whose private call means something else
        captured_inputs = ()

        def __call__(self, batch):
            return tf.constant([1.0])

        def _call_flat(self, tensors, captured):
            return tf.constant([2.0])

    class Without:  # a TensorFlow without it
        def __call__(self, batch):
            return tf.constant([1.0])

    for other in (Disagreeing(), Without()):
        assert flat_call(other, batch) is other
