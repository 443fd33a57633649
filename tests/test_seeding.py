import itertools

from rnnimp.seeding import Stream, generator, int_seed, noise_key


def test_noise_keys_are_stable_across_versions():
    # Pinned values: a change here silently changes every published result.
    assert noise_key(0, 0, 0) == (12316853675961987140, 15319737582186280181)
    assert noise_key(42, 2, 7) == (10928536178736251275, 10445403313507873855)
    assert int_seed(0, Stream.WEIGHT_INIT) == 1039430863


def test_noise_keys_are_distinct_per_unit_and_seed():
    keys = {noise_key(seed, feature, repeat)
            for seed, feature, repeat in itertools.product(range(3), range(10), range(50))}
    assert len(keys) == 3 * 10 * 50


def test_noise_keys_are_plain_integers():
    key = noise_key(5, 1, 2)
    assert all(type(word) is int for word in key)


def test_streams_are_independent():
    a = generator(0, Stream.TRAINING).random(5)
    b = generator(0, Stream.EVALUATION_SAMPLE).random(5)
    assert not (a == b).any()
    assert (generator(0, Stream.TRAINING).random(5) == a).all()
