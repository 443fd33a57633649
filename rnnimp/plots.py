"""PNG charts of importance results.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no
display, no change to the global backend), so they work on headless workers
and never open a window. Each chart function returns its
:class:`matplotlib.figure.Figure` (``figure.axes[0]`` holds the plot);
:func:`png_bytes` encodes it, and the caller writes the bytes atomically
(:func:`rnnimp.output.write_bytes`).

Charts:

- :func:`effects_figure`: one horizontal bar per target at its mean effect,
  sorted with the most important on top, its interval as an error bar and
  each repeat as a dot; the figure grows with the number of rows, so 100
  targets stay readable.
- :func:`segments_figure`: one line per target across segments, with the
  interval of each segment.
- :func:`outputs_heatmap_figure`: a colour map targets × model outputs.
- :func:`heatmap_figure`: a colour map targets × time steps.

:func:`axis_label` names the metric and the perturbation for the value axis,
e.g. ``"RMS change of predictions, noise σ = 0.2"``.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import InvalidParameterError

EFFECTS_TITLE = "Importance: mean effect, interval and repeats"
HEATMAP_TITLE = "Importance per time step"
OUTPUTS_TITLE = "Importance per output"
SEGMENTS_TITLE = "Importance per segment"
DEFAULT_AXIS_LABEL = "mean effect"

_METRIC_LABELS = {
    "rms": "RMS change of predictions",
    "mae": "Mean absolute change of predictions",
}
_LOSS_LABELS = {"mse": "MSE", "binary-crossentropy": "binary cross-entropy"}
# Vertical space per row of a chart with one row per target (inches), and the
# space for title, axis label and legend around the rows.
_ROW_INCHES = 0.26
_MARGIN_INCHES = 1.9
_DPI = 100


def axis_label(
    metric: str, perturbation: str, noise_scale: float | None = None, noise_relative: float | None = None,
    ablate_value: str | float | None = None, loss: str | None = None,
) -> str:
    """The value axis' label: what the effect measures and how inputs were perturbed.

    ``metric``: ``rms``, ``mae`` or ``loss-increase`` (then ``loss`` names
    the loss, default ``mse``). ``perturbation``: ``noise`` (σ from
    ``noise_relative`` as a fraction of each feature's sd if given, else
    ``noise_scale``), ``permute``, ``conditional-permute`` or ``ablate``
    (to ``ablate_value``). E.g. ``"RMS change of predictions, noise σ = 0.2"``,
    ``"Increase of MSE loss, permutation"``.
    """
    if metric == "loss-increase":
        loss_name = "mse" if loss is None else loss
        if loss_name not in _LOSS_LABELS:
            raise InvalidParameterError("loss", f"must be one of {', '.join(map(repr, _LOSS_LABELS))}", loss)
        measured = f"Increase of {_LOSS_LABELS[loss_name]} loss"
    elif metric in _METRIC_LABELS:
        measured = _METRIC_LABELS[metric]
    else:
        raise InvalidParameterError("metric", "must be one of 'rms', 'mae', 'loss-increase'", metric)
    if perturbation == "noise":
        if noise_relative is not None:
            how = f"noise σ = {noise_relative:g} × feature's sd"
        elif noise_scale is not None:
            how = f"noise σ = {noise_scale:g}"
        else:
            how = "noise"
    elif perturbation == "permute":
        how = "permutation"
    elif perturbation == "conditional-permute":
        how = "conditional permutation"
    elif perturbation == "ablate":
        value = f"{ablate_value:g}" if isinstance(ablate_value, (int, float)) else ablate_value
        how = "ablation" if value is None else f"ablation to {value}"
    else:
        raise InvalidParameterError(
            "perturbation", "must be one of 'noise', 'permute', 'conditional-permute', 'ablate'", perturbation)
    return f"{measured}, {how}"


def _values(parameter: str, values: Sequence[float], shape: tuple[int, ...], rule: str) -> np.ndarray:
    """``values`` as float64 of ``shape``, or InvalidParameterError with ``rule``."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != shape:
        raise InvalidParameterError(parameter, rule, array.shape)
    return array


def _per_name(parameter: str, values: Sequence[float], n: int) -> np.ndarray:
    return _values(parameter, values, (n,), f"must hold {n} values, one per name")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _rows_height(n_rows: int) -> float:
    """Figure height (inches) for ``n_rows`` rows of labels that must not overlap."""
    return max(3.0, _ROW_INCHES * n_rows + _MARGIN_INCHES)


def _label_size(n_rows: int) -> float:
    """Font size (points) of row labels: 10, down to 8 for many rows (a row is 0.26 in = 18.7 pt)."""
    return 10.0 if n_rows <= 40 else 8.0


