"""Build the two worked examples of the README's "Several inputs" and "Variable-length series" sections.

  python docs/inputs_examples.py --out results/examples

writes, under --out:
- forecast/model.keras, forecast/sequence.parquet, forecast/static.parquet: a model
  with a sequence input (12 steps of demand, price, promo) and static store
  covariates (size, age, region_code); the target depends on demand, on
  size × demand and on the last price, not on promo, age or region_code;
- masked/model.keras, masked/series.parquet (long form, 3 to 12 steps per
  series), masked/padded.npy (the same series post-padded with 0): an LSTM
  behind a Masking(0) layer; the target depends on a (mean over the real
  steps) and b (last real step), not on c.
Small models trained for a few seconds; the seed fixes everything.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def forecast(out: str, rng: np.random.Generator) -> None:
    import keras

    from rnnimp import data

    n, steps = 3000, 12
    sequence = rng.uniform(0.0, 1.0, size=(n, steps, 3)).astype(np.float32)  # demand, price, promo
    static = np.column_stack([rng.uniform(0.5, 2.0, n), rng.uniform(0, 1, n), rng.integers(0, 4, n)]).astype(np.float32)
    target = (sequence[:, :, 0].mean(axis=1) * static[:, 0] - 0.5 * sequence[:, -1, 1])[:, None]
    seq_in = keras.Input((steps, 3), name="sequence")
    static_in = keras.Input((3,), name="static")
    hidden = keras.layers.LSTM(16)(seq_in)
    merged = keras.layers.Concatenate()([hidden, keras.layers.Dense(8, activation="relu")(static_in)])
    output = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(merged))
    model = keras.Model([seq_in, static_in], output)
    model.compile("adam", "mse")
    model.fit({"sequence": sequence, "static": static}, target, epochs=30, batch_size=64, verbose=0)
    folder = os.path.join(out, "forecast")
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    evaluation = slice(0, 500)
    data.write_long_parquet(sequence[evaluation], os.path.join(folder, "sequence.parquet"),
                            ["demand", "price", "promo"], series_column="store")
    data.write_static_parquet(static[evaluation], os.path.join(folder, "static.parquet"),
                              ["size", "age", "region_code"], series_column="store")


def masked(out: str, rng: np.random.Generator) -> None:
    import keras

    from rnnimp import data

    n, steps = 3000, 12
    values = rng.uniform(0.1, 1.0, size=(n, steps, 3)).astype(np.float32)  # a, b, c
    lengths = rng.integers(3, steps + 1, size=n)
    real = np.arange(steps)[None, :] < lengths[:, None]
    padded = np.where(real[:, :, None], values, np.float32(0.0))
    target = ((padded[:, :, 0].sum(axis=1) / lengths) + values[np.arange(n), lengths - 1, 1])[:, None]
    model = keras.Sequential([keras.Input((steps, 3), name="series"), keras.layers.Masking(0.0),
                              keras.layers.LSTM(16), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(padded, target, epochs=30, batch_size=64, verbose=0)
    folder = os.path.join(out, "masked")
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))
    evaluation = slice(0, 500)
    data.write_long_parquet(padded[evaluation], os.path.join(folder, "series.parquet"), ["a", "b", "c"],
                            lengths=lengths[evaluation])
    np.save(os.path.join(folder, "padded.npy"), padded[evaluation])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import keras

    keras.utils.set_random_seed(args.seed)
    forecast(args.out, np.random.default_rng(args.seed))
    masked(args.out, np.random.default_rng(args.seed + 1))
    print(f"wrote {args.out}/forecast and {args.out}/masked")


if __name__ == "__main__":
    main()
