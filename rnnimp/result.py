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

    def effects_table(self) -> pa.Table:
        """One row per (target[, step], repeat) that was run."""
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

    def summary_table(self) -> pa.Table:
        """One row per target (and step): n_repeats, mean, std, intervals, rank."""
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

    def comparisons_table(self) -> pa.Table:
        """Pairwise differences of targets with their intervals (not for time-step maps)."""
        return output.with_metadata(
            stats.pairwise_comparisons(self.effects, self.target_names, self.confidence), self.metadata)

    def rank_probabilities_table(self) -> pa.Table:
        return output.with_metadata(stats.rank_probabilities(self.effects, self.target_names), self.metadata)

    def write(self, out: str, model_bytes: bytes | None = None, chart: bool = True) -> dict[str, str]:
        """Write every result file into ``out``, each atomically, then drop the checkpoint."""
        paths = {}
        if model_bytes is not None:
            paths["model"] = output.write_bytes(model_bytes, out, output.MODEL_FILE)
        paths["effects"] = output.write_table(self.effects_table(), out, output.EFFECTS_FILE)
        if not self.per_step:
            paths["comparisons"] = output.write_table(self.comparisons_table(), out, output.COMPARISONS_FILE)
            paths["rank_probabilities"] = output.write_table(self.rank_probabilities_table(), out, output.RANKS_FILE)
        if chart:
            paths["chart"] = output.write_bytes(self.chart_png(), out, output.CHART_FILE)
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

    def axis_label(self) -> str:
        """What the effects measure and how the inputs were perturbed, from the recorded configuration."""
        from . import plots

        configuration = self.metadata.get("configuration", {})
        if "metric" not in configuration:
            return plots.DEFAULT_AXIS_LABEL
        return plots.axis_label(configuration["metric"], configuration["perturbation"],
                                noise_scale=configuration.get("noise_scale"),
                                noise_relative=configuration.get("noise_relative"),
                                loss=configuration.get("loss"))

    def format_summary(self) -> str:
        """The summary as a plain-text table, most important first."""
        from .report import format_summary

        return format_summary(self.summary_table(), self.confidence)
