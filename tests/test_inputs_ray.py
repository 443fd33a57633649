"""A two-input model on Ray: the same effects, bit for bit, with 1 and 2 workers and in process."""

import numpy as np
import pytest

from rnnimp import sensitivity_importance
from test_inputs import two_input_linear_model

pytestmark = pytest.mark.slow


def masked_two_input_model():
    """Masked sequence through a GRU, plus static covariates: not linear, and not fusable."""
    import keras

    keras.utils.set_random_seed(2)
    seq = keras.Input((5, 2), name="seq")
    static = keras.Input((3,), name="static")
    hidden = keras.layers.GRU(4)(keras.layers.Masking(0.0)(seq))
    both = keras.layers.Concatenate()([hidden, keras.layers.Dense(2)(static)])
    return keras.Model({"seq": seq, "static": static}, keras.layers.Dense(2)(both))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    seq = rng.uniform(0.5, 1.5, size=(70, 5, 2)).astype(np.float32)
    for s, length in enumerate(rng.integers(2, 6, size=70)):
        seq[s, length:] = 0.0
    return {"seq": seq, "static": rng.normal(size=(70, 3)).astype(np.float32)}


OPTIONS = dict(n_repeats=3, random_state=9, batch_size=16, shard_size=32,
               groups={"mixed": ["seq.x2", "static.x1"]})


@pytest.mark.parametrize("num_workers", [1, 2])
def test_two_input_effects_are_bit_identical_on_ray(local_ray, data, num_workers):
    executor = local_ray.RayExecutor(num_workers=num_workers)
    try:  # the actors hold the module's CPUs until shut down
        for build, perturbation in ((masked_two_input_model, "noise"), (masked_two_input_model, "permute"),
                                    (two_input_linear_model, "noise")):
            model = build()
            X = data if build is masked_two_input_model else {"seq": data["seq"][:, :4], "static": data["static"]}
            local = sensitivity_importance(model, X, perturbation=perturbation, **OPTIONS)
            remote = sensitivity_importance(model, X, perturbation=perturbation, executor=executor, **OPTIONS)
            assert len(executor.actors) == num_workers
            np.testing.assert_array_equal(remote.effects, local.effects)
            assert np.isfinite(local.effects).all() and (local.effects[:2] > 0).all()
    finally:
        executor.shutdown()
