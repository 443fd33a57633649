"""Plain-text reports of results, from a summary table in the summary.parquet layout."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import output
from .errors import InvalidParameterError

# The columns of summary.parquet that the report needs.
SUMMARY_COLUMNS = ("feature", "mean", "std", "t_low", "t_high", "bootstrap_low", "bootstrap_high", "rank")
DEFAULT_CONFIDENCE = 0.95


def row_labels(table: pa.Table) -> list[str]:
    """The name of each row: its feature (or group), with ``[step]`` in a time-step map."""
    names = table.column("feature").to_pylist()
    if "step" not in table.column_names:
        return names
    return [name if step is None else f"{name}[{step}]"  # step None: a static feature, without steps
            for name, step in zip(names, table.column("step").to_pylist())]


def format_summary(table: pa.Table, confidence: float) -> str:
    """The summary as a plain-text table, most important feature first.

    ``table``: one row per feature (or per feature and step) with at least
    ``SUMMARY_COLUMNS``; rows are listed by ``rank`` (stable for ties).
    """
    c = {name: table.column(name).to_numpy(zero_copy_only=False) for name in SUMMARY_COLUMNS}
    c["feature"] = row_labels(table)
    inputs = table.column("input").to_pylist() if "input" in table.column_names else None  # several model inputs
    width = max([12, *(len(name) for name in inputs or [])])
    names = max([12, *(len(name) for name in c["feature"])]) if inputs else 12
    level = f"{confidence:.0%}"
    header = (f"{'rank':>4}  {'feature':<{names}} " + (f"{'input':<{width}} " if inputs else "")
              + f"{'mean':>9} {'std':>9}  {level + ' t-interval':>21}  {level + ' bootstrap':>21}")
    lines = [header, "-" * len(header)]
    for i in np.argsort(c["rank"], kind="stable"):
        lines.append(
            f"{c['rank'][i]:>4}  {c['feature'][i]:<{names}} " + (f"{inputs[i]:<{width}} " if inputs else "")
            + f"{c['mean'][i]:>9.4f} {c['std'][i]:>9.4f}"
            f"  [{c['t_low'][i]:>8.4f}, {c['t_high'][i]:>8.4f}]"
            f"  [{c['bootstrap_low'][i]:>8.4f}, {c['bootstrap_high'][i]:>8.4f}]"
        )
    return "\n".join(lines)


def run_confidence(metadata: dict[str, Any]) -> float:
    """The confidence level a run used, from its metadata (0.95 if it does not say)."""
    value = metadata.get("configuration", {}).get("confidence")
    return DEFAULT_CONFIDENCE if value is None else float(value)


def _known(value: Any) -> Any:
    return "?" if value is None else value


def format_configuration(metadata: dict[str, Any]) -> str:
    """One line: seed, repeats, perturbation (noise scale) and confidence of a run ("?" where unknown)."""
    configuration = metadata.get("configuration", {})
    repeats = f"{_known(configuration.get('n_repeats'))} repeats"
    if configuration.get("target_halfwidth") is not None:
        repeats += f" (adaptive, at most {_known(configuration.get('max_repeats'))})"
    perturbation = configuration.get("perturbation", "noise")
    if perturbation != "noise":
        perturbation = f"perturbation {perturbation}"
    elif configuration.get("noise_relative") is not None:
        perturbation = f"noise scale {configuration['noise_relative']} x each feature's std"
    else:
        perturbation = f"noise scale {_known(configuration.get('noise_scale'))}"
    if configuration.get("condition_on"):
        perturbation += f" given {','.join(configuration['condition_on'])} ({configuration.get('strata')} bins)"
    confidence = configuration.get("confidence")
    return (f"seed {_known(metadata.get('seed'))}, {repeats}, {perturbation}, "
            f"confidence {'?' if confidence is None else format(float(confidence), '.0%')}")


def format_bootstrap_methods(table: pa.Table) -> str | None:
    """Which bootstrap interval the rows got, from a ``bootstrap_method`` column (None without one)."""
    if "bootstrap_method" not in table.column_names:
        return None
    methods = table.column("bootstrap_method").to_pylist()
    if not any(methods):
        return "bootstrap intervals: none (t-intervals only)"
    if "bca" not in methods:
        return "bootstrap intervals: percentile"
    fallback = list(dict.fromkeys(  # each name once, also when several panels list it
        label for label, method in zip(row_labels(table), methods) if method == "percentile"))
    if not fallback:
        return "bootstrap intervals: BCa"
    return f"bootstrap intervals: BCa; percentile for {', '.join(fallback)} (BCa undefined)"


LABEL_COLUMNS = ("metric", "segment", "output", "output_name")  # name a panel's rows (several metrics, ...)


def panel_title(labels: dict[str, Any]) -> str:
    """``metric=mae segment=2024-02 output=b``: a panel's labels (output -1: ``all``; a name over an index)."""
    parts = []
    for name, value in labels.items():
        if name == "output_name":
            continue
        if name == "output":
            value = "all" if value < 0 else labels.get("output_name") or value
        parts.append(f"{name}={value}")
    return " ".join(parts)


