"""PNG charts: valid files, one bar per feature, intervals drawn where planted, atomic writes."""

import matplotlib.image
import numpy as np
import pytest

from rnnimp.errors import InvalidParameterError
from rnnimp.plots import bar_chart, heatmap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["x1", "x2", "x3", "x4"]
MEANS = np.array([0.10, 0.20, 0.004, 0.05])
LOWS = np.array([0.09, 0.17, 0.003, np.nan])
HIGHS = np.array([0.11, 0.24, 0.005, np.nan])


def assert_valid_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_bar_chart_writes_a_png_with_one_bar_per_feature(tmp_path):
    path = tmp_path / "charts" / "effects.png"
    figure = bar_chart(NAMES, MEANS, LOWS, HIGHS, str(path), title="planted")
    assert_valid_png(path)
    axes = figure.axes[0]
    (bars,) = axes.containers[:1]
    assert len(bars.patches) == len(NAMES) == len(axes.patches)
    np.testing.assert_allclose([bar.get_height() for bar in bars.patches], MEANS)
    assert [label.get_text() for label in axes.get_xticklabels()] == NAMES
    assert axes.get_title() == "planted"
    assert [p.name for p in path.parent.iterdir()] == ["effects.png"]  # no temporary file left


def test_bar_chart_error_bars_span_each_interval(tmp_path):
    figure = bar_chart(NAMES, MEANS, LOWS, HIGHS, str(tmp_path / "chart.png"))
    error_bars = figure.axes[0].containers[1]
    segments = error_bars.lines[2][0].get_segments()  # one vertical segment per bar, empty without an interval
    assert [len(segment) for segment in segments] == [2, 2, 2, 0]
    spans = np.array([[segment[0][1], segment[1][1]] for segment in segments[:3]])
    np.testing.assert_allclose(spans, np.column_stack([LOWS, HIGHS])[:3])
    np.testing.assert_allclose([segment[0][0] for segment in segments[:3]], [0, 1, 2])


def test_bar_chart_replaces_an_existing_file(tmp_path):
    path = tmp_path / "chart.png"
    path.write_bytes(b"old")
    bar_chart(["a", "b"], [1.0, 2.0], [0.5, 1.5], [1.5, 2.5], str(path))
    assert_valid_png(path)


def test_bar_chart_refuses_mismatched_values(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"lows: must hold 4 values, one per name, got \(3,\)"):
        bar_chart(NAMES, MEANS, LOWS[:3], HIGHS, str(tmp_path / "chart.png"))
    assert not (tmp_path / "chart.png").exists()


def test_heatmap_writes_a_png_of_the_time_step_map(tmp_path):
    effects_map = np.arange(3 * 7, dtype=float).reshape(3, 7) / 10
    path = tmp_path / "steps.png"
    figure = heatmap(effects_map, ["x1", "x2", "x3"], str(path))
    assert_valid_png(path)
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), effects_map)
    assert [label.get_text() for label in axes.get_yticklabels()] == ["x1", "x2", "x3"]


def test_heatmap_refuses_a_map_without_one_row_per_name(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"effects_map: must have shape \(2, steps\)"):
        heatmap(np.zeros((3, 5)), ["x1", "x2"], str(tmp_path / "steps.png"))
