"""The public entry point: ``sensitivity_importance(model, X, ...)``.

The work is split by job: :mod:`rnnimp.options` (the catalogue of options,
:func:`prepare` into a validated :class:`Request`), :mod:`rnnimp.runner`
(:func:`run`: waves, checkpoints, the effects matrix, on an
:class:`Executor`) and :mod:`rnnimp.result` (:class:`ImportanceResult`, its
tables and files). Their public names are importable from here as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .options import Options, Request, options_from_keywords, prepare
from .result import ImportanceResult
from .runner import Executor, run

__all__ = ["Executor", "ImportanceResult", "Options", "Request", "prepare", "run", "sensitivity_importance"]


def sensitivity_importance(
    model,
    X: np.ndarray | dict[str, np.ndarray] | list[np.ndarray],
    y: np.ndarray | None = None,
    *,
    executor: Any = None,
    progress: bool = False,
    checkpoint: str | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> ImportanceResult:
    """Importance of each input feature (or group) of ``model`` by perturbation.

    For every target f and repeat r, perturbs the features of f at every time
    step (or, with ``per_step``, at each step alone) in every series of ``X``
    (series, time, features), runs the model and measures the change of all
    its outputs; by default the RMS change under N(0, 0.2²) noise. For a
    model with several inputs, ``X`` is a dict {input name: array} (or a
    list in ``model.inputs`` order) of sequence (series, time, features) and
    static (series, features) arrays; padded steps (``mask_value``) are
    never perturbed (see :mod:`rnnimp.inputs`). ``X`` (or an input's
    entry) may also be a partitioned Parquet dataset (long form for a
    sequence input, one row per series for a static one): a directory or
    ``pyarrow.fs`` URI prefix string, or a ``pyarrow.dataset.Dataset``; the
    workers then read it shard by shard
    (see :mod:`rnnimp.dataset`; ``shard_cache_mib`` is each worker's cache).

    ``y``: labels (series, ...), one per model output, for the loss-increase
    metric. ``options``: any field of :class:`Options` (n_repeats,
    perturbation, noise_scale, metric, groups, per_step, resample,
    random_state, confidence, interval, target_halfwidth, feature_names,
    mask_value, padding, batch_size, shard_size, ...; several metrics at once, per_output,
    output_names, condition_on, strata, segments). ``executor``: ``"local"`` (in-process, the
    default), ``"ray"`` (actors on the Ray cluster you are connected to,
    shut down before returning), or an :class:`Executor` such as
    :class:`rnnimp.distributed.RayExecutor` (left running); all give
    identical effects. ``checkpoint``: an output location where finished
    units are kept, so a rerun computes only what is missing. ``metadata``:
    extra provenance.

    Returns an ImportanceResult with ``effects`` (targets, [steps,] repeats).
    """
    options_given = options_from_keywords(options)
    statistics, owned = None, None
    if executor == "ray" or type(executor).__name__ == "RayExecutor":
        from .distributed import RayExecutor, dataset_moments

        statistics = dataset_moments  # dataset input: per-feature statistics computed by the workers
        if executor == "ray":
            executor = owned = RayExecutor().start()
    try:
        request = prepare(model, X, y, options_given, statistics=statistics)
        return run(model, request, executor=executor, progress=progress, checkpoint=checkpoint, metadata=metadata)
    finally:
        if owned is not None:
            owned.shutdown()
