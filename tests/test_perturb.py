import numpy as np
import pytest

from rnnimp.inputs import InputLayout
from rnnimp.perturb import Perturbation, perturb_inputs, sample_noise, standard_normal_stream


def test_noise_changes_only_the_target_feature_at_every_step():
    rng = np.random.default_rng(1)
    series = rng.random((6, 5, 3), dtype=np.float32)
    perturbed = series.copy()
    changed = perturb_inputs([perturbed], [series], 0, (1,), None, Perturbation("noise", scales=(0.5, 0.2, 0.5)),
                             (7, 8), InputLayout.single(5, 3), [None])

    noise = sample_noise((7, 8), 0, 6, 5)
    assert changed == [0] and perturbed.dtype == series.dtype
    np.testing.assert_array_equal(perturbed[:, :, [0, 2]], series[:, :, [0, 2]])
    assert np.all(perturbed[:, :, 1] != series[:, :, 1])  # every sample, every step
    np.testing.assert_allclose(perturbed[:, :, 1] - series[:, :, 1], 0.2 * noise[:, :, 0], atol=1e-6)


def test_noise_on_a_group_uses_one_noise_column_per_feature():
    series = np.zeros((2, 3, 4), dtype=np.float32)
    perturbed = series.copy()
    perturb_inputs([perturbed], [series], 0, (0, 3), None, Perturbation("noise", scales=(1.0, 1.0, 1.0, 2.0)),
                   (1, 1), InputLayout.single(3, 4), [None])
    noise = sample_noise((1, 1), 0, 2, 3, n_features=2)
    np.testing.assert_array_equal(perturbed[:, :, 0], noise[:, :, 0].astype(np.float32))
    np.testing.assert_array_equal(perturbed[:, :, 3], (2.0 * noise[:, :, 1]).astype(np.float32))
    assert not perturbed[:, :, 1:3].any()


class _RowsOnly:
    """A sample that, like a dataset view, can only be indexed by rows."""

    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, rows):
        return self.array[rows]


@pytest.mark.parametrize("as_view", [False, True], ids=["array", "rows-only view"])
@pytest.mark.parametrize("step", [None, 2])
def test_permute_gives_each_feature_of_a_group_its_donors_values(step, as_view):
    rng = np.random.default_rng(4)
    series = rng.random((12, 4, 4), dtype=np.float32)
    sources = rng.permutation(12)
    first, rows = 5, 6  # a batch that starts inside the sample
    perturbed = series[first:first + rows].copy()
    sample = _RowsOnly(series) if as_view else series
    changed = perturb_inputs([perturbed], [sample], first, (3, 1), step, Perturbation("permute"), (1, 1),
                             InputLayout.single(4, 4), [None], sources)

    donors = series[sources[first:first + rows]]
    steps = slice(None) if step is None else slice(step, step + 1)
    expected = series[first:first + rows].copy()
    expected[:, steps, 3] = donors[:, steps, 3]
    expected[:, steps, 1] = donors[:, steps, 1]
    assert changed == [0]
    np.testing.assert_array_equal(perturbed, expected)


def test_noise_of_a_sample_does_not_depend_on_where_a_shard_starts():
    whole = sample_noise((3, 4), 0, 50, 7)
    for start, count in [(0, 1), (1, 3), (13, 20), (49, 1)]:
        np.testing.assert_array_equal(sample_noise((3, 4), start, count, 7), whole[start:start + count])


def test_stream_is_reproducible_and_key_dependent():
    a = standard_normal_stream((1, 2), 5, 1000)
    np.testing.assert_array_equal(a, standard_normal_stream((1, 2), 5, 1000))
    assert not np.array_equal(a, standard_normal_stream((1, 3), 5, 1000))
    assert not np.array_equal(a, standard_normal_stream((2, 2), 5, 1000))


def test_stream_is_standard_normal():
    from scipy import stats

    values = standard_normal_stream((11, 12), 0, 200_000)
    assert abs(values.mean()) < 0.01
    assert abs(values.std() - 1) < 0.01
    assert stats.kstest(values, "norm").pvalue > 0.001


def test_stream_refuses_negative_positions():
    with pytest.raises(ValueError):
        standard_normal_stream((1, 2), -1, 3)


def test_stream_values_are_pinned():
    # The noise of every published result: a change here changes every effect rnnimp computes.
    np.testing.assert_array_equal(
        standard_normal_stream((1, 2), 5, 4),
        [-0.18150899814788515, -0.42782964638856996, 0.6397906786804405, 0.3526430445840789])


def fresh_philox_uniforms(key, start, count):
    """The definition of the stream: a new Philox4x64 keyed by ``key``, advanced to ``start``'s block."""
    block, offset = divmod(start, 4)
    bit_generator = np.random.Philox(key=np.array(key, dtype=np.uint64))
    bit_generator.advance(block)
    raw = bit_generator.random_raw(offset + count)[offset:] >> np.uint64(11)
    return (raw.astype(np.float64) + 0.5) * 2.0**-53


def test_stream_is_a_fresh_philox_at_any_position_also_far_into_other_inputs_regions():
    from rnnimp.perturb import NOISE_REGION, stream_uniforms

    key = (2**64 - 3, 12345)
    for start in (0, 7, 2**64 + 5, NOISE_REGION + 3, 2 * NOISE_REGION + 2**70 + 1, 2**255):
        np.testing.assert_array_equal(stream_uniforms(key, start, 9), fresh_philox_uniforms(key, start, 9))


def test_streams_drawn_in_threads_at_once_are_those_drawn_alone():
    from concurrent.futures import ThreadPoolExecutor

    keys = [(k, 2 * k + 1) for k in range(8)]
    alone = [standard_normal_stream(key, 3 * k, 50_000) for k, key in enumerate(keys)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda k: standard_normal_stream(keys[k], 3 * k, 50_000), range(8)))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
