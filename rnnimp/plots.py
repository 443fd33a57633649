"""PNG charts of importance results.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no
display, no change to the global backend), so they work on headless workers
and never open a window. Each chart function returns its
:class:`matplotlib.figure.Figure` (``figure.axes[0]`` holds the plot) and
writes the PNG atomically: to a temporary name beside the final one, then
renamed into place (:func:`rnnimp.output.write_bytes`).
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import output
from .errors import InvalidParameterError

BAR_TITLE = "Importance: mean effect and confidence interval"
HEATMAP_TITLE = "Importance per time step"


def _values(parameter: str, values: Sequence[float], n: int) -> np.ndarray:
    """``values`` as float64 (n,), or InvalidParameterError."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise InvalidParameterError(parameter, f"must hold {n} values, one per name", array.shape)
    return array


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The PNG encoding of ``figure``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def save_png(figure: Figure, path: str) -> str:
    """Write ``figure`` as a PNG at ``path`` (local, or a pyarrow.fs URI) atomically; return the final path."""
    folder, name = path.rsplit("/", 1) if "://" in path else os.path.split(os.path.abspath(path))
    return output.write_bytes(png_bytes(figure), folder, name)


def bar_figure(
    names: Sequence[str], means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
    *, title: str = BAR_TITLE, ylabel: str = "mean effect",
) -> Figure:
    """One bar per name at its mean, with a bar from low to high for its interval.

    ``means``, ``lows``, ``highs``: (names,). A NaN interval draws no error
    bar. The interval need not contain the mean (a BCa interval may not).
    """
    names = [str(name) for name in names]
    n = len(names)
    means = _values("means", means, n)
    lows = _values("lows", lows, n)
    highs = _values("highs", highs, n)
    figure = _new_figure(max(6.4, 0.6 * n + 2.0), 4.0)
    axes = figure.add_subplot()
    positions = np.arange(n)
    axes.bar(positions, means, color="tab:blue", label="mean")
    axes.errorbar(positions, (lows + highs) / 2, yerr=(highs - lows) / 2, fmt="none",
                  ecolor="black", capsize=4, label="interval")
    axes.set_xticks(positions, names, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    axes.set_ylabel(ylabel)
    axes.set_title(title, wrap=True)
    axes.axhline(0.0, color="grey", linewidth=0.8)
    return figure


def heatmap_figure(
    effects_map: np.ndarray, names: Sequence[str], *, title: str = HEATMAP_TITLE, label: str = "mean effect",
) -> Figure:
    """A colour map of ``effects_map`` (targets, steps): one row per name, one column per time step."""
    names = [str(name) for name in names]
    values = np.asarray(effects_map, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(names):
        raise InvalidParameterError(
            "effects_map", f"must have shape ({len(names)}, steps), one row per name", values.shape)
    rows, steps = values.shape
    figure = _new_figure(max(4.0, 0.3 * steps + 3.0), max(2.5, 0.4 * rows + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis")
    axes.set_yticks(np.arange(rows), names)
    axes.set_xlabel("time step (0 = first)")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label=label)
    return figure


def bar_chart(
    names: Sequence[str], means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
    path: str, title: str = BAR_TITLE,
) -> Figure:
    """Write the bar chart of :func:`bar_figure` as a PNG at ``path``; return the figure."""
    figure = bar_figure(names, means, lows, highs, title=title)
    save_png(figure, path)
    return figure


def heatmap(effects_map: np.ndarray, names: Sequence[str], path: str, title: str = HEATMAP_TITLE) -> Figure:
    """Write the time-step map of :func:`heatmap_figure` as a PNG at ``path``; return the figure."""
    figure = heatmap_figure(effects_map, names, title=title)
    save_png(figure, path)
    return figure
