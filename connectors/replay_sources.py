"""Recorded inputs for `plantpulse replay`: what was read, in which order, and its fault labels.

- **Simulator recording** (`run.parquet` with `run.labels.parquet` and `run.machines.csv` beside it): the
  messages exactly as they were sent (`raw`), in send order, cut into Kafka-like polls read lazily from
  the file; they are decoded and validated by the replay like on Kafka. Labels: the labels file.
- **Parquet lake** (`file:///…` or `s3://…`, a `LAKE_URL`, or a local lake directory, i.e. one holding
  `dt=…` directories): decoded readings, read lazily hour by hour, each hour sorted by event time.
- **CSV or Parquet files**, one or several, or directories of them (every `*.csv` and `*.parquet` below,
  sorted, recursively): columns as in `connectors.replay_tables` (any numeric column that is no known
  column is a sensor channel; SKAB's and NAB's files replay as they are). A file without a `machine_id`
  column is one machine named after the file: its stem for a file given directly, `<directory>/<path
  below it without suffix>` for a file of a directory, made a valid machine id (`/` and other characters
  the id pattern does not allow become `_`: `valve2/0.csv` in `valve2/` is machine `valve2_0`). Two files
  naming one machine that way are an error. The readings of all files are merged in event-time order.
  Labels: a label column, or NAB windows beside the file; `points` holds every labelled reading for the
  point-wise scorers (`models.benchmark_scores`).

A recording or a lake is replayed alone. Decoded inputs are cut into tables of `chunk_rows` readings.
"""

from __future__ import annotations

import csv
import itertools
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from connectors.lake_read import QUARANTINE_DIR, lake_files
from connectors.lake_store import open_lake
from connectors.replay_tables import labels_and_points, machine_id_from, read_table_file
from plantpulse.schema import READING_ARROW_SCHEMA, BinaryValues, RawBatch

LABELS_COLUMNS = ("machine_id", "fault", "start_ts", "end_ts")
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass
class ReplayInput:
    """A recorded input: its items (raw polls or reading tables), labels, machine types and size."""

    kind: str  # "recording" | "lake" | "table"
    raw: bool
    items: Iterable[RawBatch] | Iterable[pa.Table]  # re-iterable: a grid replays it once per point
    readings: int
    labels: pa.Table | None  # events (LABELS_COLUMNS); for NAB windows: one per window
    machine_types: dict[str, str]
    # Every labelled reading (machine_id, ts epoch ms, label), in time order per machine: the point-wise
    # scorers' truth (SKAB protocol) and the readings NAB's scorer numbers. None without labelled tables.
    points: pa.Table | None = None


def open_input(
    source: str | Sequence[str], *, chunk_rows: int = 50_000, poll_size: int = 50_000,
    s3_endpoint_url: str | None = None,
    s3_ca_bundle: Path | None = None,
) -> ReplayInput:
    """Recognise `source` (lake URL, recording, CSV/Parquet file or directory of them; or several files and
    directories) and open it (`s3_endpoint_url`: an S3-compatible endpoint such as MinIO for an `s3://` lake;
    `s3_ca_bundle`: its private CA; credentials come from the environment)."""
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise ValueError("replay: no input given")
    files: list[tuple[Path, str]] = []  # (file, its machine id when it has no machine_id column)
    for given in sources:
        single = len(sources) == 1
        if given.startswith(("file://", "s3://")):
            if not single:
                raise ValueError(f"replay: the lake {given!r} is replayed alone, not with other inputs")
            return _lake(given, chunk_rows, s3_endpoint_url, s3_ca_bundle)
        path = Path(given)
        if not path.exists():
            raise ValueError(f"replay: input {given!r} does not exist (a file, or a file:// / s3:// lake URL)")
        if path.is_dir():
            tables = _table_files(path)
            if not tables:
                if not single:
                    raise ValueError(f"replay: {given!r} holds no .csv/.parquet files (a lake is replayed alone)")
                return _lake(f"file://{path.resolve()}", chunk_rows, None)
            files += [(f, machine_id_from(f"{path.resolve().name}/{f.relative_to(path).with_suffix('').as_posix()}"))
                      for f in tables]
        elif path.suffix == ".parquet" and "raw" in pq.read_schema(path).names:
            if not single:
                raise ValueError(f"replay: the recording {given!r} is replayed alone, not with other inputs")
            return _recording(path, poll_size)
        elif path.suffix in TABLE_SUFFIXES:
            files.append((path, machine_id_from(path.stem)))
        else:
            raise ValueError(f"replay: {given!r} is neither .csv nor .parquet nor a lake")
    return _tables(files, chunk_rows)


