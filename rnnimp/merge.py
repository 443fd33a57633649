"""Merging the effects of several runs of one configuration into one result.

Runs that differ only in which repeats they computed (``first_repeat``,
``n_repeats``, adaptive-repeat settings) on the same model and data add up:
the merged summary is the one a single run of all those repeats would give,
since every repeat's draws depend only on the seed and the repeat index.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import output, stats
from .checkpoint import differences
from .errors import InvalidParameterError
from .options import REPEAT_KEYS  # configuration entries that only say which repeats a run computed
from .report import LABEL_COLUMNS, panels
from .result import ImportanceResult
from .seeding import Stream, generator


def _comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    configuration = {k: v for k, v in metadata.get("configuration", {}).items() if k not in REPEAT_KEYS}
    return {"configuration": configuration, "seed": metadata.get("seed"),
            "model_fingerprint": metadata.get("model_fingerprint"),
            "data_fingerprint": metadata.get("data_fingerprint")}


def read_effects(folder: str) -> tuple[pa.Table, dict[str, Any]]:
    """The effects table of a finished run and its metadata."""
    filesystem, path = output.resolve(folder)
    effects_path = f"{path}/{output.EFFECTS_FILE}"
    try:
        table = pq.read_table(effects_path, filesystem=filesystem)
        metadata = output.read_metadata(effects_path if "://" not in folder
                                        else folder.rstrip("/") + "/" + output.EFFECTS_FILE)
    except (OSError, KeyError, ValueError) as error:
        raise InvalidParameterError("DIR", f"must hold a finished rnnimp run ({type(error).__name__})", folder) from None
    return table, metadata


def merge_runs(folders: Sequence[str]) -> ImportanceResult:
    """One result from the effects of ``folders`` (same configuration, model and data).

    Refuses runs that differ in anything but their repeats, naming the
    difference, and repeats computed twice. Runs of several metrics, per
    output or per segment merge panel by panel (by their label columns).
    """
    if len(folders) < 2:
        raise InvalidParameterError("DIR", "must name at least two runs to merge", list(folders))
    runs = [read_effects(folder) for folder in folders]
    first_table, first_metadata = runs[0]
    for folder, (_, metadata) in zip(folders[1:], runs[1:]):
        differing = differences(_comparable(first_metadata), _comparable(metadata))
        if differing:
            raise InvalidParameterError(
                "DIR", f"must be runs of one configuration, model and data (differs from {folders[0]} in "
                f"{', '.join(differing)})", folder)
    table = pa.concat_tables([table.replace_schema_metadata(None) for table, _ in runs])
    per_step = "step" in table.column_names
    labels = [name for name in LABEL_COLUMNS if name in table.column_names]  # several metrics, outputs, segments
    keys = [*labels, "feature_index", "step", "repeat"] if per_step else [*labels, "feature_index", "repeat"]
    if table.group_by(keys).aggregate([([], "count_all")]).num_rows != table.num_rows:
        raise InvalidParameterError("DIR", "must not compute the same repeat twice (use --first-repeat)",
                                    list(folders))
    configuration = first_metadata["configuration"]
    repeat = np.asarray(table["repeat"])
    first, last = int(repeat.min()), int(repeat.max())
    merged_configuration = {**configuration, "first_repeat": first, "n_repeats": last - first + 1}
    metadata = {**first_metadata, "configuration": merged_configuration, "merged_from": list(folders),
                "timings_s": {}}
    metadata.pop("adaptive", None)
    results = [_panel(rows, configuration, metadata, per_step, first, last, panel_labels)
               for panel_labels, rows in panels(table)]
    if len(results) > 1:
        results[0].panels = results
    return results[0]


def _panel(table: pa.Table, configuration: dict[str, Any], metadata: dict[str, Any], per_step: bool,
           first: int, last: int, labels: dict[str, Any]) -> ImportanceResult:
    """One panel's merged result from its rows of the concatenated effects (repeats ``first..last``)."""
    index = np.asarray(table["feature_index"])
    repeat = np.asarray(table["repeat"])
    n_targets = int(index.max()) + 1
    n_steps = configuration["time_steps"] if per_step else 1
    # step -1: a static feature in a time-step map (a null step)
    step = np.asarray(table["step"].fill_null(-1)) if per_step else np.full_like(index, -1)
    cells, row = np.unique(np.column_stack([index, step]), axis=0, return_inverse=True)
    effects = np.full((len(cells), last - first + 1), np.nan)
    effects[row.ravel(), repeat - first] = np.asarray(table["effect"])
    summary = stats.summarize(effects, configuration["confidence"],
                              generator(metadata["seed"], Stream.BOOTSTRAP),
                              interval=configuration["interval"])
    _, first_rows = np.unique(index, return_index=True)  # one row per target, by index
    names = table.take(pa.array(first_rows))
    if per_step:
        grid = np.full((n_targets, n_steps, effects.shape[1]), np.nan)
        grid[cells[:, 0], np.maximum(cells[:, 1], 0)] = effects
    else:
        grid = effects
    return ImportanceResult(names["feature"].to_pylist(), names["features"].to_pylist(),
                            grid, summary, configuration["confidence"], metadata,
                            cells=[(int(t), None if s < 0 else int(s)) for t, s in cells] if per_step else None,
                            target_inputs=names["input"].to_pylist() if "input" in names.column_names else None,
                            labels=labels)
