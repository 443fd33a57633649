"""The reference finding with a really trained LSTM: x1 and x2 matter, x3 does not."""

import numpy as np
import pytest

from rnnimp import reference, sensitivity_importance

pytestmark = pytest.mark.slow


def test_reference_model_has_908_parameters():
    assert reference.build_model(0).count_params() == 908


def test_warm_up_with_a_fresh_build_compiles_what_the_trained_model_uses():
    # Workers compile from the architecture of a fresh build while the driver trains another one: the
    # two must have the same architecture JSON, or the compiled forward pass is never used.
    from rnnimp import worker
    from rnnimp.api import Options, prepare
    from rnnimp.modelio import ModelSpec, architecture

    assert architecture(reference.build_model(0)) == architecture(reference.build_model(1))
    worker.warm_up(architecture(reference.build_model(0)), 64, ((reference.TIME_STEPS, reference.N_FEATURES),), True)
    compiled = dict(worker._EVALUATORS)
    trained = reference.build_model(2)
    request = prepare(trained, reference.evaluation_sample(0, 64), options=Options(batch_size=64, shard_size=64))
    worker.evaluator_for(ModelSpec.from_model(trained), request.settings, request.sample)
    assert worker._EVALUATORS.keys() == compiled.keys()


def test_training_draws_the_same_batches_for_the_same_seed():
    import keras

    from rnnimp.seeding import Stream, generator

    # Two epochs of one step of 5 series, plainly compiled (no XLA: cheap to compile), twice with one seed.
    first, again = (reference.train_model(3, epochs=2, steps_per_epoch=1, batch_size=5, fast=False)
                    for _ in range(2))
    assert first.losses == again.losses and len(first.losses) == 2
    for a, b in zip(first.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The first batch is the first 5 series of the seed's training stream: Keras reports a one-step
    # epoch's loss before its update, so it is their loss under the seed's initial weights.
    inputs, targets = reference.make_series(generator(3, Stream.TRAINING), 5)
    np.testing.assert_allclose(targets, inputs[:, :, 0] * inputs[:, :, 1])
    loss = float(keras.losses.BinaryCrossentropy()(targets, reference.build_model(3)(inputs)))
    assert first.losses[0] == pytest.approx(loss, rel=1e-5)


def test_evaluation_sample_is_the_inputs_of_make_series_on_its_stream():
    from rnnimp.seeding import Stream, generator

    inputs, _ = reference.make_series(generator(4, Stream.EVALUATION_SAMPLE), 300)
    np.testing.assert_array_equal(reference.evaluation_sample(4, 300), inputs)


def test_trained_model_depends_on_x1_and_x2_not_x3(reference_training):
    assert reference_training.final_loss < 0.45
    sample = reference.evaluation_sample(0, 250)
    result = sensitivity_importance(reference_training.model, sample, n_repeats=30, random_state=0,
                                    feature_names=reference.FEATURE_NAMES)
    s = result.summary
    x1, x2, x3 = 0, 1, 2
    assert s.mean[x1] >= 10 * s.mean[x3] and s.mean[x2] >= 10 * s.mean[x3]
    for relevant in (x1, x2):
        assert s.t_low[relevant] > s.t_high[x3]
        assert s.bootstrap_low[relevant] > s.bootstrap_high[x3]
    assert s.rank[x3] == 3
