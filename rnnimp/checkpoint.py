"""Checkpoints of finished units, so a run that dies can be continued.

Under ``<out>/.rnnimp-checkpoint/``: ``manifest.json`` (what the run computes:
configuration, model and data fingerprints) and, in ``units/``, batch objects
``batch-<random hex>.npz``, each holding the per-batch sums of every unit
finished between two flushes. Units are buffered in memory and flushed when
``flush_interval_s`` seconds have passed since the last flush (checked as each
unit is recorded), on :meth:`Checkpoint.flush` (the runner calls it at the end
of each wave and before writing results) and on :meth:`Checkpoint.close`. A
killed run therefore loses at most the units finished since the last flush:
about ``flush_interval_s`` seconds of work plus one unit.

Each batch object is written atomically: on a local or other filesystem to a
temporary name then moved into place; on an object store (S3, GCS) as one
upload of the final name, which the store makes visible only once complete
(a move there would be a copy and a delete, two more requests). A run of
3,000 units thus writes a few objects instead of 3,000 (each of which was a
write, a copy and a delete on S3).

A resumed run reads every batch object back, and also the one-file-per-unit
``t<target>-s<step>-r<repeat>-h<shard>.npy`` files of the previous layout, so
a run checkpointed by the previous version resumes; it computes only the
units that are missing.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
import uuid
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs

from . import output
from .errors import InvalidParameterError
from .method import Unit

FOLDER = ".rnnimp-checkpoint"
DEFAULT_FLUSH_INTERVAL_S = 5.0
FLUSH_INTERVAL_ENV = "RNNIMP_CHECKPOINT_INTERVAL_S"  # overrides the default: seconds of work a kill may lose
_UNIT_FILE = re.compile(r"/t(\d+)-s(-?\d+)-r(\d+)-h(\d+)\.npy$")  # previous layout: one file per unit
_BATCH_FILE = re.compile(r"/batch-[0-9a-f]{32}\.npz$")
_OBJECT_STORES = frozenset({"s3", "gcs"})  # pyarrow FileSystem.type_name of stores whose single PUT is atomic

UnitId = tuple[int, int, int, int]  # target, step (-1: all steps), repeat, shard


def unit_id(unit: Unit) -> UnitId:
    return unit.target, -1 if unit.step is None else unit.step, unit.repeat, unit.shard.index


def differences(previous: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    names = []
    for key in sorted(set(previous) | set(current)):
        a, b = previous.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(prefix + key)
    return names


def encode_batch(units: dict[UnitId, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of one batch: ``ids`` int64 (units, 4), ``offsets`` int64 (units + 1)
    and ``sums`` float64 (all units' rows, 2), unit i owning rows ``offsets[i]:offsets[i+1]``."""
    ids = np.array(list(units), dtype=np.int64).reshape(-1, 4)
    pieces = [np.asarray(sums, dtype=np.float64).reshape(-1, 2) for sums in units.values()]
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(piece) for piece in pieces], out=offsets[1:])
    stacked = np.concatenate(pieces) if pieces else np.empty((0, 2))
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, offsets=offsets, sums=stacked)
    return buffer.getvalue()


