"""How much the checkpoint adds to a 3,000-unit units phase with --out on the test S3 server.

    PYTHONPATH=$PWD python tests/bench_checkpoint_s3.py [--unit-s 0.116] [--units 3000]

Starts moto's S3 server on 127.0.0.1, then times, in real seconds, what the
driver spends checkpointing 3,000 finished units: (new) record() of each unit
with a flush whenever 5 s of the units phase have passed (the phase is
simulated by a clock that advances ``--unit-s`` per unit, so the flushes
happen as often as in a real run, but only the checkpoint's own time is
measured) plus the flush at the end of the wave; (old) the previous layout,
one object per unit written to a temporary name and moved (write, copy,
delete on S3), timed on ``--old-units`` units and scaled. The units phase it
adds to is ``units × unit-s``; the default unit time is that of the README's
2,000,000-series benchmark (shard 65,536 series × 10 steps at 5.65 M
sample-steps/s on 2 workers = 0.116 s per unit).
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np

from rnnimp.checkpoint import Checkpoint
from rnnimp import output
from s3server import BUCKET, S3Server
from test_checkpoint_batches import FakeClock, many_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=3000)
    parser.add_argument("--unit-s", type=float, default=0.116)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--old-units", type=int, default=200)
    parser.add_argument("--batches-per-unit", type=int, default=16)  # 65,536 series / eval batch 4,096
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    records = [(unit, rng.random((args.batches_per_unit, 2))) for unit, _ in many_units(args.units)]
    with S3Server() as server:
        server.create_bucket(BUCKET)
        clock = FakeClock()
        store = Checkpoint(server.uri(f"{BUCKET}/new"), {"run": 1}, flush_interval_s=args.interval_s, clock=clock)
        store.open()
        started = time.perf_counter()
        for unit, sums in records:
            clock.now += args.unit_s
            store.record(unit, sums)
        store.flush()  # end of the wave
        new_s = time.perf_counter() - started

        filesystem, folder = output.resolve(server.uri(f"{BUCKET}/old"))
        filesystem.create_dir(f"{folder}/units", recursive=True)
        started = time.perf_counter()
        for index, (unit, sums) in enumerate(records[:args.old_units]):
            buffer = io.BytesIO()
            np.save(buffer, sums, allow_pickle=False)
            output._atomic(filesystem, f"{folder}/units/u{index}.npy",
                           lambda path, data=buffer.getvalue(): _write(filesystem, path, data))
        old_s = (time.perf_counter() - started) * args.units / args.old_units
    phase_s = args.units * args.unit_s
    figures = {
        "units": args.units, "unit_s": args.unit_s, "units_phase_s": phase_s,
        "batched_checkpoint_s": round(new_s, 3), "batch_objects": store.objects_written,
        "batched_fraction_of_phase": round(new_s / phase_s, 4),
        "one_file_per_unit_s_scaled": round(old_s, 2),
        "one_file_per_unit_fraction_of_phase": round(old_s / phase_s, 4),
        "smallest_unit_s_for_20pct_batched": round(new_s / args.units / 0.2, 5),
    }
    print(f"{args.units} units of {args.unit_s} s (units phase {phase_s:.0f} s), flush every {args.interval_s} s:")
    print(f"  batched checkpoint: {new_s:.2f} s in {store.objects_written} objects = "
          f"{100 * new_s / phase_s:.2f}% of the units phase")
    print(f"  one object per unit (previous layout, {args.old_units} timed, scaled): {old_s:.1f} s = "
          f"{100 * old_s / phase_s:.1f}% of the units phase")
    print(json.dumps(figures))


def _write(filesystem, path: str, data: bytes) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


if __name__ == "__main__":
    main()
