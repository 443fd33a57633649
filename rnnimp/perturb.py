"""Perturbations: counter-based Gaussian noise and adding it to one feature.

The noise of a perturbation unit is one long stream of standard normal values
laid out sample after sample (``time_steps`` values per sample per perturbed
feature). Value number ``i`` is a pure function of the unit's Philox key and
``i``: Philox is counter-based, so the stream can be entered at any sample
without drawing what comes before. The noise a sample receives is therefore
the same however the sample is split into shards and batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import ndtri
from scipy.stats import poisson

PERTURBATIONS = ("noise", "permute", "ablate")  # the kinds of Perturbation
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
    return ndtri(stream_uniforms(key, start, count))


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


def add_noise_inplace(
    series: np.ndarray, features: tuple[int, ...], noise: np.ndarray, scale: float | Sequence[float],
    step: int | None = None,
) -> None:
    """Add ``scale * noise`` to ``features`` of ``series`` in place.

    ``series``: (n, time, features); ``noise``: (n, time, len(features))
    standard normal values, or (n, 1, len(features)) when ``step`` is given.
    ``scale`` is one number or one per input feature. Every time step (or
    only ``step``) of the listed features changes, nothing else does.
    """
    steps = _steps(step)
    for column, feature in enumerate(features):
        feature_scale = scale if np.isscalar(scale) else scale[feature]
        series[:, steps, feature] += (feature_scale * noise[:, :, column]).astype(series.dtype, copy=False)


def _steps(step: int | None) -> slice:
    return slice(None) if step is None else slice(step, step + 1)


@dataclass(frozen=True)
class Perturbation:
    """How a target's features are perturbed.

    ``noise``: add ``scales[f] * N(0, 1)`` (scales absolute, one per input
    feature); ``permute``: give each series the trajectory of another series
    (the same permutation for all features of a group, time order kept);
    ``ablate``: replace by ``values[f]`` (one per input feature).
    """

    kind: str
    scales: tuple[float, ...] = ()
    values: tuple[float, ...] = ()


def perturb_batch(
    batch: np.ndarray, sample: np.ndarray, first_sample: int, features: tuple[int, ...],
    step: int | None, perturbation: Perturbation, key: tuple[int, int],
    sources: np.ndarray | None = None,
) -> None:
    """Perturb ``batch`` in place: it holds ``sample[first_sample : first_sample + rows]``.

    ``batch``: (rows, time, features); ``sample``: the whole sample (series,
    time, features), read only. ``sources`` (series,) is the permutation of
    the unit for ``permute``. Only ``features`` change, at every step or at
    ``step`` only.
    """
    rows, time_steps = batch.shape[:2]
    if perturbation.kind == "noise":
        noise = sample_noise(key, first_sample, rows, 1 if step is not None else time_steps, len(features))
        add_noise_inplace(batch, features, noise, perturbation.scales, step)
    elif perturbation.kind == "permute":
        donors = sample[sources[first_sample:first_sample + rows]]
        batch[:, _steps(step), list(features)] = donors[:, _steps(step)][:, :, list(features)]
    elif perturbation.kind == "ablate":
        for feature in features:
            batch[:, _steps(step), feature] = perturbation.values[feature]
    else:
        raise ValueError(f"unknown perturbation {perturbation.kind!r}")


def permutation(key: tuple[int, int], n_samples: int) -> np.ndarray:
    """The permutation of ``n_samples`` series keyed by ``key``: int64 (n_samples,).

    Series s receives the trajectory of series ``permutation[s]``. A pure
    function of the key, so every shard of a unit sees the same permutation.
    """
    bit_generator = np.random.Philox(key=np.array(key, dtype=np.uint64))
    return np.random.Generator(bit_generator).permutation(n_samples)


_POISSON1_CDF = poisson.cdf(np.arange(30), 1.0)


def bootstrap_weights(key: tuple[int, int], first_sample: int, n_samples: int) -> np.ndarray:
    """Poisson(1) bootstrap weights of samples ``first_sample .. +n_samples``: float64 (n_samples,).

    Weighting every series by an independent Poisson(1) count is the
    shardable form of drawing a bootstrap resample of the series (each series
    appears a Poisson(1) number of times). Counter-based like the noise: a
    sample's weight does not depend on how the sample was split.
    """
    uniform = stream_uniforms(key, first_sample, n_samples)
    return np.searchsorted(_POISSON1_CDF, uniform, side="right").astype(np.float64)


def stream_uniforms(key: tuple[int, int], start: int, count: int) -> np.ndarray:
    """Uniforms in (0, 1) at positions ``start .. start+count-1`` of the stream of ``key``."""
    block, offset = divmod(start, _PHILOX_WORDS_PER_BLOCK)
    bit_generator = np.random.Philox(key=np.array(key, dtype=np.uint64))
    bit_generator.advance(block)
    raw = bit_generator.random_raw(offset + count)[offset:]
    np.right_shift(raw, np.uint64(11), out=raw)  # in place: this runs once per value of every unit
    uniforms = raw.astype(np.float64)
    uniforms += 0.5
    uniforms *= _UNIFORM_SCALE
    return uniforms
