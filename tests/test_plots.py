"""PNG charts: valid PNGs, bars where planted, intervals drawn where planted, the time-step map."""

import numpy as np
import pytest

from pngtools import decode_png
from rnnimp.errors import InvalidParameterError
from rnnimp.plots import effects_figure, heatmap_figure

NAMES = ["x1", "x2", "x3", "x4"]
MEANS = np.array([0.10, 0.20, 0.004, 0.05])
LOWS = np.array([0.09, 0.17, 0.003, np.nan])
HIGHS = np.array([0.11, 0.24, 0.005, np.nan])


def test_effects_figure_is_the_effects_chart_with_one_bar_per_feature_sorted():
    figure = effects_figure(NAMES, MEANS, LOWS, HIGHS, title="planted", axis_label="RMS change")
    decode_png(figure)
    axes = figure.axes[0]
    bars = axes.containers[0]
    assert len(bars.patches) == len(NAMES)
    by_height = sorted(bars.patches, key=lambda bar: -bar.get_y())  # top bar first
    np.testing.assert_allclose([bar.get_width() for bar in by_height], np.sort(MEANS)[::-1])
    assert axes.get_title() == "planted" and axes.get_xlabel() == "RMS change"


def test_effects_figure_error_bars_span_each_interval():
    figure = effects_figure(NAMES, MEANS, LOWS, HIGHS)
    error_bars = figure.axes[0].containers[1]
    segments = error_bars.lines[2][0].get_segments()  # one horizontal segment per bar, empty without an interval
    order = np.argsort(-MEANS)  # rows sorted by mean: x2, x1, x4, x3
    assert [len(segment) for segment in segments] == [2, 2, 0, 2]
    spans = np.array([[segment[0][0], segment[1][0]] for segment in segments if len(segment)])
    finite = [i for i in order if np.isfinite(LOWS[i])]
    np.testing.assert_allclose(spans, np.column_stack([LOWS, HIGHS])[finite])


def test_effects_figure_refuses_mismatched_values():
    with pytest.raises(InvalidParameterError, match=r"low: must hold 4 values, one per name, got \(3,\)"):
        effects_figure(NAMES, MEANS, LOWS[:3], HIGHS)


def test_heatmap_figure_draws_the_time_step_map():
    effects_map = np.arange(3 * 7, dtype=float).reshape(3, 7) / 10
    figure = heatmap_figure(effects_map, ["x1", "x2", "x3"])
    decode_png(figure)
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), effects_map)
    assert [label.get_text() for label in axes.get_yticklabels()] == ["x1", "x2", "x3"]


def test_heatmap_figure_refuses_a_map_without_one_row_per_name():
    with pytest.raises(InvalidParameterError, match=r"effects_map: must have shape \(2, steps\)"):
        heatmap_figure(np.zeros((3, 5)), ["x1", "x2"])