def png_bytes(figure: Figure) -> bytes:
    """The PNG encoding of ``figure``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def effect_order(mean: np.ndarray) -> np.ndarray:
    """Indices of ``mean`` (rows,) from the largest to the smallest; NaN last; ties in input order."""
    mean = np.asarray(mean, dtype=np.float64)
    return np.argsort(-np.where(np.isnan(mean), -np.inf, mean), kind="stable")


def effects_figure(
    names: Sequence[str], mean: Sequence[float], low: Sequence[float], high: Sequence[float],
    repeats: np.ndarray | None = None, *, axis_label: str = DEFAULT_AXIS_LABEL, title: str = EFFECTS_TITLE,
) -> Figure:
    """Horizontal bars of the mean effect of each name, most important on top.

    ``mean``, ``low``, ``high``: (rows,), the mean and its interval (drawn as
    an error bar from low to high; NaN bounds draw none; the interval need
    not contain the mean, a BCa interval may not). ``repeats``: optional
    (rows, repeats) effects, NaN for repeats not run, each finite one drawn
    as a dot on its row. Rows are sorted by mean (NaN last); the bar at the
    greatest y is the largest mean. The height grows with the number of rows
    (0.26 in a row) so labels never overlap.
    """
    names = [str(name) for name in names]
    n = len(names)
    mean = _per_name("mean", mean, n)
    low = _per_name("low", low, n)
    high = _per_name("high", high, n)
    if repeats is not None:
        repeats = np.asarray(repeats, dtype=np.float64)
        if repeats.ndim != 2 or repeats.shape[0] != n:
            raise InvalidParameterError("repeats", f"must have shape ({n}, repeats), one row per name", repeats.shape)
    order = effect_order(mean)
    positions = np.arange(n)[::-1].astype(np.float64)  # sorted row i drawn at y = n-1-i: the first on top
    figure = _new_figure(7.5, _rows_height(n))
    axes = figure.add_subplot()
    axes.barh(positions, np.nan_to_num(mean[order]), height=0.7, color="tab:blue", alpha=0.75, label="mean")
    axes.errorbar((low[order] + high[order]) / 2, positions, xerr=(high[order] - low[order]) / 2, fmt="none",
                  ecolor="black", elinewidth=1.2, capsize=3, label="interval")
    if repeats is not None and repeats.shape[1]:
        # Deterministic vertical spread of the dots within the bar, so that repeats stay distinguishable.
        offsets = ((np.arange(repeats.shape[1]) + 0.5) / repeats.shape[1] - 0.5) * 0.5
        ys = positions[:, None] + offsets[None, :]
        xs = repeats[order]
        finite = np.isfinite(xs)
        axes.scatter(xs[finite], np.broadcast_to(ys, xs.shape)[finite], s=6, color="tab:orange",
                     edgecolors="none", alpha=0.8, zorder=3, label="repeats")
    axes.set_yticks(positions, [names[i] for i in order], fontsize=_label_size(n))
    axes.set_ylim(-0.6, n - 0.4)
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel(axis_label)
    if n > 30:  # a tall chart: the value scale also on top
        axes.tick_params(axis="x", top=True, labeltop=True)
    axes.set_title(title, wrap=True)
    axes.grid(axis="x", color="0.9")
    axes.set_axisbelow(True)
    if n:
        figure.legend(loc="outside lower center", ncols=3, frameon=False)
    return figure


def segments_figure(
    names: Sequence[str], segment_labels: Sequence[str], mean: np.ndarray, low: np.ndarray, high: np.ndarray,
    axis_label: str = DEFAULT_AXIS_LABEL, *, title: str = SEGMENTS_TITLE, top: int | None = None,
) -> Figure:
    """One line per name across segments, with each segment's interval as an error bar.

    ``mean``, ``low``, ``high``: (names, segments). Segments are drawn in the
    given order at x = 0, 1, ...; the lines are shifted slightly sideways
    from each other so their error bars do not hide one another. NaN values
    leave gaps. The legend lists the names, from the largest mean over the
    segments to the smallest. ``top``: draw only that many names, those with
    the largest mean over the segments (many lines are hard to tell apart).
    """
    names = [str(name) for name in names]
    segment_labels = [str(label) for label in segment_labels]
    shape = (len(names), len(segment_labels))
    rule = f"must have shape {shape}, one row per name and one column per segment"
    mean = _values("mean", mean, shape, rule)
    low = _values("low", low, shape, rule)
    high = _values("high", high, shape, rule)
    n_names, n_segments = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row of NaN: "Mean of empty slice"
        overall = np.nanmean(mean, axis=1) if n_segments else np.full(n_names, np.nan)
    order = effect_order(overall)
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise InvalidParameterError("top", "must be a positive integer", top)
        order = order[:top]
        n_names = len(order)
    legend_columns = 1 + (n_names - 1) // 25 if n_names else 1
    figure = _new_figure(max(6.0, 0.9 * n_segments + 3.5) + 1.6 * legend_columns,
                         max(4.5, 0.2 * n_names / legend_columns + 1.5))
    axes = figure.add_subplot()
    colours = _colours(n_names)
    dodge = np.linspace(-0.15, 0.15, n_names) if n_names > 1 else np.zeros(n_names)
    x = np.arange(n_segments, dtype=np.float64)
    for rank, row in enumerate(order):
        axes.errorbar(x + dodge[rank], mean[row], yerr=_offsets(mean[row], low[row], high[row]),
                      color=colours[rank], marker="o", markersize=4, linewidth=1.3, capsize=3,
                      label=names[row])
    axes.set_xticks(x, segment_labels, rotation=30 if n_segments > 6 else 0,
                    ha="right" if n_segments > 6 else "center")
    axes.set_xlabel("segment")
    axes.set_ylabel(axis_label, wrap=True)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_title(title, wrap=True)
    axes.grid(axis="y", color="0.9")
    if n_names:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0),
                    ncols=legend_columns, fontsize=8, frameon=False)
    return figure


def _offsets(mean: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths (2, n) below and above ``mean`` reaching ``low`` and ``high`` (clipped at 0)."""
    return np.vstack([np.clip(mean - low, 0.0, None), np.clip(high - mean, 0.0, None)])


