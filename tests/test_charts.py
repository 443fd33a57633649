"""Charts of issue 12: effects sorted with intervals and repeats, per segment, per output; axis labels."""

import numpy as np
import pytest

from pngtools import decode_png
from rnnimp.errors import InvalidParameterError
from rnnimp.plots import axis_label, effects_figure, outputs_heatmap_figure, segments_figure


def planted(n_rows: int, n_repeats: int = 12, seed: int = 0):
    """Names, repeats (rows, repeats) with the last 4 repeats missing in odd rows, and their mean and bounds."""
    rng = np.random.default_rng(seed)
    names = [f"feature_{i:03d}" for i in range(n_rows)]
    repeats = rng.gamma(1.0, 0.1, n_rows)[:, None] + rng.normal(0.0, 0.02, (n_rows, n_repeats))
    repeats[1::2, -4:] = np.nan
    mean = np.nanmean(repeats, axis=1)
    half = 2 * np.nanstd(repeats, axis=1, ddof=1) / np.sqrt(np.isfinite(repeats).sum(axis=1))
    return names, repeats, mean, mean - half, mean + half


def bars_top_down(figure):
    """The bars of an effects chart from the top one down."""
    return sorted(figure.axes[0].containers[0].patches, key=lambda bar: -bar.get_y())


@pytest.mark.parametrize("n_rows", [3, 100])
def test_effects_chart_is_a_png_sorted_with_the_most_important_on_top(n_rows):
    names, repeats, mean, low, high = planted(n_rows)
    figure = effects_figure(names, mean, low, high, repeats, axis_label="RMS change of predictions, noise σ = 0.2")
    image = decode_png(figure)
    assert image.shape[0] >= 100 * 0.26 * n_rows  # at least 0.26 inch a row at 100 dpi
    order = np.argsort(-mean)
    np.testing.assert_allclose([bar.get_width() for bar in bars_top_down(figure)], mean[order])
    axes = figure.axes[0]
    labels_top_down = [label.get_text() for label in sorted(axes.get_yticklabels(), key=lambda t: -t.get_position()[1])]
    assert labels_top_down == [names[i] for i in order]
    assert axes.get_xlabel() == "RMS change of predictions, noise σ = 0.2"


def test_effects_chart_grows_with_the_rows_and_its_labels_do_not_overlap():
    heights = []
    for n_rows in (3, 30, 100):
        names, repeats, mean, low, high = planted(n_rows)
        figure = effects_figure(names, mean, low, high, repeats)
        heights.append(decode_png(figure).shape[0])
        renderer = figure.canvas.get_renderer()
        boxes = sorted((label.get_window_extent(renderer) for label in figure.axes[0].get_yticklabels()),
                       key=lambda box: box.y0)
        assert all(lower.y1 <= upper.y0 for lower, upper in zip(boxes, boxes[1:]))
    assert heights[0] < heights[1] < heights[2]


def test_effects_chart_draws_each_finite_repeat_as_a_dot_on_its_row():
    names, repeats, mean, low, high = planted(5)
    figure = effects_figure(names, mean, low, high, repeats)
    (dots,) = figure.axes[0].collections[-1:]
    points = dots.get_offsets()
    assert len(points) == np.isfinite(repeats).sum() and np.isfinite(points).all()
    bars = bars_top_down(figure)
    for row, bar in zip(np.argsort(-mean), bars):
        centre = bar.get_y() + bar.get_height() / 2
        on_row = np.abs(points[:, 1] - centre) < 0.3
        np.testing.assert_allclose(np.sort(points[on_row, 0]), np.sort(repeats[row][np.isfinite(repeats[row])]))


