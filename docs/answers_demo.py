"""Make the demo model and data of the README's "More answers from one run" section.

  python docs/answers_demo.py /tmp/answers   # writes model.keras, data.parquet and segmented.parquet

800 series of 6 steps, features price, price_lag (price one step earlier, so
the two are strongly correlated), volume and noise; segmented.parquet adds a month
column (2024-01 for the first 400 series, 2024-02 for the rest); in 2024-02
volume barely moves. A linear model with two outputs: level = Σ_t (price + 0.5 volume),
spread = Σ_t (volume − 0.2 noise); it never reads price_lag.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main(folder: str) -> None:
    import keras

    from rnnimp.data import write_long_parquet

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, steps = 800, 6
    walk = np.cumsum(rng.normal(size=(n, steps + 1)), axis=1)
    price, price_lag = walk[:, 1:], walk[:, :-1]
    volume = rng.normal(size=(n, steps))
    volume[n // 2:] = 0.02 * volume[n // 2:]  # 2024-02: volume nearly constant
    noise = rng.normal(size=(n, steps))
    sample = np.stack([price, price_lag, volume, noise], axis=2).astype(np.float32)
    write_long_parquet(sample, str(out / "data.parquet"), ["price", "price_lag", "volume", "noise"])
    table = pq.read_table(out / "data.parquet")
    month = np.where(table["series"].to_numpy() < n // 2, "2024-01", "2024-02")
    pq.write_table(table.append_column("month", pa.array(month)), out / "segmented.parquet")
    weights = np.zeros((steps, 4, 2), dtype=np.float32)
    weights[:, 0, 0], weights[:, 2, 0] = 1.0, 0.5
    weights[:, 2, 1], weights[:, 3, 1] = 1.0, -0.2
    model = keras.Sequential([keras.Input((steps, 4)), keras.layers.Flatten(),
                              keras.layers.Dense(2, use_bias=False)])
    model.layers[-1].set_weights([weights.reshape(steps * 4, 2)])
    model.save(out / "model.keras")


if __name__ == "__main__":
    main(sys.argv[1])
