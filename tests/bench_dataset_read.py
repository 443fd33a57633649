"""Reading a local dataset shard by shard: plan time, read time and exact moments time per shard.

    PYTHONPATH=$PWD python tests/bench_dataset_read.py --series 2000000 [--dir /tmp/ds] [--shard-size 65536]

Writes the dataset (random float32, 10 steps, 3 features, ``--series-per-file``
series per file) if ``--dir`` holds none, then times DatasetPlan.open, read_shard
of every shard and Moments.of of each, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from rnnimp.dataset import DatasetPlan, Moments, read_shard, write_dataset
from rnnimp.method import Layout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=2_000_000)
    parser.add_argument("--dir", default="/tmp/rnnimp-bench-dataset")
    parser.add_argument("--series-per-file", type=int, default=65536)
    parser.add_argument("--shard-size", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    if not os.path.isdir(args.dir):
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for first in range(0, args.series, args.series_per_file * 8):  # bounded memory while writing
            count = min(args.series_per_file * 8, args.series - first)
            chunk = rng.standard_normal((count, 10, 3), dtype=np.float32)
            write_dataset(chunk, f"{args.dir}/chunk{first:012d}", args.series_per_file,
                          series_ids=np.arange(first, first + count))
        print(f"wrote {args.series} series in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    plan = DatasetPlan.open(args.dir)
    plan_s = time.perf_counter() - started
    shards = Layout.for_sample(plan.n_series, args.batch_size, args.shard_size).shards
    read_s, moments_s, total = 0.0, 0.0, None
    for shard in shards:
        started = time.perf_counter()
        array = read_shard(plan, shard)
        read_s += time.perf_counter() - started
        started = time.perf_counter()
        part = Moments.of(array)
        moments_s += time.perf_counter() - started
        total = part if total is None else total + part
    steps = plan.n_series * plan.n_time
    print(json.dumps({
        "series": plan.n_series, "files": len(plan.files), "shards": len(shards), "plan_s": round(plan_s, 3),
        "read_s": round(read_s, 2), "read_msteps_per_s": round(steps / read_s / 1e6, 2),
        "moments_s": round(moments_s, 2), "moments_msteps_per_s": round(steps / moments_s / 1e6, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "means": total.means().tolist(), "stds": total.stds().tolist(),
    }))


if __name__ == "__main__":
    main()
