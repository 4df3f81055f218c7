"""Compaction of the raw lake: an hour's files merged into one, sorted by machine and time.

`compact_hour` is idempotent and crash-safe ("write new, then swap"):

1. the hour's files are read; files already replaced by a compacted file (an interrupted earlier run)
   are left out of the merge;
2. the merged rows, sorted by (machine_id, ts, seq), are written as `compacted-<digest>.parquet` in one
   atomic step (rename on local disk, one PUT on S3). Its Parquet metadata (`plantpulse.replaces`) lists
   every file it replaces and, for each sink file, its Kafka partition and offset range;
3. the replaced files are deleted.

A crash between 2 and 3 leaves both; `connectors.lake_read` skips files that a compacted file replaces, so
our readers never see a reading twice or miss one, and the next run finishes step 3. Running it again on a
compacted hour changes nothing; late files that arrived since are merged with the compacted file.

`roll_up_partition` is the live sink's own, smaller version: at a snapshot, one partition merges its small
per-snapshot files of an hour into `compacted-pPPP-<digest>.parquet`, with the same provenance metadata.

Exactly-once with the live sink: a sink that resumes from a snapshot deletes the files of uncommitted
sequences. If compaction has already merged such a file, `drop_compacted_rows` removes its rows from the
compacted file instead (by its partition and offset range), so replayed rows are not doubled. Hours still
being written are refused (`min_age_s` after the hour's end) to keep compaction and the live sink apart.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from connectors import lake_store as store
from plantpulse.schema import READING_ARROW_SCHEMA

COMPACTED_PREFIX = "compacted-"
REPLACES_KEY = b"plantpulse.replaces"
SORT_KEYS = [("machine_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")]


@dataclass(frozen=True)
class CompactionResult:
    """What `compact_hour` did to one hour directory."""

    directory: str
    files_before: int
    files_after: int
    rows: int
    output: str | None  # the compacted file written, None when nothing was written
    note: str  # "compacted", "already compact", "empty", "too recent", "finished an interrupted run"


def compact_hour(fs: AbstractFileSystem, root: str, hour_bucket: int, *, now_s: float, min_age_s: float) -> CompactionResult:
    """Merge the files of event hour `hour_bucket` (ms // 3_600_000) under lake `root` into one."""
    directory = store.hour_dir(root, hour_bucket)
    hour_end_s = (hour_bucket + 1) * 3600
    if now_s < hour_end_s + min_age_s:
        return CompactionResult(directory, 0, 0, 0, None, "too recent")
    present = store.list_data_files(fs, directory)
    replaced = superseded_files(fs, present)
    leftovers = [p for p in present if posixpath.basename(p) in replaced]
    live = [p for p in present if posixpath.basename(p) not in replaced]
    if not live:
        return CompactionResult(directory, 0, 0, 0, None, "empty")
    if len(live) == 1 and _is_compacted(live[0]):
        store.remove_quietly(fs, leftovers)
        note = "finished an interrupted run" if leftovers else "already compact"
        return CompactionResult(directory, len(present), 1, pq.read_metadata(fs.open(live[0])).num_rows, None, note)

    output, rows = _merge(fs, directory, live, COMPACTED_PREFIX)
    store.remove_quietly(fs, leftovers + [p for p in live if p != output])
    return CompactionResult(directory, len(present), 1, rows, output, "compacted")


def roll_up_partition(fs: AbstractFileSystem, directory: str, partition: int) -> CompactionResult:
    """Merge the small per-snapshot files of one sink `partition` in an hour `directory` into one file.

    The live sink's own, smaller compaction: it touches only that partition's plain sequence files (never
    another partition's, nor earlier roll-ups, so its cost is what was written since the last roll-up), and
    it needs no minimum age because the file it writes records each merged file's Kafka offset range, which
    is what lets a resumed sink take an uncommitted sequence back out (`drop_compacted_rows`).
    """
    present = store.list_data_files(fs, directory)
    replaced = superseded_files(fs, present)
    own = [p for p in present if store.partition_of(p) == partition]
    leftovers = [p for p in own if posixpath.basename(p) in replaced]
    small = [p for p in own if posixpath.basename(p) not in replaced]
    if len(small) < 2:
        store.remove_quietly(fs, leftovers)
        return CompactionResult(directory, len(own), len(small), 0, None, "nothing to roll up")
    # Unsorted: a roll-up runs inside the live flow's snapshot, where a sort would cost the flow more than
    # it saves readers; `compact_hour` sorts the hour when it is done.
    output, rows = _merge(fs, directory, small, f"{COMPACTED_PREFIX}p{partition:03d}-", sort=False)
    store.remove_quietly(fs, leftovers + small)
    return CompactionResult(directory, len(own), 1, rows, output, "rolled up")


def _merge(fs: AbstractFileSystem, directory: str, files: list[str], prefix: str, sort: bool = True) -> tuple[str, int]:
    """Write `files` merged (and sorted) as `<prefix><digest>.parquet` in one atomic step; (its path, rows)."""
    tables, replaces = [], []
    for path in files:
        table = _read_file(fs, path)
        tables.append(table)
        replaces.extend(_provenance(fs, path, table))
    merged = pa.concat_tables(tables)
    if sort:
        merged = merged.sort_by(SORT_KEYS)
    digest = hashlib.sha1("\n".join(sorted(posixpath.basename(p) for p in files)).encode()).hexdigest()[:16]
    output = posixpath.join(directory, f"{prefix}{digest}.parquet")
    store.put_bytes(fs, output, _parquet_bytes(merged, replaces))
    return output, merged.num_rows


def compact_date(
    fs: AbstractFileSystem, root: str, date: str, hour: int | None, *, now_s: float, min_age_s: float
) -> list[CompactionResult]:
    """Compact one hour (`hour` 0-23) or every hour of `date` (YYYY-MM-DD, UTC)."""
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"lake compact: --date {date!r} is not YYYY-MM-DD") from exc
    if hour is not None and not 0 <= hour <= 23:
        raise ValueError(f"lake compact: --hour {hour!r} is not 0-23")
    first = int(day.timestamp()) // 3600
    hours = [first + hour] if hour is not None else [first + h for h in range(24)]
    return [compact_hour(fs, root, h, now_s=now_s, min_age_s=min_age_s) for h in hours]


