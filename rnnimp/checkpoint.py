"""Checkpoints of finished units, so a run that dies can be continued.

Under ``<out>/.rnnimp-checkpoint/``: ``manifest.json`` (what the run computes:
configuration, model and data fingerprints) and one small ``.npy`` file per
finished unit holding its per-batch sums. Each file is written to a temporary
name and moved into place, so a kill leaves either the whole file or none.
A resumed run reads them back and computes only the units that are missing.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from . import output
from .errors import InvalidParameterError
from .method import Unit

FOLDER = ".rnnimp-checkpoint"
_UNIT_FILE = re.compile(r"t(\d+)-s(-?\d+)-r(\d+)-h(\d+)\.npy$")

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


class Checkpoint:
    """The checkpoint folder of one output location."""

    def __init__(self, out: str, manifest: dict[str, Any]) -> None:
        self.filesystem, folder = output.resolve(out)
        self.folder = f"{folder}/{FOLDER}"
        self.manifest = json.loads(json.dumps(manifest))  # plain JSON types, as read back
        self.out = out

    def exists(self) -> bool:
        return self.filesystem.get_file_info(f"{self.folder}/manifest.json").type != pafs.FileType.NotFound

    def open(self) -> dict[UnitId, np.ndarray]:
        """Start or continue: return the sums of the units already finished.

        Refuses a checkpoint written for another configuration, model or data,
        naming what differs.
        """
        if self.exists():
            previous = self.read_manifest()
            differing = differences(previous, self.manifest)
            if differing:
                raise InvalidParameterError(
                    "--out", "holds an unfinished run of another configuration (differs in "
                    f"{', '.join(differing)}); use --overwrite to start afresh, or another --out", self.out)
            return self._read_units()
        self.filesystem.create_dir(f"{self.folder}/units", recursive=True)
        output.write_bytes(json.dumps(self.manifest, sort_keys=True, indent=1).encode(), self.folder, "manifest.json")
        return {}

    def read_manifest(self) -> dict[str, Any]:
        with self.filesystem.open_input_stream(f"{self.folder}/manifest.json") as stream:
            return json.loads(stream.read())

    def _read_units(self) -> dict[UnitId, np.ndarray]:
        selector = pafs.FileSelector(f"{self.folder}/units", allow_not_found=True)
        finished = {}
        for info in self.filesystem.get_file_info(selector):
            match = _UNIT_FILE.search(info.path)
            if match is None:
                continue  # a temporary file of an interrupted write
            with self.filesystem.open_input_stream(info.path) as stream:
                finished[tuple(int(g) for g in match.groups())] = np.load(
                    io.BytesIO(stream.read()), allow_pickle=False)
        return finished

    def record(self, unit: Unit, sums: np.ndarray) -> None:
        """Store one finished unit's sums (atomically)."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(sums, dtype=np.float64), allow_pickle=False)
        target, step, repeat, shard = unit_id(unit)
        output.write_bytes(buffer.getvalue(), f"{self.folder}/units", f"t{target}-s{step}-r{repeat}-h{shard}.npy",
                           create_dir=False)

    def remove(self) -> None:
        """Delete the checkpoint (once the final results are in place)."""
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
