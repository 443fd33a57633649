"""Perturbations: counter-based Gaussian noise and adding it to one feature.

The noise of a perturbation unit is one long stream of standard normal values
laid out sample after sample (``time_steps`` values per sample per perturbed
feature). With several model inputs, input ``k``'s values start at position
``k * NOISE_REGION`` of the stream, so features of different inputs (a static
and a sequence feature of one group, say) never share draws; input 0 starts
at 0, so a single-input model draws exactly what it always drew. Value
number ``i`` is a pure function of the unit's Philox key and ``i``: Philox
is counter-based, so the stream can be entered at any sample
without drawing what comes before. The noise a sample receives is therefore
the same however the sample is split into shards and batches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import functools

import numpy as np

if TYPE_CHECKING:
    from .inputs import InputLayout

PERTURBATIONS = ("noise", "permute", "ablate")  # the kinds of Perturbation
_PHILOX_WORDS_PER_BLOCK = 4  # Philox4x64 yields 4 uint64 per counter step
_UNIFORM_SCALE = 2.0**-53
NOISE_REGION = 2**128  # stream positions reserved per model input (Philox4x64's counter has 256 bits)


def standard_normal_stream(key: tuple[int, int], start: int, count: int) -> np.ndarray:
    """Values ``start .. start+count-1`` of the normal stream keyed by ``key``.

    Each value consumes exactly one 64-bit Philox output: its top 53 bits give
    a uniform in (0, 1), mapped through the normal quantile function (scipy's
    ``ndtri``). Returns a float64 array of shape (count,).
    """
    from scipy.special import ndtri  # imported on first use: the jobs import this module before Ray starts

    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got {start}, {count}")
    return ndtri(stream_uniforms(key, start, count))


def sample_noise(
    key: tuple[int, int], first_sample: int, n_samples: int, time_steps: int, n_features: int = 1,
    region: int = 0,
) -> np.ndarray:
    """Standard normal noise for samples ``first_sample .. +n_samples``.

    Returns float64 of shape (n_samples, time_steps, n_features); sample ``s``
    always receives the same values, whatever ``first_sample`` and
    ``n_samples`` a caller uses to reach it. ``region``: the model input
    (its index) whose features the noise is for.
    """
    per_sample = time_steps * n_features
    flat = standard_normal_stream(key, region * NOISE_REGION + first_sample * per_sample, n_samples * per_sample)
    return flat.reshape(n_samples, time_steps, n_features)


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


def permutation(key: tuple[int, int], n_samples: int) -> np.ndarray:
    """The permutation of ``n_samples`` series keyed by ``key``: int64 (n_samples,).

    Series s receives the trajectory of series ``permutation[s]``. A pure
    function of the key, so every shard of a unit sees the same permutation.
    """
    bit_generator = np.random.Philox(key=np.array(key, dtype=np.uint64))
    return np.random.Generator(bit_generator).permutation(n_samples)


@functools.cache
def _poisson1_cdf() -> np.ndarray:
    """P(Poisson(1) <= k) for k = 0..29, float64 (30,): scipy.stats imported on first use, not with this module."""
    from scipy.stats import poisson

    return poisson.cdf(np.arange(30), 1.0)


def bootstrap_weights(key: tuple[int, int], first_sample: int, n_samples: int) -> np.ndarray:
    """Poisson(1) bootstrap weights of samples ``first_sample .. +n_samples``: float64 (n_samples,).

    Weighting every series by an independent Poisson(1) count is the
    shardable form of drawing a bootstrap resample of the series (each series
    appears a Poisson(1) number of times). Counter-based like the noise: a
    sample's weight does not depend on how the sample was split.
    """
    uniform = stream_uniforms(key, first_sample, n_samples)
    return np.searchsorted(_poisson1_cdf(), uniform, side="right").astype(np.float64)


_THREAD = threading.local()  # each thread's reusable Philox bit generator
_WORD = 2**64 - 1


def _philox_at(key: tuple[int, int], block: int) -> np.random.Philox:
    """A Philox4x64 bit generator keyed by ``key`` whose next output is that of counter ``block``.

    Exactly ``Philox(key=key)`` advanced by ``block``, but this thread's one
    instance is re-keyed instead of creating one (which also draws OS
    entropy for a seed it never uses) on every call.
    """
    bit_generator = getattr(_THREAD, "philox", None)
    if bit_generator is None:
        bit_generator = _THREAD.philox = np.random.Philox(key=np.zeros(2, dtype=np.uint64))
    counter = np.array([(block >> shift) & _WORD for shift in (0, 64, 128, 192)], dtype=np.uint64)
    bit_generator.state = {"bit_generator": "Philox",
                           "state": {"counter": counter, "key": np.array(key, dtype=np.uint64)},
                           "buffer": np.zeros(_PHILOX_WORDS_PER_BLOCK, dtype=np.uint64),
                           "buffer_pos": _PHILOX_WORDS_PER_BLOCK, "has_uint32": 0, "uinteger": 0}
    return bit_generator


def stream_uniforms(key: tuple[int, int], start: int, count: int) -> np.ndarray:
    """Uniforms in (0, 1) at positions ``start .. start+count-1`` of the stream of ``key``."""
    block, offset = divmod(start, _PHILOX_WORDS_PER_BLOCK)
    raw = _philox_at(key, block).random_raw(offset + count)[offset:]
    np.right_shift(raw, np.uint64(11), out=raw)  # in place: this runs once per value of every unit
    uniforms = raw.astype(np.float64)
    uniforms += 0.5
    uniforms *= _UNIFORM_SCALE
    return uniforms


def perturb_inputs(
    batches: Sequence[np.ndarray], sample: Sequence[np.ndarray], first_sample: int, features: tuple[int, ...],
    step: int | None, perturbation: Perturbation, key: tuple[int, int], layout: "InputLayout",
    real: Sequence[np.ndarray | None], sources: np.ndarray | None = None,
) -> list[int]:
    """Perturb the batches of a model's inputs in place; return the indexes of the inputs changed.

    ``batches[k]`` holds ``sample[k][first_sample : first_sample + rows]``:
    (rows, time, features) for a sequence input, (rows, features) for a
    static one. ``features`` are global feature indexes (see
    :class:`rnnimp.inputs.InputLayout`), ``step`` a time step of the sequence
    inputs (None: every step; a sequence input shorter than ``step`` is left
    alone). ``real[k]``: (rows, time) bool, False at padded steps of a masked
    sequence input (computed on the unperturbed batch), or None: padded steps
    are never changed. Scales and ablation values are indexed by global feature.

    Permutation with a mask: series s receives the real steps of its donor
    ``sources[s]``, aligned at the first real step (``padding="post"``) or at
    the last (``"pre"``); a donor shorter than s is repeated from its start
    (post) or backwards from its end (pre) to fill s's real steps; a donor
    with no real step leaves s unchanged. s keeps its own length and padding.
    """
    changed = []
    for index, members, columns in layout.parts(features):
        batch, rows = batches[index], len(batches[index])
        if layout.is_sequence(index):
            if step is not None and step >= batch.shape[1]:
                continue
            mask = real[index]
            if mask is None:
                _perturb_sequence(batch, sample[index], first_sample, members, columns, step, perturbation, key,
                                  index, sources)
            else:
                _perturb_masked(batch, sample[index], first_sample, members, columns, step, perturbation, key,
                                index, sources, mask, layout.mask_values[index], layout.padding)
        else:
            if perturbation.kind == "noise":
                noise = sample_noise(key, first_sample, rows, 1, len(columns), region=index)[:, 0, :]
                for c, (feature, column) in enumerate(zip(members, columns)):
                    batch[:, column] += (perturbation.scales[feature] * noise[:, c]).astype(batch.dtype, copy=False)
            elif perturbation.kind == "permute":
                batch[:, list(columns)] = donor_rows(sample[index], sources[first_sample:first_sample + rows])[
                    :, list(columns)]
            elif perturbation.kind == "ablate":
                for feature, column in zip(members, columns):
                    batch[:, column] = perturbation.values[feature]
            else:
                raise ValueError(f"unknown perturbation {perturbation.kind!r}")
        changed.append(index)
    return changed


def donor_rows(sample, donors: np.ndarray) -> np.ndarray:
    """``sample[donors]``: the donors' whole series (or rows), (len(donors), ...).

    From an array with ``np.take``, which copies each row in one piece:
    donors drawn at random over a sample larger than the caches cost a
    memory access per cache line, and this reads each line once, in order.
    Measured in runs (40,000 and 100,000 series x 10 steps x 3 features,
    batches of 4096): 0.16-0.18 ms a batch, against 0.42-0.60 ms gathering
    the target's column alone and 0.54 ms with fancy indexing. A dataset view uses its own
    indexing.
    """
    return np.take(sample, donors, axis=0) if isinstance(sample, np.ndarray) else sample[donors]


def _perturb_sequence(batch, sample, first_sample, members, columns, step, perturbation, key, region, sources):
    """Unmasked sequence input: every step (or ``step``) of the target's columns; scales by global feature.

    ``noise`` adds scale × the stream's values, ``permute`` copies the donors'
    trajectories (time order kept), ``ablate`` writes the replacement value.
    """
    rows, time_steps = batch.shape[:2]
    if perturbation.kind == "noise":
        noise = sample_noise(key, first_sample, rows, 1 if step is not None else time_steps, len(columns), region)
        for c, (feature, column) in enumerate(zip(members, columns)):
            batch[:, _steps(step), column] += (perturbation.scales[feature] * noise[:, :, c]).astype(
                batch.dtype, copy=False)
    elif perturbation.kind == "permute":
        donors = sources[first_sample:first_sample + rows]
        if step is not None and isinstance(sample, np.ndarray):  # one step: gather only its values
            for column in columns:
                batch[:, step, column] = sample[:, step, column][donors]
        else:
            series = donor_rows(sample, donors)
            for column in columns:
                batch[:, _steps(step), column] = series[:, _steps(step), column]
    elif perturbation.kind == "ablate":
        for feature, column in zip(members, columns):
            batch[:, _steps(step), column] = perturbation.values[feature]
    else:
        raise ValueError(f"unknown perturbation {perturbation.kind!r}")


def _perturb_masked(batch, sample, first_sample, members, columns, step, perturbation, key, region, sources,
                    mask, mask_value, padding):
    """Masked sequence input: like :func:`_perturb_sequence` on the real steps (``mask``) only."""
    rows, time_steps = batch.shape[:2]
    where = mask if step is None else mask[:, step:step + 1]
    if perturbation.kind == "noise":
        noise = sample_noise(key, first_sample, rows, 1 if step is not None else time_steps, len(columns), region)
        for c, (feature, column) in enumerate(zip(members, columns)):
            change = (perturbation.scales[feature] * noise[:, :, c]).astype(batch.dtype, copy=False)
            batch[:, _steps(step), column] += np.where(where, change, np.float32(0.0))
    elif perturbation.kind == "permute":
        donors = donor_rows(sample, sources[first_sample:first_sample + rows])
        donor_real = np.any(donors != np.float32(mask_value), axis=-1)
        aligned = aligned_donor_values(donors[:, :, list(columns)], donor_real, mask, padding)
        take = mask & donor_real.any(axis=1)[:, None]
        if step is not None:
            take = take & (np.arange(time_steps) == step)[None, :]
        target = batch[:, :, list(columns)]
        target[take] = aligned[take]
        batch[:, :, list(columns)] = target
    elif perturbation.kind == "ablate":
        for feature, column in zip(members, columns):
            view = batch[:, _steps(step), column]
            view[where] = perturbation.values[feature]
    else:
        raise ValueError(f"unknown perturbation {perturbation.kind!r}")


def aligned_donor_values(donor_values: np.ndarray, donor_real: np.ndarray, receiver_real: np.ndarray,
                         padding: str) -> np.ndarray:
    """For each receiver step, the donor value it receives in a masked permutation.

    ``donor_values``: (rows, time, columns), row r the donor of receiver r;
    ``donor_real``, ``receiver_real``: (rows, time) bool. The receiver's k-th
    real step (counted from the first real step for ``post`` padding, from
    the last for ``pre``) gets the donor's k-th real step counted the same
    way, modulo the donor's number of real steps. Returns (rows, time,
    columns); values at the receiver's padded steps, and for donors without
    real steps, are meaningless (the caller leaves those steps alone).
    """
    donor_length = donor_real.sum(axis=1)
    safe_length = np.maximum(donor_length, 1)[:, None]
    receiver_rank = np.cumsum(receiver_real, axis=1) - 1  # k of each real step, from the first
    if padding == "pre":
        from_end = receiver_real.sum(axis=1)[:, None] - 1 - receiver_rank
        donor_rank = safe_length - 1 - np.mod(from_end, safe_length)
    else:
        donor_rank = np.mod(receiver_rank, safe_length)
    donor_rank = np.clip(donor_rank, 0, donor_real.shape[1] - 1)
    real_positions = np.argsort(~donor_real, axis=1, kind="stable")  # real steps first, in time order
    positions = np.take_along_axis(real_positions, donor_rank, axis=1)
    return np.take_along_axis(donor_values, positions[:, :, None], axis=1)