def superseded_files(fs: AbstractFileSystem, files: list[str]) -> set[str]:
    """Names (basenames) of files that a compacted file among `files` replaces."""
    names: set[str] = set()
    for path in files:
        if _is_compacted(path):
            names.update(entry["file"] for entry in replaced_by(fs, path))
    return names


def replaced_by(fs: AbstractFileSystem, compacted_path: str) -> list[dict]:
    """The `plantpulse.replaces` entries of a compacted file."""
    with fs.open(compacted_path, "rb") as handle:
        metadata = pq.read_schema(handle).metadata or {}
    try:
        return list(json.loads(metadata.get(REPLACES_KEY, b"[]")))
    except ValueError as exc:
        raise ValueError(f"lake compact: {compacted_path} has unreadable {REPLACES_KEY.decode()} metadata: {exc}") from exc


def drop_compacted_rows(fs: AbstractFileSystem, sink_files: list[str]) -> int:
    """Remove from compacted files the rows of `sink_files` (deleted uncommitted sequences); rows removed.

    Each compacted file is rewritten in one atomic step, without the rows and without the entries, so a
    repeat (after a crash, or for files never compacted) finds nothing more to do.
    """
    by_dir: dict[str, set[str]] = {}
    for path in sink_files:
        by_dir.setdefault(posixpath.dirname(path), set()).add(posixpath.basename(path))
    removed = 0
    for directory, names in by_dir.items():
        for compacted in (p for p in store.list_data_files(fs, directory) if _is_compacted(p)):
            entries = replaced_by(fs, compacted)
            dropped = [e for e in entries if e["file"] in names and "partition" in e]
            if not dropped:
                continue
            table = _read_file(fs, compacted)
            keep = pc.invert(_rows_of(table, dropped))
            kept = table.filter(keep)
            removed += table.num_rows - kept.num_rows
            remaining = [e for e in entries if e not in dropped]
            store.put_bytes(fs, compacted, _parquet_bytes(kept, remaining))
    return removed


def _rows_of(table: pa.Table, entries: list[dict]) -> pa.ChunkedArray:
    partition, offset = table["kafka_partition"], table["kafka_offset"]
    mask = pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
    for e in entries:
        hit = pc.and_(
            pc.equal(partition, e["partition"]),
            pc.and_(pc.greater_equal(offset, e["min_offset"]), pc.less_equal(offset, e["max_offset"])),
        )
        mask = pc.or_(mask, hit)
    return mask


def _provenance(fs: AbstractFileSystem, path: str, table: pa.Table) -> list[dict]:
    """Replace entries for one merged file: a sink file's partition and offset range, or what a
    compacted file itself replaced (kept so later repairs still find those rows) plus its own name."""
    name = posixpath.basename(path)
    if _is_compacted(path):
        return replaced_by(fs, path) + [{"file": name}]
    partition = store.partition_of(path)
    if partition is None or table.num_rows == 0:
        return [{"file": name}]
    offsets = table["kafka_offset"]
    return [
        {
            "file": name,
            "partition": partition,
            "min_offset": pc.min(offsets).as_py(),
            "max_offset": pc.max(offsets).as_py(),
        }
    ]


def _read_file(fs: AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as handle:
        table = pq.read_table(io.BytesIO(handle.read()))
    if "channels" not in table.column_names:  # written before readings carried channels (issue 15)
        table = table.append_column("channels", pa.nulls(table.num_rows, READING_ARROW_SCHEMA.field("channels").type))
    return table.select(READING_ARROW_SCHEMA.names).cast(READING_ARROW_SCHEMA)


def _parquet_bytes(table: pa.Table, replaces: list[dict]) -> bytes:
    table = table.replace_schema_metadata({REPLACES_KEY: json.dumps(replaces).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=1_000_000)
    return sink.getvalue().to_pybytes()


def _is_compacted(path: str) -> bool:
    return posixpath.basename(path).startswith(COMPACTED_PREFIX)
