"""Perturbations: counter-based Gaussian noise and adding it to one feature.

The noise of a perturbation unit is one long stream of standard normal values
laid out sample after sample (``time_steps`` values per sample per perturbed
feature). Value number ``i`` is a pure function of the unit's Philox key and
``i``: Philox is counter-based, so the stream can be entered at any sample
without drawing what comes before. The noise a sample receives is therefore
the same however the sample is split into shards and batches.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

_PHILOX_WORDS_PER_BLOCK = 4  # Philox4x64 yields 4 uint64 per counter step
_UNIFORM_SCALE = 2.0**-53


def standard_normal_stream(key: tuple[int, int], start: int, count: int) -> np.ndarray:
    """Values ``start .. start+count-1`` of the normal stream keyed by ``key``.

    Each value consumes exactly one 64-bit Philox output: its top 53 bits give
    a uniform in (0, 1), mapped through the normal quantile function (scipy's
    ``ndtri``). Returns a float64 array of shape (count,).
    """
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got {start}, {count}")
    block, offset = divmod(start, _PHILOX_WORDS_PER_BLOCK)
    bit_generator = np.random.Philox(key=np.array(key, dtype=np.uint64))
    bit_generator.advance(block)
    raw = bit_generator.random_raw(offset + count)[offset:]
    uniform = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * _UNIFORM_SCALE
    return ndtri(uniform)


def sample_noise(
    key: tuple[int, int], first_sample: int, n_samples: int, time_steps: int, n_features: int = 1
) -> np.ndarray:
    """Standard normal noise for samples ``first_sample .. +n_samples``.

    Returns float64 of shape (n_samples, time_steps, n_features); sample ``s``
    always receives the same values, whatever ``first_sample`` and
    ``n_samples`` a caller uses to reach it.
    """
    per_sample = time_steps * n_features
    flat = standard_normal_stream(key, first_sample * per_sample, n_samples * per_sample)
    return flat.reshape(n_samples, time_steps, n_features)


def add_noise(
    series: np.ndarray, features: tuple[int, ...], noise: np.ndarray, scale: float
) -> np.ndarray:
    """A copy of ``series`` with ``scale * noise`` added to ``features``.

    ``series``: (n, time, features); ``noise``: (n, time, len(features))
    standard normal values. Every time step of the listed features changes,
    nothing else does; shape and dtype are kept and the input is not modified.
    """
    perturbed = np.array(series, copy=True)
    add_noise_inplace(perturbed, features, noise, scale)
    return perturbed


def add_noise_inplace(
    series: np.ndarray, features: tuple[int, ...], noise: np.ndarray, scale: float
) -> None:
    """Add ``scale * noise`` to ``features`` of ``series`` in place (see add_noise)."""
    for column, feature in enumerate(features):
        series[:, :, feature] += (scale * noise[:, :, column]).astype(series.dtype, copy=False)