def _colours(n: int) -> list:
    """``n`` distinguishable colours: tab10 up to 10, tab20 up to 20, then a continuous map."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, n)]


def _heatmap(
    values: np.ndarray, names: Sequence[str], column_labels: Sequence[str] | None, xlabel: str,
    title: str, label: str,
) -> Figure:
    """A colour map of ``values`` (rows, columns), one labelled row per name."""
    rows, columns = values.shape
    long_label = len(label) > 24  # e.g. "RMS change of predictions, noise σ = 0.2": below the map, horizontal
    height = _rows_height(rows) + (0.6 if long_label else -0.4)
    figure = _new_figure(max(6.5 if long_label else 4.5, 0.3 * columns + 3.5), height)
    axes = figure.add_subplot()
    image = axes.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
    axes.set_yticks(np.arange(rows), names, fontsize=_label_size(rows))
    if column_labels is not None:
        rotate = columns > 6 or max((len(c) for c in column_labels), default=0) > 6
        axes.set_xticks(np.arange(columns), column_labels, rotation=45 if rotate else 0,
                        ha="right" if rotate else "center")
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(xlabel)
    axes.set_title(title, wrap=True)
    if long_label:
        # A fixed ~0.3 inch bar whatever the height and gap (the defaults, 15 % of the axes, are huge when tall).
        figure.colorbar(image, ax=axes, label=label, location="bottom", shrink=0.8,
                        fraction=min(0.15, 0.3 / height), pad=min(0.15, 0.6 / height),
                        aspect=max(20.0, 20.0 * height / 4.0))
    else:
        # A colour bar the full height of 100 rows is needlessly long: at most about 6 inches.
        figure.colorbar(image, ax=axes, label=label, shrink=min(1.0, 6.0 / max(rows * _ROW_INCHES, 1.0)))
    return figure


def heatmap_figure(
    effects_map: np.ndarray, names: Sequence[str], *, title: str = HEATMAP_TITLE, label: str = DEFAULT_AXIS_LABEL,
) -> Figure:
    """A colour map of ``effects_map`` (targets, steps): one row per name, one column per time step."""
    names = [str(name) for name in names]
    values = np.asarray(effects_map, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(names):
        raise InvalidParameterError(
            "effects_map", f"must have shape ({len(names)}, steps), one row per name", values.shape)
    return _heatmap(values, names, None, "time step (0 = first)", title, label)


def outputs_heatmap_figure(
    names: Sequence[str], output_labels: Sequence[str], mean_map: np.ndarray,
    axis_label: str = DEFAULT_AXIS_LABEL, *, title: str = OUTPUTS_TITLE,
) -> Figure:
    """A colour map of ``mean_map`` (targets, outputs): which input drives which output.

    One row per name, one column per output label (an output index or
    name, e.g. a class); ``axis_label`` labels the colour bar.
    """
    names = [str(name) for name in names]
    output_labels = [str(label) for label in output_labels]
    shape = (len(names), len(output_labels))
    rule = f"must have shape {shape}, one row per name and one column per output"
    values = _values("mean_map", mean_map, shape, rule)
    return _heatmap(values, names, output_labels, "model output", title, axis_label)
