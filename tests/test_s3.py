"""Output and the batched checkpoint on a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rnnimp import output
from rnnimp.checkpoint import FOLDER, Checkpoint, unit_id, clear
from s3server import BUCKET, s3  # noqa: F401  (the session fixture)
from test_checkpoint_batches import FakeClock, many_units


def test_write_table_and_read_back_on_s3(s3):
    out = s3.uri(f"{BUCKET}/results/run1")
    table = output.with_metadata(pa.table({"target": ["a", "b"], "effect": [0.5, 0.25]}), {"seed": 3})
    path = output.write_table(table, out, "effects.parquet")
    assert path == f"{BUCKET}/results/run1/effects.parquet"
    filesystem = s3.filesystem()
    assert pq.read_table(path, filesystem=filesystem).equals(table)
    assert output.read_metadata(s3.uri(path)) == {"seed": 3}
    names = [info.path for info in filesystem.get_file_info(pafs.FileSelector(f"{BUCKET}/results/run1"))]
    assert names == [path]  # no temporary left behind
    output.write_bytes(b"png", out, "effects.png")
    clear(out)
    assert filesystem.get_file_info(path).type == pafs.FileType.NotFound


def test_batched_checkpoint_on_s3_resumes_with_flushed_units(s3):
    out, clock = s3.uri(f"{BUCKET}/checkpointed"), FakeClock()
    records = many_units(3000)
    store = Checkpoint(out, {"run": 1}, flush_interval_s=5.0, clock=clock)
    assert store.open() == {}
    for unit, sums in records[:2990]:  # 30 simulated seconds
        clock.now += 0.01
        store.record(unit, sums)
    store.flush()
    for unit, sums in records[2990:]:
        store.record(unit, sums)  # never flushed: lost with the "killed" driver
    filesystem = s3.filesystem()
    units_folder = f"{BUCKET}/checkpointed/{FOLDER}/units"
    objects = filesystem.get_file_info(pafs.FileSelector(units_folder))
    assert len(objects) == store.objects_written <= 7

    resumed = Checkpoint(out, {"run": 1})
    finished = resumed.open()
    assert sorted(finished) == sorted(unit_id(unit) for unit, _ in records[:2990])
    for unit, sums in records[:2990]:
        np.testing.assert_array_equal(finished[unit_id(unit)], sums)
    resumed.remove()
    assert not resumed.exists()
