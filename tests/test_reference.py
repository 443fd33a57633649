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
    a = reference.make_series(np.random.default_rng(0), 5)
    b = reference.make_series(np.random.default_rng(0), 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], a[0][:, :, 0] * a[0][:, :, 1])


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
