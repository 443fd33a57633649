"""Every random number rnnimp draws derives from one user seed.

``numpy.random.SeedSequence(seed, spawn_key=(stream, *ids))`` gives each
purpose (training data, evaluation sample, bootstrap, the noise of one
perturbation unit) its own independent, stable stream. Units of work receive
plain integers (a Philox key), never generator objects or global state, so a
retried unit recomputes exactly the same numbers on any worker.
"""

from __future__ import annotations

import enum

import numpy as np


class Stream(enum.IntEnum):
    """Independent purposes a user seed is split into (values are frozen)."""

    TRAINING = 1
    EVALUATION_SAMPLE = 2
    NOISE = 3
    BOOTSTRAP = 4
    WEIGHT_INIT = 5
    RESAMPLE = 6


def seed_sequence(seed: int, stream: Stream, *ids: int) -> np.random.SeedSequence:
    """The seed sequence of ``stream`` (and optional sub-ids) under ``seed``."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(stream), *map(int, ids)))


def generator(seed: int, stream: Stream, *ids: int) -> np.random.Generator:
    """A fresh numpy Generator for ``stream`` under ``seed``."""
    return np.random.default_rng(seed_sequence(seed, stream, *ids))


def int_seed(seed: int, stream: Stream, *ids: int) -> int:
    """A 31-bit integer seed for libraries that want one (TensorFlow, Keras)."""
    return int(seed_sequence(seed, stream, *ids).generate_state(1, np.uint32)[0] >> 1)


def _philox_key(sequence: np.random.SeedSequence) -> tuple[int, int]:
    words = sequence.generate_state(2, np.uint64)
    return int(words[0]), int(words[1])


def noise_key(seed: int, unit_id: int, repeat: int, *extra: int) -> tuple[int, int]:
    """The Philox key of the noise (or permutation) of ``unit_id`` at ``repeat``.

    ``unit_id`` is the perturbed feature (or group) index; ``extra`` ids
    refine it (the time step of a time-step map). Two plain 64-bit integers.
    """
    return _philox_key(seed_sequence(seed, Stream.NOISE, unit_id, repeat, *extra))


def resample_key(seed: int, repeat: int) -> tuple[int, int]:
    """The Philox key of the bootstrap weights of the series at ``repeat``.

    The same for every feature, so features of one repeat see one resample.
    """
    return _philox_key(seed_sequence(seed, Stream.RESAMPLE, repeat))