def panels(table: pa.Table) -> list[tuple[dict[str, Any], pa.Table]]:
    """The summary's rows split by their label columns, in order of first appearance ([({}, table)] without)."""
    present = [name for name in LABEL_COLUMNS if name in table.column_names]
    if not present:
        return [({}, table)]
    keys = list(zip(*(table.column(name).to_pylist() for name in present)))
    groups: dict[tuple, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return [(dict(zip(present, key)), table.take(pa.array(rows))) for key, rows in groups.items()]


def format_run(table: pa.Table, metadata: dict[str, Any]) -> str:
    """The configuration line, the summary table by rank (one per panel) and the bootstrap method used."""
    parts = [format_configuration(metadata)]
    for labels, rows in panels(table):
        parts += ["", *([panel_title(labels)] if labels else []), format_summary(rows, run_confidence(metadata))]
    note = format_bootstrap_methods(table)
    if note is not None:
        parts += ["", note]
    return "\n".join(parts)


def read_run(folder_or_uri: str, *, parameter: str = "folder") -> tuple[pa.Table, dict[str, Any]]:
    """The summary table of a finished run and its metadata ({} if it has none).

    ``folder_or_uri``: a local folder or a pyarrow.fs URI holding
    summary.parquet. A missing folder, a folder without summary.parquet or a
    file that is not a readable rnnimp summary raise InvalidParameterError
    naming ``parameter``.
    """
    try:
        filesystem, folder = output.resolve(folder_or_uri)
        if filesystem.get_file_info(folder).type != pafs.FileType.Directory:
            raise InvalidParameterError(parameter, "must be an existing folder", folder_or_uri)
        path = f"{folder}/{output.SUMMARY_FILE}"
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            raise InvalidParameterError(
                parameter, f"must hold {output.SUMMARY_FILE} (the output of a finished run)", folder_or_uri)
        table = pq.read_table(path, filesystem=filesystem)
    except (pa.ArrowException, OSError) as error:
        raise InvalidParameterError(
            parameter, f"must be a readable run folder ({str(error).splitlines()[0]})", folder_or_uri) from None
    missing = [name for name in SUMMARY_COLUMNS if name not in table.column_names]
    if missing:
        raise InvalidParameterError(
            parameter, f"must hold an rnnimp {output.SUMMARY_FILE} (missing columns {', '.join(missing)})",
            folder_or_uri)
    stored = (table.schema.metadata or {}).get(output.METADATA_KEY)
    try:
        metadata = json.loads(stored) if stored is not None else {}
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise InvalidParameterError(
            parameter, f"must hold {output.SUMMARY_FILE} with rnnimp metadata as a JSON object", folder_or_uri)
    return table, metadata