def test_effects_chart_puts_rows_without_a_mean_last():
    figure = effects_figure(["a", "b", "c"], [0.1, np.nan, 0.3], [np.nan] * 3, [np.nan] * 3)
    decode_png(figure)
    labels = sorted(figure.axes[0].get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [label.get_text() for label in labels] == ["c", "a", "b"]


def test_effects_chart_refuses_repeats_without_one_row_per_name():
    with pytest.raises(InvalidParameterError, match=r"repeats: must have shape \(2, repeats\)"):
        effects_figure(["a", "b"], [1.0, 2.0], [0.5, 1.5], [1.5, 2.5], np.zeros((3, 4)))


@pytest.mark.parametrize(("arguments", "label"), [
    (("rms", "noise", 0.2), "RMS change of predictions, noise σ = 0.2"),
    (("rms", "noise", 0.2, 0.1), "RMS change of predictions, noise σ = 0.1 × feature's sd"),
    (("mae", "permute"), "Mean absolute change of predictions, permutation"),
    (("loss-increase", "permute"), "Increase of MSE loss, permutation"),
    (("loss-increase", "conditional-permute", None, None, None, "binary-crossentropy"),
     "Increase of binary cross-entropy loss, conditional permutation"),
    (("rms", "ablate", None, None, "mean"), "RMS change of predictions, ablation to mean"),
    (("rms", "ablate", None, None, 0.0), "RMS change of predictions, ablation to 0"),
])
def test_axis_label_names_the_metric_and_the_perturbation(arguments, label):
    assert axis_label(*arguments) == label


def test_axis_label_refuses_unknown_choices():
    with pytest.raises(InvalidParameterError, match="metric"):
        axis_label("r2", "noise")
    with pytest.raises(InvalidParameterError, match="perturbation"):
        axis_label("rms", "shuffle")


@pytest.mark.parametrize("n_names", [3, 30])
def test_segments_chart_draws_a_line_per_feature_through_its_segment_means(n_names):
    rng = np.random.default_rng(1)
    names = [f"x{i}" for i in range(n_names)]
    segments = ["2024-01", "2024-02", "2024-03", "2024-04"]
    mean = rng.gamma(1.0, 0.1, (n_names, 4))
    mean[0, 2] = np.nan
    figure = segments_figure(names, segments, mean, mean - 0.02, mean + 0.03, "Increase of MSE loss, permutation")
    decode_png(figure)
    axes = figure.axes[0]
    lines = {container.get_label(): container.lines[0] for container in axes.containers}
    assert sorted(lines) == sorted(names)
    for i, name in enumerate(names):
        np.testing.assert_allclose(lines[name].get_ydata(), mean[i])
        assert np.abs(lines[name].get_xdata() - np.arange(4)).max() < 0.2  # dodged sideways a little
    assert [label.get_text() for label in axes.get_xticklabels()] == segments
    error_bars = next(c for c in axes.containers if c.get_label() == "x1").lines[2][0].get_segments()
    np.testing.assert_allclose([[s[0][1], s[1][1]] for s in error_bars],
                               np.column_stack([mean[1] - 0.02, mean[1] + 0.03]))


def test_segments_chart_refuses_a_wrong_shape():
    with pytest.raises(InvalidParameterError, match=r"mean: must have shape \(2, 3\)"):
        segments_figure(["a", "b"], ["s1", "s2", "s3"], np.zeros((3, 2)), np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("n_rows", [3, 100])
def test_outputs_heatmap_is_a_png_of_features_by_outputs(n_rows):
    rng = np.random.default_rng(2)
    names = [f"feature_{i:03d}" for i in range(n_rows)]
    mean_map = rng.random((n_rows, 3))
    label = "RMS change of predictions, noise σ = 0.2"
    figure = outputs_heatmap_figure(names, ["cat", "dog", "bird"], mean_map, label)
    image = decode_png(figure)
    assert image.shape[0] >= 100 * 0.26 * n_rows
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), mean_map)
    assert [label.get_text() for label in axes.get_xticklabels()] == ["cat", "dog", "bird"]
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    assert figure.axes[1].get_xlabel() == "RMS change of predictions, noise σ = 0.2"  # the colour bar


def test_outputs_heatmap_refuses_a_map_without_one_column_per_output():
    with pytest.raises(InvalidParameterError, match=r"mean_map: must have shape \(2, 3\)"):
        outputs_heatmap_figure(["a", "b"], ["o1", "o2", "o3"], np.zeros((2, 2)))


def test_segments_chart_draws_only_the_top_names_when_asked():
    mean = np.array([[0.1, 0.2], [0.5, 0.4], [0.3, np.nan], [0.0, 0.05]])
    figure = segments_figure(["a", "b", "c", "d"], ["s1", "s2"], mean, mean, mean, top=2)
    assert [container.get_label() for container in figure.axes[0].containers] == ["b", "c"]
    with pytest.raises(InvalidParameterError, match="top: must be a positive integer"):
        segments_figure(["a"], ["s1"], np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), top=0)
