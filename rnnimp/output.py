"""Parquet output: schemas, provenance metadata, atomic writes to any pyarrow filesystem."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

METADATA_KEY = b"rnnimp"

EFFECTS_FILE = "effects.parquet"
SUMMARY_FILE = "summary.parquet"
MODEL_FILE = "model.keras"
COMPARISONS_FILE = "comparisons.parquet"
RANKS_FILE = "rank_probabilities.parquet"
CHART_FILE = "effects.png"
SEGMENT_COMPARISONS_FILE = "segment_comparisons.parquet"
SEGMENTS_CHART_FILE = "segments.png"
OUTPUTS_CHART_FILE = "outputs.png"
RESULT_FILES = (EFFECTS_FILE, SUMMARY_FILE, MODEL_FILE, COMPARISONS_FILE, RANKS_FILE, CHART_FILE,
                SEGMENT_COMPARISONS_FILE, SEGMENTS_CHART_FILE, OUTPUTS_CHART_FILE)


def resolve(out: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path for ``out``: a local folder or a pyarrow.fs URI."""
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    return pafs.LocalFileSystem(), os.path.abspath(out)


def with_metadata(table: pa.Table, metadata: Mapping[str, Any]) -> pa.Table:
    """``table`` carrying ``metadata`` as JSON under the key ``rnnimp``."""
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def read_metadata(path: str) -> dict[str, Any]:
    """The run metadata stored in a Parquet file written by rnnimp."""
    filesystem, resolved = resolve(path)
    schema = pq.read_schema(resolved, filesystem=filesystem)
    return json.loads(schema.metadata[METADATA_KEY])


def _atomic(filesystem: pafs.FileSystem, final_path: str, write) -> None:
    """Write through ``write(temporary_path)``, then move into ``final_path``."""
    folder, name = final_path.rsplit("/", 1) if "/" in final_path else ("", final_path)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp" if folder else f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temporary)
        filesystem.move(temporary, final_path)
    except BaseException:
        try:
            filesystem.delete_file(temporary)
        except (FileNotFoundError, OSError):
            pass
        raise


def write_table(table: pa.Table, out: str, name: str) -> str:
    """Write ``table`` as ``out/name`` atomically; return the final path."""
    filesystem, folder = resolve(out)
    filesystem.create_dir(folder, recursive=True)
    final_path = f"{folder}/{name}"
    _atomic(filesystem, final_path, lambda path: pq.write_table(table, path, filesystem=filesystem))
    return final_path


def write_bytes(data: bytes, out: str, name: str, create_dir: bool = True) -> str:
    """Write ``data`` as ``out/name`` atomically; return the final path."""
    filesystem, folder = resolve(out)
    if create_dir:
        filesystem.create_dir(folder, recursive=True)
    final_path = f"{folder}/{name}"

    def write(path: str) -> None:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)

    _atomic(filesystem, final_path, write)
    return final_path