def decode_batch(data: bytes) -> dict[UnitId, np.ndarray]:
    """The units of a batch written by :func:`encode_batch`: {unit id: sums float64 (batches, 2)}."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        ids, offsets, sums = arrays["ids"], arrays["offsets"], arrays["sums"]
    return {tuple(int(v) for v in ids[i]): sums[offsets[i]:offsets[i + 1]] for i in range(len(ids))}


def put_atomically(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` as ``path`` so that readers see all of it or nothing.

    Object stores: one upload of the final name. Elsewhere: a temporary name, then a move.
    """
    def write(target: str) -> None:
        with filesystem.open_output_stream(target) as stream:
            stream.write(data)

    if filesystem.type_name in _OBJECT_STORES:
        write(path)
    else:
        output._atomic(filesystem, path, write)


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Checkpoint:
    """The checkpoint folder of one output location.

    ``flush_interval_s``: the longest time finished units stay buffered in
    memory (0: every unit is written at once, as one object); default: the
    environment variable ``RNNIMP_CHECKPOINT_INTERVAL_S``, else 5 s.
    ``clock``: the time source in seconds (tests inject a fake one).
    """

    def __init__(self, out: str, manifest: dict[str, Any], *, flush_interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parameter = "flush_interval_s"
        if flush_interval_s is None:
            parameter, flush_interval_s = FLUSH_INTERVAL_ENV, os.environ.get(FLUSH_INTERVAL_ENV, DEFAULT_FLUSH_INTERVAL_S)
        if not _float_or_nan(flush_interval_s) >= 0:
            raise InvalidParameterError(parameter, "must be a number >= 0", flush_interval_s)
        flush_interval_s = float(flush_interval_s)
        self.filesystem, folder = output.resolve(out)
        self.folder = f"{folder}/{FOLDER}"
        self.manifest = json.loads(json.dumps(manifest))  # plain JSON types, as read back
        self.out = out
        self.flush_interval_s = float(flush_interval_s)
        self._clock = clock
        self._pending: dict[UnitId, np.ndarray] = {}
        self._last_flush = clock()
        self.objects_written = 0  # batch objects written by this instance

    def exists(self) -> bool:
        return self.filesystem.get_file_info(f"{self.folder}/manifest.json").type != pafs.FileType.NotFound

    def finished(self) -> dict[UnitId, np.ndarray]:
        """The sums of the units written so far, whatever run wrote them (for monitoring)."""
        return self._read_units() if self.exists() else {}

    def open(self) -> dict[UnitId, np.ndarray]:
        """Start or continue: return the sums of the units already finished.

        Refuses a checkpoint written for another configuration, model or data,
        naming what differs.
        """
        self._last_flush = self._clock()
        if self.exists():
            previous = self.read_manifest()
            differing = differences(previous, self.manifest)
            if differing:
                raise InvalidParameterError(
                    "--out", "holds an unfinished run of another configuration (differs in "
                    f"{', '.join(differing)}); use --overwrite to start afresh, or another --out", self.out)
            return self._read_units()
        self.filesystem.create_dir(f"{self.folder}/units", recursive=True)
        put_atomically(self.filesystem, f"{self.folder}/manifest.json",
                       json.dumps(self.manifest, sort_keys=True, indent=1).encode())
        return {}

    def read_manifest(self) -> dict[str, Any]:
        with self.filesystem.open_input_stream(f"{self.folder}/manifest.json") as stream:
            return json.loads(stream.read())

    def _read_units(self) -> dict[UnitId, np.ndarray]:
        selector = pafs.FileSelector(f"{self.folder}/units", allow_not_found=True)
        finished: dict[UnitId, np.ndarray] = {}
        for info in self.filesystem.get_file_info(selector):
            path = "/" + info.path.lstrip("/")
            single, batch = _UNIT_FILE.search(path), _BATCH_FILE.search(path)
            if single is None and batch is None:
                continue  # a temporary file of an interrupted write
            with self.filesystem.open_input_stream(info.path) as stream:
                data = stream.read()
            if single is not None:
                finished[tuple(int(g) for g in single.groups())] = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                finished.update(decode_batch(data))
        return finished

    def record(self, unit: Unit, sums: np.ndarray) -> None:
        """Buffer one finished unit's sums (batches, 2); flush if ``flush_interval_s`` has passed."""
        self._pending[unit_id(unit)] = np.array(sums, dtype=np.float64)
        if self._clock() - self._last_flush >= self.flush_interval_s:
            self.flush()

    @property
    def pending(self) -> int:
        """The number of finished units not yet written."""
        return len(self._pending)

    def flush(self) -> None:
        """Write the buffered units as one batch object (atomically); nothing if none are buffered."""
        if self._pending:
            put_atomically(self.filesystem, f"{self.folder}/units/batch-{uuid.uuid4().hex}.npz",
                           encode_batch(self._pending))
            self._pending = {}
            self.objects_written += 1
        self._last_flush = self._clock()

    def close(self) -> None:
        """Flush what is buffered (the checkpoint stays, for a later resume)."""
        self.flush()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def remove(self) -> None:
        """Delete the checkpoint (once the final results are in place); buffered units are dropped."""
        self._pending = {}
        try:
            self.filesystem.delete_dir(self.folder)
        except FileNotFoundError:
            pass


def clear(out: str) -> None:
    """Remove a checkpoint and the final results from ``out`` (for --overwrite)."""
    filesystem, folder = output.resolve(out)
    try:
        filesystem.delete_dir(f"{folder}/{FOLDER}")
    except FileNotFoundError:
        pass
    for name in output.RESULT_FILES:
        try:
            filesystem.delete_file(f"{folder}/{name}")
        except FileNotFoundError:
            pass
