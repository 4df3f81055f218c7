"""Reading the raw lake back: every reading (or dead letter) once, whatever compaction is doing.

A compacted file lists the files it replaced in its Parquet metadata (see `connectors.lake_compact`);
between its appearance and the deletion of those files (or after a crash in between), this reader skips the
replaced ones, so it never sees a reading twice. Glob readers such as ClickHouse's `file()`/`s3()` do not
know that rule: they may count the hour twice for the moment the swap takes.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem

from connectors import lake_store as store
from connectors.lake_compact import superseded_files
from connectors.quarantine import QUARANTINE_DIR, with_original_columns
from plantpulse.schema import QUARANTINE_ARROW_SCHEMA, READING_ARROW_SCHEMA

__all__ = ["QUARANTINE_DIR", "hour_dirs", "lake_files", "read_lake", "read_quarantine"]
_PARTITIONING = ds.partitioning(pa.schema([("dt", pa.string()), ("hour", pa.int32())]), flavor="hive")


def read_lake(lake_url: str, fs: AbstractFileSystem | None = None, *, with_partition_columns: bool = False) -> pa.Table:
    """Every reading in the lake at `lake_url` (READING_ARROW_SCHEMA; plus `dt` and `hour` if asked).

    For tests and tools: it reads the whole lake into memory. An empty or missing lake gives no rows.
    """
    fs, root = store.open_lake(lake_url, fs)
    table = _read(fs, root, READING_ARROW_SCHEMA, skip=(QUARANTINE_DIR,))
    return table if with_partition_columns else table.select(READING_ARROW_SCHEMA.names)


def read_quarantine(lake_url: str, fs: AbstractFileSystem | None = None) -> pa.Table:
    """Every dead letter kept under the lake's `quarantine/` prefix (QUARANTINE_ARROW_SCHEMA).

    Files written before `original_bytes`/`original_sha256` existed read with both filled in from `value`.
    """
    fs, root = store.open_lake(lake_url, fs)
    # Read as nullable: older files lack the original_* columns, which the dataset fills with nulls.
    readable = pa.schema([field.with_nullable(True) for field in QUARANTINE_ARROW_SCHEMA])
    table = _read(fs, f"{root.rstrip('/')}/{QUARANTINE_DIR}", readable).select(QUARANTINE_ARROW_SCHEMA.names)
    return with_original_columns(table).cast(QUARANTINE_ARROW_SCHEMA)


def lake_files(fs: AbstractFileSystem, root: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The data files a reader should read under `root`: hour directories' files minus replaced ones."""
    files: list[str] = []
    for directory in hour_dirs(fs, root, skip):
        present = store.list_data_files(fs, directory)
        replaced = superseded_files(fs, present)
        files.extend(p for p in present if posixpath.basename(p) not in replaced)
    return files


def hour_dirs(fs: AbstractFileSystem, root: str, skip: tuple[str, ...] = ()) -> list[str]:
    """`root/dt=*/hour=*` directories, sorted."""
    dirs: list[str] = []
    for dt_dir in _subdirs(fs, root):
        name = posixpath.basename(dt_dir)
        if name.startswith("dt=") and name not in skip:
            dirs.extend(h for h in _subdirs(fs, dt_dir) if posixpath.basename(h).startswith("hour="))
    return sorted(dirs)


def _subdirs(fs: AbstractFileSystem, path: str) -> list[str]:
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return [e["name"].rstrip("/") for e in entries if e["type"] == "directory"]


def _read(fs: AbstractFileSystem, root: str, schema: pa.Schema, skip: tuple[str, ...] = ()) -> pa.Table:
    full = schema.append(pa.field("dt", pa.string())).append(pa.field("hour", pa.int32()))
    files = lake_files(fs, root, skip)
    if not files:
        return full.empty_table()
    dataset = ds.dataset(
        files, filesystem=fs, format="parquet", partitioning=_PARTITIONING, partition_base_dir=root, schema=full
    )
    return dataset.to_table()
