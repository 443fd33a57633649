"""Statistics of the effects of each target (a feature, or a group) over repeats.

Effects come as an array (targets, repeats). A repeat that was not run is NaN
(adaptive repeats give ragged rows): every function here uses only the finite
values of a row, and reports how many it used.

Intervals of the mean are chosen by name (``INTERVAL_METHODS``):

- ``"t"``: Student-t interval (``scipy.stats.t``).
- ``"percentile"``: bootstrap percentile interval (``scipy.stats.bootstrap``).
- ``"bca"``: bootstrap bias-corrected and accelerated interval, where scipy
  can compute it. On constant values, or where scipy's BCa bounds are NaN
  (it then warns ``DegenerateDataWarning``), the percentile interval of the
  same bootstrap distribution is reported instead, and the method used says
  ``"percentile"``.

Bootstrap intervals of a mean from n values are too narrow for small n (the
bootstrap distribution's spread is the plug-in sd·sqrt((n−1)/n)/√n and its
quantiles are normal, not Student-t, quantiles): a nominal 95% percentile
interval of 30 repeats covers about 93.5%. Both bootstrap methods therefore
use Hesterberg's *expanded* level, 2·Φ(sqrt(n/(n−1))·t_{n−1, (1+c)/2}) − 1 in
place of c (Hesterberg 2015, "What teachers should know about the
bootstrap", The American Statistician 69(4)), which restores the nominal
coverage (measured in tests/test_stats_coverage.py).

A row with fewer than 2 finite values has NaN bounds and no method (None).

``scipy.stats`` is imported by the functions that use it: the jobs import
this module (for the option catalogue) before they start Ray, and scipy's
statistics take most of a CPU-second to import, which the jobs spend while
the driver trains instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from . import validation
from .errors import InvalidParameterError

INTERVAL_METHODS = ("t", "percentile", "bca")
DEFAULT_RESAMPLES = 9999
# Bounds the memory of one bootstrap batch: rows × resamples × values ≤ 2**22 float64 (32 MiB).
_RESAMPLED_VALUES_PER_BATCH = 1 << 22


@dataclass(frozen=True)
class Summary:
    """Per-target statistics; every array has shape (targets,).

    ``n_repeats`` counts the finite effects each row's statistics used;
    ``bootstrap_method`` says which bootstrap interval each row got
    (``"bca"`` or ``"percentile"``; None where the row has fewer than 2 values).
    """

    n_repeats: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    t_low: np.ndarray
    t_high: np.ndarray
    bootstrap_low: np.ndarray
    bootstrap_high: np.ndarray
    rank: np.ndarray
    bootstrap_method: np.ndarray | None = None


class Bounds(NamedTuple):
    """Intervals of several rows: ``low``, ``high`` float (rows,); ``method`` object (rows,), str or None."""

    low: np.ndarray
    high: np.ndarray
    method: np.ndarray


def _rows(values: np.ndarray, parameter: str) -> np.ndarray:
    """``values`` as float64 of shape (rows, n), or InvalidParameterError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise InvalidParameterError(parameter, "must have 2 dimensions (rows, repeats)", array.shape)
    return array


