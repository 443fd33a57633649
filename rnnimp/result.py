"""The result of an importance run: raw effects, their summary, the tables and files made from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import output, stats
from .checkpoint import Checkpoint


@dataclass
class ImportanceResult:
    """Raw effects beside their per-target summary.

    ``effects`` has shape (targets, repeats), or (targets, steps, repeats) for
    a time-step map; ``effects[f, r]`` is the effect of perturbing target f
    with repeat r's draws. With adaptive repeats, repeats a target did not
    need are NaN. Targets are the features, then the groups.

    ``cells`` lists the (target, step) pairs of a time-step map that were
    run, in summary order; step None for a target of static features, whose
    effects sit at step 0 of ``effects`` (its other steps, and steps beyond
    a shorter input's length, are NaN). ``target_inputs``: with several model
    inputs, the input(s) of each target's features (comma-separated).

    A run of several metrics, per output or per segment has several
    *panels*, one per (metric, segment, output) combination, each an
    ImportanceResult with ``labels`` ({"metric": "mae", "segment": "2024-02",
    "output": 1, "output_name": "b"}, only the keys the run asked for;
    output -1: all outputs pooled). The result returned is the first panel
    (the first metric, the first segment, all outputs pooled) with ``panels``
    listing all of them (itself first); its tables hold every panel's rows,
    the label columns first.
    """

    target_names: list[str]
    target_features: list[list[str]]
    effects: np.ndarray
    summary: stats.Summary
    confidence: float
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    cells: list[tuple[int, int | None]] | None = None
    target_inputs: list[str] | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    panels: list["ImportanceResult"] | None = None

    @property
    def per_step(self) -> bool:
        return self.effects.ndim == 3

    def _row_cells(self) -> list[tuple[int, int | None]]:
        """(target, step) of each summary row."""
        if self.cells is not None:
            return list(self.cells)
        n_steps = self.effects.shape[1] if self.per_step else 1
        return [(t, s if self.per_step else None) for t in range(len(self.target_names)) for s in range(n_steps)]

    def _grid(self, values: np.ndarray) -> np.ndarray:
        """Summary-row ``values`` placed in the (targets[, steps]) grid of ``effects``, NaN elsewhere."""
        grid = np.full(self.effects.shape[:-1], np.nan)
        for (target, step), value in zip(self._row_cells(), values):
            grid[(target, step or 0) if self.per_step else target] = value
        return grid

    @property
    def importances_mean(self) -> np.ndarray:
        return self._grid(self.summary.mean)

    @property
    def importances_std(self) -> np.ndarray:
        return self._grid(self.summary.std)

    def _cells(self) -> dict[str, pa.Array]:
        """Columns naming each summary row: target index, name, input, features, and step."""
        cells = self._row_cells()
        index = np.array([t for t, _ in cells], dtype=np.int64)
        columns = {
            "feature_index": pa.array(index, pa.int32()),
            "feature": pa.array([self.target_names[i] for i in index], pa.string()),
        }
        if self.target_inputs is not None:
            columns["input"] = pa.array([self.target_inputs[i] for i in index], pa.string())
        columns["features"] = pa.array([self.target_features[i] for i in index], pa.list_(pa.string()))
        if self.per_step:
            columns["step"] = pa.array([s for _, s in cells], pa.int32())
        return columns

    def _label_columns(self, n_rows: int) -> dict[str, pa.Array]:
        """This panel's labels as constant columns of ``n_rows`` rows."""
        types = {"metric": pa.string(), "segment": pa.string(), "output": pa.int32(), "output_name": pa.string()}
        return {name: pa.array([value] * n_rows, types[name]) for name, value in self.labels.items()}

    def _combined(self, make) -> pa.Table:
        """``make(panel)`` of every panel, label columns first, concatenated (this panel alone without panels)."""
        tables = []
        for panel in self.panels or [self]:
            table = make(panel)
            labels = panel._label_columns(table.num_rows)
            tables.append(pa.table({**labels, **{name: table[name] for name in table.column_names}}))
        return output.with_metadata(pa.concat_tables(tables), self.metadata)

    def panel(self, **labels: Any) -> "ImportanceResult":
        """The panel with these labels, e.g. ``panel(metric="mae", output=1)``; KeyError if none."""
        for candidate in self.panels or [self]:
            if all(candidate.labels.get(key) == value for key, value in labels.items()):
                return candidate
        raise KeyError(labels)

    def effects_table(self) -> pa.Table:
        """One row per (target[, step], repeat) that was run (of every panel)."""
        return self._combined(ImportanceResult._panel_effects)

    def summary_table(self) -> pa.Table:
        """One row per target (and step) of every panel: n_repeats, mean, std, intervals, rank."""
        return self._combined(ImportanceResult._panel_summary)

    def comparisons_table(self) -> pa.Table:
        """Pairwise differences of targets with their intervals, per panel (not for time-step maps)."""
        return self._combined(lambda panel: stats.pairwise_comparisons(panel.effects, panel.target_names,
                                                                       panel.confidence))

    def rank_probabilities_table(self) -> pa.Table:
        """Each target's probability of each rank, per panel."""
        return self._combined(lambda panel: stats.rank_probabilities(panel.effects, panel.target_names))

    def _panel_effects(self) -> pa.Table:
        cells = self._cells()
        n_steps = self.effects.shape[1] if self.per_step else 1
        rows = [t * n_steps + (s or 0) for t, s in self._row_cells()]
        flat = self.effects.reshape(-1, self.effects.shape[-1])[rows]
        cell_index, repeat = np.nonzero(np.isfinite(flat))
        columns = {name: column.take(pa.array(cell_index)) for name, column in cells.items()}
        first_repeat = self.metadata.get("configuration", {}).get("first_repeat", 0)
        columns["repeat"] = pa.array(first_repeat + repeat, pa.int32())
        columns["effect"] = pa.array(flat[cell_index, repeat], pa.float64())
        return output.with_metadata(pa.table(columns), self.metadata)

    def _panel_summary(self) -> pa.Table:
        s = self.summary
        columns = dict(self._cells())
        columns.update({
            "n_repeats": pa.array(s.n_repeats, pa.int64()),
            "mean": s.mean, "std": s.std,
            "t_low": s.t_low, "t_high": s.t_high,
            "bootstrap_low": s.bootstrap_low, "bootstrap_high": s.bootstrap_high,
            "bootstrap_method": pa.array(s.bootstrap_method, pa.string()),
            "rank": pa.array(s.rank, pa.int64()),
        })
        target = self.metadata.get("adaptive")
        if target:
            columns["target_met"] = pa.array(target["met"], pa.bool_())
        return output.with_metadata(pa.table(columns), self.metadata)

    def segment_comparisons_table(self) -> pa.Table | None:
        """Drift: each target's effect in each segment against the previous one (Welch intervals), per
        metric and output; None without segments. Rows of a time-step map are named ``name[step]``."""
        panels = self.panels or [self]
        if "segment" not in self.labels:
            return None
        groups: dict[tuple, list[ImportanceResult]] = {}
        for panel in panels:
            key = tuple((k, v) for k, v in panel.labels.items() if k != "segment")  # metric, output
            groups.setdefault(key, []).append(panel)
        tables = []
        for key, members in groups.items():
            cells = members[0]._row_cells()
            names = [self.target_names[t] if step is None else f"{self.target_names[t]}[{step}]"
                     for t, step in cells]
            effects = np.stack([panel._row_effects() for panel in members])
            table = stats.segment_comparisons(effects, names, [p.labels["segment"] for p in members],
                                              self.confidence)
            labels = ImportanceResult(self.target_names, self.target_features, self.effects, self.summary,
                                      self.confidence, labels=dict(key))._label_columns(table.num_rows)
            tables.append(pa.table({**labels, **{name: table[name] for name in table.column_names}}))
        return output.with_metadata(pa.concat_tables(tables), self.metadata)

    def _row_effects(self) -> np.ndarray:
        """(summary rows, repeats): the effects of each (target[, step]) row."""
        n_steps = self.effects.shape[1] if self.per_step else 1
        rows = [t * n_steps + (s or 0) for t, s in self._row_cells()]
        return self.effects.reshape(-1, self.effects.shape[-1])[rows]

    def write(self, out: str, model_bytes: bytes | None = None, chart: bool = True) -> dict[str, str]:
        """Write every result file into ``out``, each atomically, then drop the checkpoint."""
        paths = {}
        if model_bytes is not None:
            paths["model"] = output.write_bytes(model_bytes, out, output.MODEL_FILE)
        paths["effects"] = output.write_table(self.effects_table(), out, output.EFFECTS_FILE)
        if not self.per_step:
            paths["comparisons"] = output.write_table(self.comparisons_table(), out, output.COMPARISONS_FILE)
            paths["rank_probabilities"] = output.write_table(self.rank_probabilities_table(), out, output.RANKS_FILE)
        drift = self.segment_comparisons_table()
        if drift is not None:
            paths["segment_comparisons"] = output.write_table(drift, out, output.SEGMENT_COMPARISONS_FILE)
        if chart:
            paths["chart"] = output.write_bytes(self.chart_png(), out, output.CHART_FILE)
            segments = self.segments_chart_png()
            if segments is not None:
                paths["segments_chart"] = output.write_bytes(segments, out, output.SEGMENTS_CHART_FILE)
            outputs = self.outputs_chart_png()
            if outputs is not None:
                paths["outputs_chart"] = output.write_bytes(outputs, out, output.OUTPUTS_CHART_FILE)
        paths["summary"] = output.write_table(self.summary_table(), out, output.SUMMARY_FILE)
        if self.checkpoint is not None:
            self.checkpoint.remove()
        return paths

    def chart_png(self) -> bytes:
        """A PNG: sorted bars of mean effects with intervals and repeats, or a heatmap of a time-step map."""
        from . import plots

        label = self.axis_label()
        if self.per_step:
            mapped = sorted({t for t, step in self._row_cells() if step is not None})  # static features: no map
            return plots.png_bytes(plots.heatmap_figure(self.importances_mean[mapped],
                                                        [self.target_names[t] for t in mapped], label=label))
        s = self.summary
        level = f"{self.confidence:.0%} t-interval"
        return plots.png_bytes(plots.effects_figure(
            self.target_names, s.mean, s.t_low, s.t_high, self.effects, axis_label=label,
            title=f"Effect of perturbing each input (mean, {level}; dots: repeats)"))

    def _siblings(self, varying: str) -> list["ImportanceResult"]:
        """The panels that share this panel's labels except ``varying``, in panel order."""
        varying_keys = {varying, "output_name"} if varying == "output" else {varying}
        fixed = {k: v for k, v in self.labels.items() if k not in varying_keys}
        return [p for p in self.panels or [self] if all(p.labels.get(k) == v for k, v in fixed.items())]

    def segments_chart_png(self) -> bytes | None:
        """A PNG: one line per target across the segments (this panel's metric and output); None
        without segments or for a time-step map."""
        from . import plots

        if "segment" not in self.labels or self.per_step:
            return None
        members = self._siblings("segment")
        mean = np.column_stack([p.summary.mean for p in members])
        low = np.column_stack([p.summary.t_low for p in members])
        high = np.column_stack([p.summary.t_high for p in members])
        return plots.png_bytes(plots.segments_figure(
            self.target_names, [p.labels["segment"] for p in members], mean, low, high, self.axis_label(),
            title=f"Importance per segment (mean, {self.confidence:.0%} t-interval)"))

    def outputs_chart_png(self) -> bytes | None:
        """A PNG: a heatmap targets × outputs of mean effects (this panel's metric and segment); None
        without per-output results or for a time-step map."""
        from . import plots

        if "output" not in self.labels or self.per_step:
            return None
        members = [p for p in self._siblings("output") if p.labels["output"] >= 0]
        labels = [p.labels.get("output_name") or str(p.labels["output"]) for p in members]
        mean_map = np.column_stack([p.summary.mean for p in members])
        return plots.png_bytes(plots.outputs_heatmap_figure(self.target_names, labels, mean_map, self.axis_label()))

    def axis_label(self) -> str:
        """What the effects measure and how the inputs were perturbed, from the recorded configuration."""
        from . import plots

        configuration = self.metadata.get("configuration", {})
        if "metric" not in configuration:
            return plots.DEFAULT_AXIS_LABEL
        metric = self.labels.get("metric", configuration["metric"])
        if not isinstance(metric, str):
            metric = metric[0]
        return plots.axis_label(metric, configuration["perturbation"],
                                noise_scale=configuration.get("noise_scale"),
                                noise_relative=configuration.get("noise_relative"),
                                loss=configuration.get("loss"))

    def format_summary(self) -> str:
        """The summary as a plain-text table, most important first; one titled table per panel."""
        from .report import format_summary, panel_title, panels

        parts = []
        for labels, rows in panels(self.summary_table()):
            parts += [*([panel_title(labels)] if labels else []), format_summary(rows, self.confidence), ""]
        return "\n".join(parts[:-1])