def _table_files(directory: Path) -> list[Path]:
    """The CSV/Parquet files below `directory`, sorted; none when it is a lake (has `dt=…` directories)."""
    if any(child.is_dir() and child.name.startswith("dt=") for child in directory.iterdir()):
        return []
    found = [p for p in directory.rglob("*") if p.is_file() and p.suffix in TABLE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(directory).parts)]
    for path in found:
        if path.suffix == ".parquet" and "raw" in pq.read_schema(path).names:
            raise ValueError(f"replay: {path} is a simulator recording: replay it alone, not in a directory")
    return sorted(found)


def _tables(files: list[tuple[Path, str]], chunk_rows: int) -> ReplayInput:
    """The files' readings merged in event-time order, their labels and labelled points."""
    seen: dict[str, Path] = {}
    parts, faults, labelled, window_ids, types = [], [], [], [], {}
    for path, machine in files:
        table = read_table_file(path, machine)
        if table.default_machine is not None:
            if table.default_machine in seen:
                raise ValueError(f"replay: {seen[machine]} and {path} both are machine {machine!r} (named after "
                                 "the file); rename one or give them machine_id columns")
            seen[table.default_machine] = path
        parts.append(pa.table(table.columns))
        faults.append(np.array(table.faults if table.faults is not None else [None] * table.rows, dtype=object))
        labelled.append(np.full(table.rows, table.faults is not None))
        window_ids.append(table.window_ids if table.window_ids is not None else np.full(table.rows, -1, np.int64))
        types.update(table.machine_types)
    combined = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    n = combined.num_rows
    machine_ids = np.asarray(combined["machine_id"].to_numpy(zero_copy_only=False), dtype=object)
    ts = np.asarray(combined["ts"].to_numpy(), dtype=np.int64)
    by_time = np.lexsort((np.arange(n), ts))  # the replay's order: event time, then file order
    _, codes = np.unique(machine_ids, return_inverse=True)
    by_machine = np.lexsort((np.arange(n), ts, codes))  # per machine in time order
    seq = np.asarray(pc.fill_null(combined["seq"], -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    sorted_codes = codes[by_machine]
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if n else np.zeros(0, np.int64)
    number = np.empty(n, dtype=np.int64)
    number[by_machine] = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    seq = np.where(combined["seq"].is_null().to_numpy(zero_copy_only=False), number, seq)
    combined = combined.set_column(combined.schema.get_field_index("seq"), "seq", pa.array(seq, pa.int64()))
    combined = combined.append_column("kafka_partition", pa.array(np.full(n, -1, np.int32)))
    combined = combined.append_column("kafka_offset", pa.array(np.arange(n, dtype=np.int64)))  # input row
    readings = combined.select(READING_ARROW_SCHEMA.names).cast(READING_ARROW_SCHEMA).take(pa.array(by_time))
    labels = points = None
    all_labelled = np.concatenate(labelled) if labelled else np.zeros(0, bool)
    if all_labelled.any():
        labels, points = labels_and_points(machine_ids[by_machine], ts[by_machine],
                                           np.concatenate(faults)[by_machine], all_labelled[by_machine],
                                           np.concatenate(window_ids)[by_machine])
    return ReplayInput("table", False, _chunks(readings, chunk_rows), n, labels, types, points)


class RecordingPolls:
    """A recording's messages as Kafka-like polls of `poll_size`, read lazily from the file on each pass
    (so a long recording is never all in memory, and a grid replays it once per point)."""

    def __init__(self, path: Path, poll_size: int) -> None:
        self.path = path
        self.poll_size = poll_size

    def __iter__(self) -> Iterator[RawBatch]:
        batches = pq.ParquetFile(self.path).iter_batches(batch_size=self.poll_size, columns=["key", "raw"])
        offset = 0
        # Read ahead: the next poll is read and decompressed (pyarrow releases the GIL) while the flow works
        # on this one. Leaving the loop early waits for the one read in flight.
        with ThreadPoolExecutor(1, thread_name_prefix="recording-read-ahead") as reader:
            pending = reader.submit(next, batches, None)
            while (batch := pending.result()) is not None:
                pending = reader.submit(next, batches, None)
                values, keys = BinaryValues(batch.column(1)), BinaryValues(batch.column(0))  # no object per message
                yield RawBatch("replay", -1, list(range(offset, offset + len(values))), values, keys)
                offset += len(values)


def _recording(path: Path, poll_size: int) -> ReplayInput:
    readings = pq.ParquetFile(path).metadata.num_rows
    stem = path.name.removesuffix(".parquet")
    labels_path, machines_path = path.with_name(f"{stem}.labels.parquet"), path.with_name(f"{stem}.machines.csv")
    labels = pq.read_table(labels_path).select(list(LABELS_COLUMNS)) if labels_path.exists() else None
    return ReplayInput("recording", True, RecordingPolls(path, poll_size), readings, labels, _machine_types(machines_path))


class LakeHours:
    """A lake's readings as event-time ordered chunks, read lazily one hour directory at a time.

    The lake is partitioned by the readings' event-time hour, so hour after hour, each sorted by
    `(ts, machine_id, seq)`, is the whole lake in event-time order without holding it in memory. The
    files are the ones `connectors.lake_read` reads (a compacted hour's replaced files are skipped).
    """

    def __init__(
        self, url: str, chunk_rows: int, endpoint_url: str | None = None, ca_bundle: Path | None = None
    ) -> None:
        self.fs, root = open_lake(url, endpoint_url=endpoint_url, ca_bundle=ca_bundle)
        files = lake_files(self.fs, root, skip=(QUARANTINE_DIR,))
        self.hours = [list(group) for _, group in itertools.groupby(files, key=posixpath.dirname)]
        self.readings = sum(pq.read_metadata(f, filesystem=self.fs).num_rows for f in files)
        self.chunk_rows = chunk_rows

    def __iter__(self) -> Iterator[pa.Table]:
        for files in self.hours:
            hour = ds.dataset(files, filesystem=self.fs, format="parquet", schema=READING_ARROW_SCHEMA).to_table()
            hour = hour.sort_by([("ts", "ascending"), ("machine_id", "ascending"), ("seq", "ascending")])
            yield from _chunks(hour, self.chunk_rows)


def _lake(url: str, chunk_rows: int, endpoint_url: str | None, ca_bundle: Path | None = None) -> ReplayInput:
    try:
        hours = LakeHours(url, chunk_rows, endpoint_url, ca_bundle)
    except OSError as error:  # unreachable store, no permission, ...: one line for the CLI
        raise ValueError(f"replay: cannot read the lake at {url!r}: {error}") from error
    if hours.readings == 0:
        raise ValueError(f"replay: the lake at {url!r} holds no readings (expected dt=YYYY-MM-DD/hour=HH/*.parquet)")
    return ReplayInput("lake", False, hours, hours.readings, None, {})


def _chunks(table: pa.Table, rows: int) -> list[pa.Table]:
    """Slices in the decoder's form (what the window step takes): `ts` as int64 epoch milliseconds."""
    ts = table.schema.get_field_index("ts")
    table = table.set_column(ts, "ts", table["ts"].cast(pa.int64()))
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def _machine_types(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        return {row["machine_id"]: row["machine_type"] for row in csv.DictReader(handle)}