def _choice(parameter: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidParameterError(parameter, f"must be one of {', '.join(map(repr, allowed))}", value)
    return value


def _names(names: Sequence[str], n_rows: int) -> list[str]:
    names = [str(name) for name in names]
    if len(names) != n_rows:
        raise InvalidParameterError("names", f"must be {n_rows} names, one per row of effects", names)
    return names


def _row_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and standard deviation (ddof 1) of the finite values of each row.

    ``values``: (rows, n). Returns three arrays of shape (rows,): int64
    counts; means (NaN without values); stds (NaN with fewer than 2 values).
    """
    values = _rows(values, "values")
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(finite, values, 0.0).sum(axis=1) / counts
        squares = np.where(finite, values - means[:, None], 0.0) ** 2
        stds = np.sqrt(squares.sum(axis=1) / (counts - 1))
    stds[counts < 2] = np.nan
    return counts.astype(np.int64), means, stds


def _t_bounds(block: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Student-t bounds of the mean of each row of ``block`` (rows, n >= 2), all finite."""
    from scipy import stats

    means = block.mean(axis=1)
    sems = stats.sem(block, axis=1)
    spread = sems > 0
    low, high = stats.t.interval(confidence, df=block.shape[1] - 1, loc=means, scale=np.where(spread, sems, 1.0))
    return np.where(spread, low, means), np.where(spread, high, means)


def _scipy_bootstrap(block: np.ndarray, **options) -> Any:
    """``scipy.stats.bootstrap`` of the mean of each row of ``block``, vectorised, its warnings silenced.

    Degenerate BCa bounds come back NaN (scipy warns DegenerateDataWarning);
    the caller detects and replaces them.
    """
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return stats.bootstrap((block,), np.mean, vectorized=True, axis=-1, **options)


def expanded_confidence(confidence: float, n: int) -> float:
    """Hesterberg's expanded level for a bootstrap interval of a mean of ``n`` values (n >= 2)."""
    from scipy import stats

    quantile = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * np.sqrt(n / (n - 1))
    return float(2.0 * stats.norm.cdf(quantile) - 1.0)


def _bootstrap_bounds(
    block: np.ndarray, confidence: float, method: str, rng: np.random.Generator, n_resamples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap bounds of the mean of each row of ``block`` (rows, n >= 2), all finite, none constant.

    All rows share the resampling indices of one vectorised scipy call, at
    the expanded level (see the module's notes).
    Returns low, high and the method used per row (BCa rows that scipy
    cannot compute get the percentile interval of the same resamples).
    """
    rows, n = block.shape
    options = dict(confidence_level=expanded_confidence(confidence, n), rng=rng, batch=max(1, _RESAMPLED_VALUES_PER_BATCH // (rows * n)))
    result = _scipy_bootstrap(block, n_resamples=n_resamples, method="BCa" if method == "bca" else "percentile",
                              **options)
    low = np.array(result.confidence_interval.low, dtype=np.float64).reshape(rows)
    high = np.array(result.confidence_interval.high, dtype=np.float64).reshape(rows)
    used = np.full(rows, method, dtype=object)
    failed = ~(np.isfinite(low) & np.isfinite(high))
    if method == "bca" and failed.any():
        fallback = _scipy_bootstrap(block, n_resamples=0, method="percentile", bootstrap_result=result, **options)
        low[failed] = np.reshape(fallback.confidence_interval.low, rows)[failed]
        high[failed] = np.reshape(fallback.confidence_interval.high, rows)[failed]
        used[failed] = "percentile"
    return low, high, used


def _complete_rows(
    block: np.ndarray, confidence: float, method: str, rng: np.random.Generator | None, n_resamples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounds and method used for rows of ``block`` (rows, n >= 2), all finite."""
    if method == "t":
        low, high = _t_bounds(block, confidence)
        return low, high, np.full(len(block), "t", dtype=object)
    low, high = block[:, 0].copy(), block[:, 0].copy()
    used = np.full(len(block), "percentile", dtype=object)  # constant rows: a point, no BCa
    varying = ~(block == block[:, :1]).all(axis=1)
    if varying.any():
        low[varying], high[varying], used[varying] = _bootstrap_bounds(
            block[varying], confidence, method, rng, n_resamples)
    return low, high, used


def intervals(
    values: np.ndarray, confidence: float, method: str = "t", rng: np.random.Generator | None = None,
    *, n_resamples: int = DEFAULT_RESAMPLES,
) -> Bounds:
    """Interval of the mean of each row of ``values`` (rows, n), from its finite values.

    ``method``: one of ``INTERVAL_METHODS``; the bootstrap methods need
    ``rng``. Rows with the same number of finite values are computed in one
    vectorised call. Returns :class:`Bounds` of shape (rows,); a row with
    fewer than 2 finite values gets NaN bounds and method None.
    """
    values = _rows(values, "values")
    confidence = validation.open_unit_interval("confidence", confidence)
    method = _choice("method", method, INTERVAL_METHODS)
    if method != "t":
        if not isinstance(rng, np.random.Generator):
            raise InvalidParameterError("rng", "must be a numpy.random.Generator for a bootstrap interval", rng)
        n_resamples = validation.positive_int("n_resamples", n_resamples)
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    low = np.full(len(values), np.nan)
    high = np.full(len(values), np.nan)
    used = np.full(len(values), None, dtype=object)
    for count in np.unique(counts[counts >= 2]):
        rows = np.flatnonzero(counts == count)
        block = values[rows][finite[rows]].reshape(len(rows), count)
        low[rows], high[rows], used[rows] = _complete_rows(block, confidence, method, rng, n_resamples)
    return Bounds(low, high, used)


def interval(
    values: np.ndarray, confidence: float, method: str = "t", rng: np.random.Generator | None = None,
    *, n_resamples: int = DEFAULT_RESAMPLES,
) -> tuple[float, float, str | None]:
    """Interval of the mean of the finite ``values`` (n,): (low, high, method used).

    See :func:`intervals`; fewer than 2 finite values give (nan, nan, None).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise InvalidParameterError("values", "must have 1 dimension (repeats,)", values.shape)
    bounds = intervals(values[None, :], confidence, method, rng, n_resamples=n_resamples)
    return float(bounds.low[0]), float(bounds.high[0]), bounds.method[0]


def rank_descending(means: np.ndarray) -> np.ndarray:
    """Rank 1 for the largest mean; ties share the smallest rank; NaN ranks last. Shape kept."""
    from scipy import stats

    means = np.asarray(means, dtype=np.float64)
    return stats.rankdata(-np.where(np.isnan(means), -np.inf, means), method="min").astype(np.int64)


def summarize(
    effects: np.ndarray, confidence: float, rng: np.random.Generator,
    *, interval: str = "bca", n_resamples: int = DEFAULT_RESAMPLES,
) -> Summary:
    """Statistics per row of ``effects`` (targets, repeats) from the row's finite values.

    NaN marks a repeat not run, so rows may hold different numbers of
    repeats. The Student-t interval is always given; ``interval`` picks the
    bootstrap interval beside it (``"bca"`` or ``"percentile"``), or ``"t"``
    for none (NaN bootstrap bounds, method None). Rows with fewer than 2
    finite values get NaN std and intervals.
    """
    effects = _rows(effects, "effects")
    interval = _choice("interval", interval, INTERVAL_METHODS)
    counts, means, stds = _row_moments(effects)
    t_bounds = intervals(effects, confidence, "t")
    if interval == "t":
        boot_bounds = Bounds(np.full(len(effects), np.nan), np.full(len(effects), np.nan),
                             np.full(len(effects), None, dtype=object))
    else:
        boot_bounds = intervals(effects, confidence, interval, rng, n_resamples=n_resamples)
    return Summary(
        n_repeats=counts,
        mean=means,
        std=stds,
        t_low=t_bounds.low,
        t_high=t_bounds.high,
        bootstrap_low=boot_bounds.low,
        bootstrap_high=boot_bounds.high,
        rank=rank_descending(means),
        bootstrap_method=boot_bounds.method,
    )


def pairwise_comparisons(effects: np.ndarray, names: Sequence[str], confidence: float) -> pa.Table:
    """Paired comparison of every unordered pair of rows of ``effects`` (targets, repeats).

    Repeats with the same index are paired (the same repeat seed); a pair
    uses the repeats finite in both rows. One row per pair (a, b), a < b:
    ``index_a``, ``name_a``, ``index_b``, ``name_b``, ``n_pairs``,
    ``mean_difference`` (mean of effect a − effect b over the pairs),
    ``t_low``/``t_high`` (Student-t interval of that mean) and ``settled``
    (the interval excludes 0). No correction for the number of pairs.
    """
    effects = _rows(effects, "effects")
    names = _names(names, len(effects))
    first, second = np.triu_indices(len(effects), k=1)
    with np.errstate(invalid="ignore"):
        differences = effects[first] - effects[second]
    counts, means, _ = _row_moments(differences)
    bounds = intervals(differences, confidence, "t")
    return pa.table({
        "index_a": pa.array(first, pa.int32()),
        "name_a": pa.array([names[i] for i in first], pa.string()),
        "index_b": pa.array(second, pa.int32()),
        "name_b": pa.array([names[j] for j in second], pa.string()),
        "n_pairs": pa.array(counts, pa.int64()),
        "mean_difference": pa.array(means, pa.float64()),
        "t_low": pa.array(bounds.low, pa.float64()),
        "t_high": pa.array(bounds.high, pa.float64()),
        "settled": pa.array((bounds.low > 0) | (bounds.high < 0), pa.bool_()),
    })


def rank_probabilities(effects: np.ndarray, names: Sequence[str]) -> pa.Table:
    """How often each row of ``effects`` (targets, repeats) took each rank, 1 = largest effect.

    Uses the repeats finite for every target. Targets tied in a repeat share
    the ranks they span equally, so the probabilities of each target and of
    each rank sum to 1. One row per (target, rank): ``index``, ``name``,
    ``rank``, ``probability`` (NaN if no repeat is complete), ``n_repeats``
    (the complete repeats used).
    """
    from scipy import stats

    effects = _rows(effects, "effects")
    names = _names(names, len(effects))
    n_targets = len(effects)
    complete = effects[:, np.isfinite(effects).all(axis=0)]
    probability = np.full((n_targets, n_targets), np.nan)
    if complete.shape[1]:
        lowest = stats.rankdata(-complete, method="min", axis=0)
        highest = stats.rankdata(-complete, method="max", axis=0)
        share = 1.0 / (highest - lowest + 1)
        for k in range(1, n_targets + 1):
            probability[:, k - 1] = np.where((lowest <= k) & (k <= highest), share, 0.0).mean(axis=1)
    return pa.table({
        "index": pa.array(np.repeat(np.arange(n_targets), n_targets), pa.int32()),
        "name": pa.array(np.repeat(np.asarray(names, dtype=object), n_targets), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, n_targets + 1), n_targets), pa.int64()),
        "probability": pa.array(probability.reshape(-1), pa.float64()),
        "n_repeats": pa.array(np.full(n_targets * n_targets, complete.shape[1]), pa.int64()),
    })


def segment_comparisons(
    effects: np.ndarray, names: Sequence[str], segment_labels: Sequence[str], confidence: float,
) -> pa.Table:
    """Drift: each target's effect in every segment against the previous segment.

    ``effects``: (segments, targets, repeats), NaN for repeats not run; the
    repeats of different segments are independent (different series), so the
    difference of the means gets a Welch interval (Welch–Satterthwaite
    degrees of freedom), not a paired one. One row per (target, consecutive
    segment pair), targets in order, then pairs in segment order:
    ``index``, ``name``, ``segment_a``, ``segment_b`` (the labels of segment
    s and s+1), ``n_a``, ``n_b`` (finite repeats), ``mean_a``, ``mean_b``,
    ``mean_difference`` (mean_b − mean_a: positive when the effect grew),
    ``welch_low``/``welch_high`` (its interval at ``confidence``), ``df``,
    ``p_value`` (two-sided Welch t-test of equal means) and ``settled`` (the
    interval excludes 0). Fewer than 2 finite repeats on either side gives
    NaN bounds, df and p-value, not settled. Both sides constant gives the
    interval [d, d], p-value 0 if d ≠ 0 else 1, and NaN df. No correction
    for the number of comparisons.
    """
    from scipy import stats

    confidence = validation.open_unit_interval("confidence", confidence)
    values = np.asarray(effects, dtype=np.float64)
    if values.ndim != 3:
        raise InvalidParameterError("effects", "must have 3 dimensions (segments, targets, repeats)", values.shape)
    n_segments, n_targets, _ = values.shape
    names = _names(names, n_targets)
    segment_labels = [str(label) for label in segment_labels]
    if len(segment_labels) != n_segments:
        raise InvalidParameterError(
            "segment_labels", f"must be {n_segments} labels, one per segment of effects", segment_labels)
    pairs = max(n_segments - 1, 0)
    # Counts, means and stds (targets, segments), from the targets × segments rows of finite repeats.
    counts, means, stds = (moment.reshape(n_targets, n_segments)
                           for moment in _row_moments(values.transpose(1, 0, 2).reshape(n_targets * n_segments, -1)))
    # (targets, pairs): the earlier segment a = s, the later b = s + 1.
    n_a, mean_a, std_a = counts[:, :-1], means[:, :-1], stds[:, :-1]
    n_b, mean_b, std_b = counts[:, 1:], means[:, 1:], stds[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        variance_a, variance_b = std_a ** 2 / n_a, std_b ** 2 / n_b
        standard_error = np.sqrt(variance_a + variance_b)
        df = (variance_a + variance_b) ** 2 / (variance_a ** 2 / (n_a - 1) + variance_b ** 2 / (n_b - 1))
        difference = mean_b - mean_a
        spread = standard_error > 0
        half_width = stats.t.ppf((1 + confidence) / 2, df) * standard_error
        p_value = 2 * stats.t.sf(np.abs(difference) / standard_error, df)
    half_width = np.where(spread, half_width, 0.0)
    p_value = np.where(spread, p_value, np.where(difference != 0, 0.0, 1.0))
    enough = (n_a >= 2) & (n_b >= 2)
    low = np.where(enough, difference - half_width, np.nan)
    high = np.where(enough, difference + half_width, np.nan)
    df = np.where(enough & spread, df, np.nan)
    p_value = np.where(enough, p_value, np.nan)
    target = np.repeat(np.arange(n_targets), pairs)
    segment = np.tile(np.arange(pairs), n_targets)
    return pa.table({
        "index": pa.array(target, pa.int32()),
        "name": pa.array([names[i] for i in target], pa.string()),
        "segment_a": pa.array([segment_labels[s] for s in segment], pa.string()),
        "segment_b": pa.array([segment_labels[s + 1] for s in segment], pa.string()),
        "n_a": pa.array(n_a.reshape(-1).astype(np.int64), pa.int64()),
        "n_b": pa.array(n_b.reshape(-1).astype(np.int64), pa.int64()),
        "mean_a": pa.array(mean_a.reshape(-1), pa.float64()),
        "mean_b": pa.array(mean_b.reshape(-1), pa.float64()),
        "mean_difference": pa.array(difference.reshape(-1), pa.float64()),
        "welch_low": pa.array(low.reshape(-1), pa.float64()),
        "welch_high": pa.array(high.reshape(-1), pa.float64()),
        "df": pa.array(df.reshape(-1), pa.float64()),
        "p_value": pa.array(p_value.reshape(-1), pa.float64()),
        "settled": pa.array(((low > 0) | (high < 0)).reshape(-1), pa.bool_()),
    })
