"""Recorded inputs for `plantpulse replay`: what was read, in which order, and its fault labels.

- **Simulator recording** (`run.parquet` with `run.labels.parquet` and `run.machines.csv` beside it): the
  messages exactly as they were sent (`raw`), in send order, cut into Kafka-like polls read lazily from
  the file; they are decoded and validated by the replay like on Kafka. Labels: the labels file.
- **Parquet lake** (`file:///…` or `s3://…`, a `LAKE_URL`, or a local lake directory): decoded readings,
  read lazily hour by hour, each hour sorted by event time.
- **CSV or Parquet file** with columns `machine_id, ts, <sensors…>[, status][, seq][, machine_type][, label]`:
  `ts` in epoch milliseconds or ISO 8601 (UTC if no zone); sensors are any of temperature, pressure,
  vibration, rpm, power (missing columns are null); `status` defaults to `running`; `seq` to the reading's
  number within its machine in time order; `label` empty or `normal` means healthy, anything else names a fault, and
  each run of consecutive equal labels of a machine is one fault event.

Decoded inputs are sorted by event time and cut into tables of `chunk_rows` readings.
"""

from __future__ import annotations

import csv
import itertools
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from connectors.lake_read import QUARANTINE_DIR, lake_files
from connectors.lake_store import open_lake
from plantpulse.schema import READING_ARROW_SCHEMA, SENSORS, RawBatch

LABELS_COLUMNS = ("machine_id", "fault", "start_ts", "end_ts")
HEALTHY_LABELS = ("", "normal")


@dataclass
class ReplayInput:
    """A recorded input: its items (raw polls or reading tables), labels, machine types and size."""

    kind: str  # "recording" | "lake" | "table"
    raw: bool
    items: Iterable[RawBatch] | Iterable[pa.Table]  # re-iterable: a grid replays it once per point
    readings: int
    labels: pa.Table | None
    machine_types: dict[str, str]


def open_input(
    source: str, *, chunk_rows: int = 50_000, poll_size: int = 10_000, s3_endpoint_url: str | None = None
) -> ReplayInput:
    """Recognise `source` (lake URL, recording, CSV/Parquet file) and open it (`s3_endpoint_url`: an
    S3-compatible endpoint such as MinIO for an `s3://` lake; credentials come from the environment)."""
    if source.startswith(("file://", "s3://")):
        return _lake(source, chunk_rows, s3_endpoint_url)
    path = Path(source)
    if not path.exists():
        raise ValueError(f"replay: input {source!r} does not exist (a file, or a file:// / s3:// lake URL)")
    if path.is_dir():
        return _lake(f"file://{path.resolve()}", chunk_rows, None)
    if path.suffix == ".parquet" and "raw" in pq.read_schema(path).names:
        return _recording(path, poll_size)
    if path.suffix in (".parquet", ".csv"):
        return _table_file(path, chunk_rows)
    raise ValueError(f"replay: {source!r} is neither .csv nor .parquet nor a lake")


class RecordingPolls:
    """A recording's messages as Kafka-like polls of `poll_size`, read lazily from the file on each pass
    (so a long recording is never all in memory, and a grid replays it once per point)."""

    def __init__(self, path: Path, poll_size: int) -> None:
        self.path = path
        self.poll_size = poll_size

    def __iter__(self) -> Iterator[RawBatch]:
        offset = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.poll_size, columns=["key", "raw"]):
            values = batch.column(1).to_pylist()
            yield RawBatch("replay", -1, list(range(offset, offset + len(values))), values, batch.column(0).to_pylist())
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

    def __init__(self, url: str, chunk_rows: int, endpoint_url: str | None = None) -> None:
        self.fs, root = open_lake(url, endpoint_url=endpoint_url)
        files = lake_files(self.fs, root, skip=(QUARANTINE_DIR,))
        self.hours = [list(group) for _, group in itertools.groupby(files, key=posixpath.dirname)]
        self.readings = sum(pq.read_metadata(f, filesystem=self.fs).num_rows for f in files)
        self.chunk_rows = chunk_rows

    def __iter__(self) -> Iterator[pa.Table]:
        for files in self.hours:
            hour = ds.dataset(files, filesystem=self.fs, format="parquet", schema=READING_ARROW_SCHEMA).to_table()
            hour = hour.sort_by([("ts", "ascending"), ("machine_id", "ascending"), ("seq", "ascending")])
            yield from _chunks(hour, self.chunk_rows)


