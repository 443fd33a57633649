"""Speed of the fused forward pass against ``model(x)`` under XLA, per kind of model (benchmark helper, no Ray).

Run ``python -m rnnimp.forward_speed [KIND ...]`` for a table and one JSON line; it pins
TensorFlow to one thread first, as the figures are one-thread figures.
``jobs.benchmark`` can call :func:`forward_speedups` in its one-thread
subprocess (after ``configure_tensorflow(threads=1)``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

import numpy as np

TIME_STEPS = 10
N_FEATURES = 3


def _models() -> dict[str, Callable[[], object]]:
    """Builders of one model per kind, about the reference LSTM's size: 10 steps, 3 features."""
    import keras

    from . import reference

    layers = keras.layers

    def sequential(*stack):
        return keras.Sequential([keras.Input((TIME_STEPS, N_FEATURES)), *stack])

    def functional(*stack):
        inputs = tensor = keras.Input((TIME_STEPS, N_FEATURES))
        for layer in stack:
            tensor = layer(tensor)
        return keras.Model(inputs, tensor)

    def three(kind, **options):  # the reference's stack with another recurrent layer
        return [kind(10, activation="relu", return_sequences=True, **options),
                kind(5, activation="relu", return_sequences=True, **options),
                kind(1, activation="sigmoid", return_sequences=True, **options), layers.Flatten()]

    return {
        "lstm": lambda: reference.build_model(0),
        "gru": lambda: sequential(*three(layers.GRU)),
        "gru-reset-before": lambda: sequential(*three(layers.GRU, reset_after=False)),
        "simple-rnn": lambda: sequential(*three(layers.SimpleRNN)),
        "bidirectional": lambda: sequential(layers.Bidirectional(layers.LSTM(10, return_sequences=True)),
                                            layers.Bidirectional(layers.GRU(5), merge_mode="sum"), layers.Dense(1)),
        "functional": lambda: functional(layers.LSTM(10, return_sequences=True), layers.GRU(5), layers.Dense(1)),
        "masked": lambda: sequential(layers.Masking(), layers.LSTM(10, return_sequences=True), layers.LSTM(5),
                                     layers.Dense(1, activation="sigmoid")),
        "masked-simple-rnn": lambda: sequential(layers.Masking(), *three(layers.SimpleRNN)),
        "masked-bidirectional": lambda: sequential(layers.Masking(),
                                                   layers.Bidirectional(layers.GRU(10, return_sequences=True)),
                                                   layers.GRU(5), layers.Dense(1)),
    }


def _batch(n_series: int, masked: bool, seed: int = 0) -> np.ndarray:
    """(n_series, TIME_STEPS, N_FEATURES) float32; for masked models, half post-padded, half pre-padded with 0."""
    rng = np.random.default_rng(seed)
    batch = rng.normal(size=(n_series, TIME_STEPS, N_FEATURES)).astype(np.float32)
    if masked:
        lengths = rng.integers(1, TIME_STEPS + 1, n_series)
        for row, length in enumerate(lengths):
            batch[row, length:] = 0.0 if row % 2 else batch[row, length:]
            batch[row, :TIME_STEPS - length] = batch[row, :TIME_STEPS - length] if row % 2 else 0.0
    return batch


def _seconds(forward, batch: np.ndarray, passes: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per pass of ``forward`` on ``batch``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        forward(batch)
    return (time.perf_counter() - wall) / passes, (time.process_time() - cpu) / passes


def forward_speedups(n_series: int = 4096, passes: int = 5, repeats: int = 7,
                     names: list[str] | None = None) -> dict[str, dict]:
    """Seconds per forward pass of ``n_series`` series, fused and ``model(x)`` under XLA, per kind of model.

    Each figure is the best of ``repeats`` timings of ``passes`` passes, the
    two passes timed alternately (fair on a shared machine); compilation is
    not timed. Wall seconds are the figure; process-CPU seconds beside them
    are less distorted on a machine shared with other work. ``names``: the kinds to time (default all of :func:`_models`). Returns {kind: {"forward": fused_kind, "fused_s", "keras_xla_s",
    "speedup", "max_abs_difference"}}. Threads are whatever TF was set to.
    """
    from .lstm import fused_forward, fused_kind
    from .method import keras_forward

    results = {}
    for name, build in _models().items():
        if names is not None and name not in names:
            continue
        model = build()
        rng = np.random.default_rng(1)
        model.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
        batch = _batch(n_series, masked=name.startswith("masked"))
        fused, plain = fused_forward(model), keras_forward(model, jit_compile=True)
        difference = float(np.max(np.abs(fused(batch) - plain(batch))))  # also compiles both
        fused_s = keras_s = fused_cpu_s = keras_cpu_s = float("inf")
        for _ in range(repeats):
            wall, cpu = _seconds(fused, batch, passes)
            fused_s, fused_cpu_s = min(fused_s, wall), min(fused_cpu_s, cpu)
            wall, cpu = _seconds(plain, batch, passes)
            keras_s, keras_cpu_s = min(keras_s, wall), min(keras_cpu_s, cpu)
        results[name] = {"forward": fused_kind(model), "fused_s": fused_s, "keras_xla_s": keras_s,
                         "speedup": keras_s / fused_s, "fused_cpu_s": fused_cpu_s, "keras_xla_cpu_s": keras_cpu_s,
                         "cpu_speedup": keras_cpu_s / fused_cpu_s, "max_abs_difference": difference}
    return results


def main() -> None:
    from .modelio import configure_tensorflow

    configure_tensorflow(threads=1)
    results = forward_speedups(names=sys.argv[1:] or None)
    print(f"{'model':22s} {'forward':17s} {'fused ms':>8s} {'model(x) ms':>11s} {'speed-up':>8s} "
          f"{'CPU speed-up':>12s} {'max |diff|':>10s}")
    for name, row in results.items():
        print(f"{name:22s} {row['forward']:17s} {1e3 * row['fused_s']:8.2f} {1e3 * row['keras_xla_s']:11.2f} "
              f"{row['speedup']:7.2f}x {row['cpu_speedup']:11.2f}x {row['max_abs_difference']:10.1e}")
    print(json.dumps({name: {"speedup": round(row["speedup"], 3), "cpu_speedup": round(row["cpu_speedup"], 3)}
                      for name, row in results.items()}))


if __name__ == "__main__":
    main()
