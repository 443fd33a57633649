"""Conditional permutation: exchange a target's values only between similar series.

Marginal permutation gives each series the trajectory of any other series.
When the target is strongly correlated with another feature, that builds
inputs the data never holds (a high value of one next to a low value of its
twin), and the effect measures the model off the data's support, crediting
whichever twin the model happened to use. Conditional permutation (Strobl et
al. 2008, "Conditional variable importance for random forests") exchanges
values only between series alike in the *conditioning features*, so the
perturbed inputs stay close to the data and the effect measures what the
target adds beyond them.

Strata (:func:`strata`)
    Each series is summarised, for each conditioning feature, by its mean
    over time (``per_series_means``, :func:`per_series_means`). Each
    conditioning feature is cut into ``n_bins`` quantile bins of those means
    (edges at the 1/K, 2/K, ... quantiles over the series), and a series'
    stratum is its combination of bins. The strata are computed once from the
    whole evaluation sample, so every shard sees the same ones.

    Limits of this choice:

    - *Ties.* A mean equal to a bin edge falls in the upper bin, so tied
      values always share a bin and bins can hold unequal numbers of series.
      A discrete feature (or one constant within series, a category code)
      gets at most as many bins as it has distinct values: its strata are
      then exactly its values when K is at least that number.
    - *The mean over time only.* Series with equal means but different
      trajectories share a stratum; conditioning is on the level of the
      conditioning features, not on their dynamics.
    - *Many conditioning features.* Strata are the K^d combinations of d
      features' bins, so they soon become small: n series give about n/K^d
      per stratum, and strata of one series (which could only keep their own
      values, i.e. not be perturbed) are refused. Use fewer bins or fewer
      conditioning features. Coarse strata (small K) condition less: within a
      wide bin the target still moves off the data's support.

Donors (:func:`conditional_permutation`)
    A permutation within each stratum, a pure function of the unit's Philox
    key and the strata (like :func:`rnnimp.perturb.permutation`), so every
    shard of a unit sees the same donors and results do not depend on the
    sharding. Series ``s`` receives the trajectory of ``donors[s]``, exactly
    as with the marginal permutation's ``sources``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InvalidParameterError

DEFAULT_STRATA = 5


def per_series_means(sample: np.ndarray, features: Sequence[int]) -> np.ndarray:
    """Mean over time of each of ``features`` in each series of ``sample`` (series, time, features).

    Returns float64 (series, len(features)).
    """
    sample = np.asarray(sample)
    if sample.ndim != 3:
        raise InvalidParameterError("sample", "must have 3 dimensions (series, time, features)", sample.shape)
    return sample[:, :, list(features)].mean(axis=1, dtype=np.float64)


def _bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin (0 .. n_bins-1) of each of ``values`` (series,); a value on an edge goes up."""
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    return np.searchsorted(edges, values, side="right")


def strata(
    per_series_means: np.ndarray, n_bins: int, *, condition_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The stratum of each series: int64 (series,), numbered 0, 1, ... in order of their bins.

    ``per_series_means``: (series, conditioning features), each conditioning
    feature's mean over time in each series. Each conditioning feature is
    cut into ``n_bins`` quantile bins; a stratum is one combination of bins
    that holds series (empty combinations get no number). Refuses, with
    InvalidParameterError naming ``strata``, a stratum with fewer than 2
    series (``condition_names`` names the conditioning features in that
    message). See the module's docstring for the limits of this choice.
    """
    means = np.asarray(per_series_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] == 0:
        raise InvalidParameterError(
            "condition_on", "per-series means must have shape (series, conditioning features >= 1)", means.shape)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise InvalidParameterError("strata", "must be a positive integer (quantile bins per conditioning feature)",
                                    n_bins)
    n_series, n_conditions = means.shape
    names = [f"feature {j}" for j in range(n_conditions)] if condition_names is None else list(condition_names)
    if len(names) != n_conditions:
        raise InvalidParameterError("condition_names", f"must be {n_conditions} names, one per column", names)
    finite = np.isfinite(means)
    if not finite.all():
        series, column = np.argwhere(~finite)[0]
        raise InvalidParameterError(
            "condition_on", f"the mean of {names[column]} in series {series} must be finite", means[series, column])
    bins = np.column_stack([_bins(means[:, j], int(n_bins)) for j in range(n_conditions)])
    combinations, stratum_ids, counts = np.unique(bins, axis=0, return_inverse=True, return_counts=True)
    stratum_ids = stratum_ids.reshape(-1).astype(np.int64)
    small = np.flatnonzero(counts < 2)
    if small.size:
        first = small[0]
        where = ", ".join(f"{name} in bin {b + 1} of {n_bins}" for name, b in zip(names, combinations[first]))
        raise InvalidParameterError(
            "strata",
            f"every stratum of condition_on must hold at least 2 series to exchange values, but {small.size} of "
            f"{len(counts)} strata hold 1; the first, stratum {first} ({where}), holds {counts[first]} of "
            f"{n_series} series: use fewer bins (--strata) or fewer conditioning features (--condition-on)",
            n_bins)
    return stratum_ids


def conditional_permutation(key: tuple[int, int], strata_ids: np.ndarray) -> np.ndarray:
    """Donors keyed by ``key``: int64 (series,), a uniform random permutation within each stratum.

    ``strata_ids``: (series,) integers, the stratum of each series
    (:func:`strata`). Series ``s`` receives the trajectory of series
    ``donors[s]``, always of the same stratum; the donors form a permutation
    of the series. A pure function of the Philox ``key`` and the strata: the
    same arguments give the same donors on every worker and shard. A stratum
    of one series keeps its own values.
    """
    strata_ids = np.asarray(strata_ids)
    if strata_ids.ndim != 1 or not np.issubdtype(strata_ids.dtype, np.integer):
        raise InvalidParameterError("strata_ids", "must be one integer per series", strata_ids.shape)
    generator = np.random.Generator(np.random.Philox(key=np.array(key, dtype=np.uint64)))
    shuffle_keys = generator.random(len(strata_ids))
    # Both orders group the series by stratum; within a stratum, the first by
    # index and the second by an independent uniform per series, i.e. in a
    # uniformly random order. Pairing the two gives each stratum's k-th series
    # (by index) the k-th series of its random order as donor.
    by_index = np.argsort(strata_ids, kind="stable")
    shuffled = np.lexsort((shuffle_keys, strata_ids))
    donors = np.empty(len(strata_ids), dtype=np.int64)
    donors[by_index] = shuffled
    return donors