def _lake(url: str, chunk_rows: int, endpoint_url: str | None) -> ReplayInput:
    try:
        hours = LakeHours(url, chunk_rows, endpoint_url)
    except OSError as error:  # unreachable store, no permission, ...: one line for the CLI
        raise ValueError(f"replay: cannot read the lake at {url!r}: {error}") from error
    if hours.readings == 0:
        raise ValueError(f"replay: the lake at {url!r} holds no readings (expected dt=YYYY-MM-DD/hour=HH/*.parquet)")
    return ReplayInput("lake", False, hours, hours.readings, None, {})


def _table_file(path: Path, chunk_rows: int) -> ReplayInput:
    table = pacsv.read_csv(path) if path.suffix == ".csv" else pq.read_table(path)
    missing = {"machine_id", "ts"} - set(table.column_names)
    if missing:
        raise ValueError(f"replay: {path} lacks column(s) {sorted(missing)}; see `plantpulse replay --help`")
    n = table.num_rows
    machine_ids = table["machine_id"].cast(pa.string())
    ts = _epoch_ms(table["ts"], path)
    order = np.lexsort((np.arange(n), ts))
    columns = {
        "machine_id": machine_ids,
        "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "seq": table["seq"].cast(pa.int64()) if "seq" in table.column_names else _row_number_per_machine(machine_ids, order),
        **{s: (table[s].cast(pa.float64()) if s in table.column_names else pa.nulls(n, pa.float64())) for s in SENSORS},
        "status": table["status"].cast(pa.string()) if "status" in table.column_names else pa.array(["running"] * n),
        "kafka_partition": pa.array(np.full(n, -1, np.int32)),
        "kafka_offset": pa.array(np.arange(n, dtype=np.int64)),
    }
    readings = pa.table(columns, schema=READING_ARROW_SCHEMA).take(pa.array(order))
    labels = _labels_from_column(table, ts) if "label" in table.column_names else None
    types = {}
    if "machine_type" in table.column_names:
        types = dict(zip(machine_ids.to_pylist(), table["machine_type"].cast(pa.string()).to_pylist()))
    return ReplayInput("table", False, _chunks(readings, chunk_rows), n, labels, types)


def _labels_from_column(table: pa.Table, ts: np.ndarray) -> pa.Table:
    """Events: each run of consecutive equal non-healthy labels of a machine (in time order)."""
    machines = table["machine_id"].cast(pa.string()).to_pylist()
    labels = ["" if v is None else str(v).strip() for v in table["label"].to_pylist()]
    rows: list[dict] = []
    for machine in sorted(set(machines)):
        idx = [i for i, m in enumerate(machines) if m == machine]
        idx.sort(key=lambda i: ts[i])
        current = None
        for i in idx:
            label = labels[i]
            healthy = label.lower() in HEALTHY_LABELS
            if current and (healthy or label != current["fault"]):
                rows.append(current)
                current = None
            if not healthy:
                if current is None:
                    current = {"machine_id": machine, "fault": label, "start_ts": int(ts[i]), "end_ts": int(ts[i])}
                current["end_ts"] = int(ts[i])
        if current:
            rows.append(current)
    schema = pa.schema(
        [("machine_id", pa.string()), ("fault", pa.string()), ("start_ts", pa.int64()), ("end_ts", pa.int64())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _epoch_ms(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64)
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")
        return np.asarray(column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64()).to_numpy(), dtype=np.int64)
    try:
        parsed = pc.cast(column.cast(pa.string()), pa.timestamp("ms"))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"replay: {path} column ts is neither epoch ms nor ISO 8601: {exc}") from exc
    return np.asarray(parsed.cast(pa.int64()).to_numpy(), dtype=np.int64)


def _row_number_per_machine(machine_ids: pa.ChunkedArray, order: np.ndarray) -> pa.Array:
    """Each row's number within its machine, counted in time order (`order`: the rows sorted by time)."""
    ids = machine_ids.to_pylist()
    counters: dict[str, int] = {}
    numbers = np.zeros(len(ids), dtype=np.int64)
    for i in order.tolist():
        numbers[i] = counters.get(ids[i], 0)
        counters[ids[i]] = numbers[i] + 1
    return pa.array(numbers, pa.int64())


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
