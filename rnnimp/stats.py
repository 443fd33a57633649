"""Statistics of the effects of each feature over repeats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Per-feature statistics; every array has shape (features,)."""

    n_repeats: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    t_low: np.ndarray
    t_high: np.ndarray
    bootstrap_low: np.ndarray
    bootstrap_high: np.ndarray
    rank: np.ndarray


def t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (shape (n,), n >= 2)."""
    mean = float(np.mean(values))
    sem = float(stats.sem(values))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(confidence, df=len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def bootstrap_interval(
    values: np.ndarray, confidence: float, rng: np.random.Generator, n_resamples: int = 9999
) -> tuple[float, float]:
    """Bootstrap percentile interval of the mean of ``values`` (shape (n,), n >= 2)."""
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
        method="percentile", rng=rng, vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def rank_descending(means: np.ndarray) -> np.ndarray:
    """Rank 1 for the largest mean; ties share the smallest rank. Shape kept."""
    return stats.rankdata(-means, method="min").astype(np.int64)


def summarize(effects: np.ndarray, confidence: float, rng: np.random.Generator) -> Summary:
    """Statistics per row of ``effects`` (features, repeats), repeats >= 2."""
    t_bounds = np.array([t_interval(row, confidence) for row in effects]).reshape(-1, 2)
    boot_bounds = np.array(
        [bootstrap_interval(row, confidence, rng) for row in effects]
    ).reshape(-1, 2)
    means = effects.mean(axis=1)
    return Summary(
        n_repeats=np.full(effects.shape[0], effects.shape[1], dtype=np.int64),
        mean=means,
        std=effects.std(axis=1, ddof=1),
        t_low=t_bounds[:, 0],
        t_high=t_bounds[:, 1],
        bootstrap_low=boot_bounds[:, 0],
        bootstrap_high=boot_bounds[:, 1],
        rank=rank_descending(means),
    )
