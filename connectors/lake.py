"""The Bytewax sink that keeps every valid reading as Parquet (zstd) in the raw telemetry lake.

Items are `(f"lake-{kafka_partition}", decoded_readings_table)`; the sink stores `READING_ARROW_SCHEMA`
(the decoder's `raw` column is dropped, `ts` becomes timestamp[ms, UTC]) under `LAKE_URL` in Hive-style
`dt=YYYY-MM-DD/hour=HH/` directories by event time (see `connectors.lake_store` for the layout).

Exactly once under recovery replay: a partition only buffers in `write_batch`; files are written only in
`snapshot()` (and `close()`), named `part-{partition:03d}-{seq:010d}.parquet` where `seq` is part of the
state that `snapshot()` returns. What a sequence holds is decided at that snapshot and recorded in the same
state, so a replay after a crash rebuilds exactly the sequences that the recovery store did not commit:

- before writing sequence N, everything a previous attempt at N wrote (in any dt/hour; its manifest says
  where) is deleted; the manifest is written first, so a crash at any point leaves nothing unlisted;
- on resume from state s, sequences >= s.seq (written after the committed snapshot, so their rows will be
  replayed or are carried in s) are deleted before anything else happens.

File sizes: an hour's rows are carried from snapshot to snapshot - inside the snapshotted state, as
compressed Arrow IPC - until they reach `LAKE_FILE_MAX_ROWS` or `LAKE_FILE_MAX_BYTES`, or the oldest waited
`LAKE_FILE_MAX_AGE_SECONDS`; only then are they written, as one file. Carried rows cost recovery-store
space (each snapshot stores them again), which is why the defaults stay moderate; `plantpulse lake compact`
merges an hour's files into one afterwards.

Memory: a partition holds at most one snapshot interval of new rows plus its carried hours (bounded by the
thresholds). `max_buffer_rows` only makes a large interval visible (a warning); rows are never dropped. An
unreachable store is retried with backoff forever inside `snapshot()`/`close()`, which holds the whole flow
back - Kafka is no longer polled - until it is reachable again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from fsspec import AbstractFileSystem
from prometheus_client import Counter

from connectors import lake_store as store
from connectors.lake_compact import drop_compacted_rows
from connectors.lake_read import QUARANTINE_DIR, read_lake, read_quarantine
from connectors.retry import Backoff
from plantpulse.schema import QUARANTINE_ARROW_SCHEMA, READING_ARROW_SCHEMA
from plantpulse.settings import Settings

__all__ = ["QUARANTINE_DIR", "FileThresholds", "LakeSink", "LakeSinkPartition", "LakeState", "read_lake", "read_quarantine"]

logger = logging.getLogger("plantpulse.lake")

ROWS_WRITTEN = Counter("plantpulse_lake_rows_written", "Readings written to the raw lake.")
FILES_WRITTEN = Counter("plantpulse_lake_files_written", "Parquet files written to the raw lake.")
WRITE_RETRIES = Counter("plantpulse_lake_write_retries", "Failed lake writes that will be retried.")

PART_PREFIX = "lake-"
# Manifests older than this many sequences are deleted as new ones are written: the recovery store never
# lags that far behind, and the newest one must survive for a fresh start to find the next sequence.
MANIFESTS_KEPT = 1024
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True)
class FileThresholds:
    """When an hour's buffered rows become a file (checked at each snapshot; any one suffices)."""

    max_rows: int = 250_000
    max_bytes: int = 64 * 2**20
    max_age_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FileThresholds:
        return cls(settings.lake_file_max_rows, settings.lake_file_max_bytes, settings.lake_file_max_age_seconds)


@dataclass
class CarriedHour:
    """Rows of one event hour kept across snapshots: Arrow IPC streams (lz4), each serialized once."""

    chunks: list[bytes] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0  # uncompressed Arrow size, compared with max_bytes
    since_s: float = 0.0  # wall-clock time its oldest row was buffered


@dataclass
class LakeState:
    """A lake partition's snapshot: the next sequence to write and the rows carried to a later file."""

    seq: int
    carried: dict[int, CarriedHour] = field(default_factory=dict)  # event hour (ms // 3_600_000) -> rows


class LakeSink(FixedPartitionedSink[pa.Table, LakeState]):
    """`partitions` writer partitions named `lake-<p>`, one per Kafka partition of the telemetry topic.

    `fs` replaces the filesystem derived from `settings.lake_url`; `endpoint_url`, `key`, `secret`, `sse`
    and `s3_options` configure S3 until Settings carries them. `backoff_factory` exists for tests and tuning.
    """

    def __init__(
        self,
        settings: Settings,
        fs: AbstractFileSystem | None = None,
        *,
        partitions: int = 1,
        max_buffer_rows: int = 2_000_000,
        endpoint_url: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        sse: str | None = None,
        s3_options: dict[str, Any] | None = None,
        backoff_factory: Callable[[], Backoff] = Backoff,
        schema: pa.Schema = READING_ARROW_SCHEMA,
        time_column: str = "ts",
        subdir: str | None = None,
        thresholds: FileThresholds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`schema`, `time_column` and `subdir` select what is stored where: readings at the lake's root by
        event time, or dead letters under `quarantine/` by the time they were rejected.

        With recovery on (`settings.recovery_dir`), each partition records in the recovery store the
        sequence it started from, so a crash before the store's first commit is rewritten, not repeated."""
        if partitions < 1 or max_buffer_rows < 1:
            raise ValueError(
                f"LakeSink: need partitions >= 1 and max_buffer_rows >= 1, got {partitions!r}, {max_buffer_rows!r}"
            )
        self.lake_url = settings.lake_url
        self.fs, self.root = store.open_lake(
            settings.lake_url, fs, endpoint_url=endpoint_url, key=key, secret=secret, sse=sse, s3_options=s3_options
        )
        if subdir:
            self.root = f"{self.root.rstrip('/')}/{subdir}"
        self.schema, self.time_column, self.subdir = schema, time_column, subdir
        self.partitions = partitions
        self.max_buffer_rows = max_buffer_rows
        self.backoff_factory = backoff_factory
        self.thresholds = thresholds or FileThresholds.from_settings(settings)
        self.clock = clock
        self.recovery_dir = Path(settings.recovery_dir) if settings.recovery_dir is not None else None
        # Partitions built in this process, by name, so operators and tests can read their counters.
        self.built: dict[str, LakeSinkPartition] = {}

    def list_parts(self) -> list[str]:
        return [f"{PART_PREFIX}{p}" for p in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return _partition_number(item_key) % self.partitions

    def build_part(self, step_id: str, for_part: str, resume_state: LakeState | None) -> LakeSinkPartition:
        number = _partition_number(for_part)
        part = LakeSinkPartition(
            self.fs,
            self.root,
            number,
            resume_state,
            max_buffer_rows=self.max_buffer_rows,
            name=f"{step_id}/{for_part}",
            backoff=self.backoff_factory(),
            first_seq_file=(
                self.recovery_dir / f"{self.subdir or 'lake'}-first-seq-{number}" if self.recovery_dir else None
            ),
            schema=self.schema,
            time_column=self.time_column,
            thresholds=self.thresholds,
            clock=self.clock,
        )
        self.built[for_part] = part
        return part


class LakeSinkPartition(StatefulSinkPartition[pa.Table, LakeState]):
    """Buffers readings per event hour; at a snapshot, writes the hours that reached a threshold as
    sequence `seq` and carries the others (in the returned `LakeState`) to a later snapshot."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        partition: int,
        resume_state: LakeState | int | None,
        *,
        max_buffer_rows: int = 2_000_000,
        name: str = "lake",
        backoff: Backoff | None = None,
        first_seq_file: Path | None = None,
        schema: pa.Schema = READING_ARROW_SCHEMA,
        time_column: str = "ts",
        thresholds: FileThresholds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schema, self.time_column = schema, time_column
        self.thresholds = thresholds or FileThresholds()
        self.clock = clock
        if isinstance(resume_state, int) and not isinstance(resume_state, bool):
            resume_state = LakeState(resume_state)  # the state of releases without carried rows
        if resume_state is not None and (not isinstance(resume_state, LakeState) or resume_state.seq < 0):
            raise ValueError(f"{name}: resume state must be a LakeState with seq >= 0, got {resume_state!r}")
        self.fs = fs
        self.root = root
        self.partition = partition
        self.max_buffer_rows = max_buffer_rows
        self.name = name
        self.resumed_from = resume_state
        self._backoff = backoff or Backoff()
        self._buffer: dict[int, list[pa.Table]] = {}  # event hour (ms // 3_600_000) -> tables
        self._buffer_since: dict[int, float] = {}
        self._carried: dict[int, CarriedHour] = dict(resume_state.carried) if resume_state is not None else {}
        self.buffered_rows = 0
        self._over_limit_warned = False
        # Counters for tests and operators (the Prometheus metrics aggregate all partitions).
        self.rows_written = 0
        self.files_written = 0
        self.retries = 0
        if resume_state is None and first_seq_file is not None and first_seq_file.exists():
            # The recovery store has no commit yet, but this store started before at a known sequence:
            # what was written from there on is uncommitted and will be replayed.
            resume_state = LakeState(int(first_seq_file.read_text()))
        if resume_state is None:
            # No committed snapshot: never destroy what is there (a lake kept across runs without recovery,
            # or written under an earlier recovery store); continue after it.
            last = self._retrying("find the last sequence", lambda: store.highest_seq(fs, root, partition))
            self.seq = 0 if last is None else last + 1
            if first_seq_file is not None:
                first_seq_file.parent.mkdir(parents=True, exist_ok=True)
                temporary = first_seq_file.with_suffix(".tmp")
                temporary.write_text(str(self.seq))
                temporary.replace(first_seq_file)
        else:
            self.seq = resume_state.seq
            self._retrying("drop uncommitted sequences", self._drop_uncommitted)

    # --- called by the Bytewax worker ---

    def write_batch(self, values: list[pa.Table]) -> None:
        for table in values:
            rows = self._conform(table)
            if rows.num_rows == 0:
                continue
            hours = rows[self.time_column].cast(pa.int64()).to_numpy() // store.MS_PER_HOUR
            for hour in np.unique(hours).tolist():
                self._buffer.setdefault(hour, []).append(rows.filter(pa.array(hours == hour)))
                self._buffer_since.setdefault(hour, self.clock())
            self.buffered_rows += rows.num_rows
        if self.buffered_rows > self.max_buffer_rows and not self._over_limit_warned:
            # Writing now would give these rows a sequence that a replay cannot reproduce, so keep them.
            self._over_limit_warned = True
            logger.warning(
                "%s: %d rows buffered, above max_buffer_rows=%d; keeping them until the next snapshot "
                "(lower SNAPSHOT_INTERVAL_SECONDS to bound memory)",
                self.name, self.buffered_rows, self.max_buffer_rows,
            )

    def snapshot(self) -> LakeState:
        now = self.clock()
        due = [hour for hour in sorted(set(self._buffer) | set(self._carried)) if self._is_due(hour, now)]
        self._flush(due)
        self._carry(now)
        return LakeState(self.seq, dict(self._carried))

    def close(self) -> None:
        # Rows after the last snapshot: if no snapshot follows, a rerun resumes before them and rewrites
        # this same sequence, so writing them is safe and keeps a clean shutdown from losing them.
        self._flush(sorted(set(self._buffer) | set(self._carried)))

    @property
    def carried_rows(self) -> int:
        return sum(c.rows for c in self._carried.values())

    # --- internals ---

    def _conform(self, table: Any) -> pa.Table:
        if not isinstance(table, pa.Table):
            raise TypeError(f"{self.name}: expected a pyarrow.Table of decoded readings, got {type(table).__name__}")
        try:
            return table.select(self.schema.names).cast(self.schema)
        except (KeyError, pa.ArrowException) as exc:
            raise ValueError(f"{self.name}: table does not fit the lake schema ({_schema_name(self.schema)}): {exc}") from exc

    def _is_due(self, hour: int, now: float) -> bool:
        carried = self._carried.get(hour, CarriedHour(since_s=now))
        new = self._buffer.get(hour, [])
        rows = carried.rows + sum(t.num_rows for t in new)
        nbytes = carried.nbytes + sum(t.nbytes for t in new)
        # Carried rows are older than anything buffered since the last snapshot.
        since = carried.since_s if carried.rows else self._buffer_since.get(hour, now)
        limits = self.thresholds
        return rows >= limits.max_rows or nbytes >= limits.max_bytes or now - since >= limits.max_age_s

    def _flush(self, hours: list[int]) -> None:
        """Write `hours` (carried and new rows) as sequence `self.seq`, retrying forever; advance the sequence."""
        if not hours:
            return
        # Serialized once, outside the retry loop: only the store is retried, never the data.
        files: dict[str, bytes] = {}
        rows = 0
        for hour in hours:
            carried = self._carried.get(hour)
            tables = [_from_ipc(chunk) for chunk in carried.chunks] if carried else []
            data = pa.concat_tables(tables + self._buffer.get(hour, []))
            rows += data.num_rows
            sink = pa.BufferOutputStream()
            pq.write_table(data, sink, compression="zstd")
            path = store.hour_dir(self.root, hour) + "/" + store.file_name(self.partition, self.seq)
            files[path] = sink.getvalue().to_pybytes()
        self._retrying(f"write sequence {self.seq} ({rows} rows)", lambda: self._write_seq(self.seq, files))
        self.rows_written += rows
        self.files_written += len(files)
        ROWS_WRITTEN.inc(rows)
        FILES_WRITTEN.inc(len(files))
        for hour in hours:
            self._carried.pop(hour, None)
            self._buffer_since.pop(hour, None)
            self.buffered_rows -= sum(t.num_rows for t in self._buffer.pop(hour, []))
        self.seq += 1

    def _carry(self, now: float) -> None:
        """Move the rows still buffered into the carried state (one IPC chunk per hour and snapshot)."""
        for hour, tables in self._buffer.items():
            data = pa.concat_tables(tables)
            carried = self._carried.get(hour)
            if carried is None:
                carried = CarriedHour(since_s=self._buffer_since.get(hour, now))
            else:
                # A new object: an earlier snapshot's state may still be referenced and must not change.
                carried = CarriedHour(list(carried.chunks), carried.rows, carried.nbytes, carried.since_s)
            carried.chunks.append(_to_ipc(data))
            carried.rows += data.num_rows
            carried.nbytes += data.nbytes
            self._carried[hour] = carried
        self._buffer.clear()
        self._buffer_since.clear()
        self.buffered_rows = 0
        self._over_limit_warned = False

    def _write_seq(self, seq: int, files: dict[str, bytes]) -> None:
        """Replace whatever sequence `seq` of this partition holds by `files`. Idempotent, so retried whole."""
        previous = store.read_manifest(self.fs, self.root, self.partition, seq) or []
        # The manifest names old and new files before anything changes, so a crash anywhere below leaves
        # every file of this sequence listed for the next attempt to delete.
        store.write_manifest(self.fs, self.root, self.partition, seq, sorted(set(previous) | set(files)))
        self._remove_files([p for p in previous if p not in files])
        for path, data in files.items():
            store.put_bytes(self.fs, path, data)
        store.write_manifest(self.fs, self.root, self.partition, seq, list(files))
        if seq >= MANIFESTS_KEPT:
            store.remove_manifest(self.fs, self.root, self.partition, seq - MANIFESTS_KEPT)

    def _drop_uncommitted(self) -> None:
        """Delete sequences >= self.seq: written after the committed snapshot, so their rows are replayed."""
        seq = self.seq
        # Sequences are written one after another, so the uncommitted ones are contiguous from self.seq.
        while (files := store.read_manifest(self.fs, self.root, self.partition, seq)) is not None:
            self._remove_files(files)
            seq += 1
        # Manifests last and newest first, so an interrupted cleanup can still be found and finished.
        for stale in range(seq - 1, self.seq - 1, -1):
            store.remove_manifest(self.fs, self.root, self.partition, stale)
        if seq > self.seq:
            logger.info("%s: resumed at sequence %d, deleted uncommitted sequences %d..%d",
                        self.name, self.seq, self.seq, seq - 1)

    def _remove_files(self, paths: list[str]) -> None:
        """Delete files of an uncommitted sequence, and their rows where `lake compact` merged them already."""
        if not paths:
            return
        store.remove_quietly(self.fs, paths)
        if self.schema.equals(READING_ARROW_SCHEMA):  # only the readings are compacted
            removed = drop_compacted_rows(self.fs, paths)
            if removed:
                logger.warning("%s: removed %d replayed rows from compacted files", self.name, removed)

    def _retrying(self, what: str, action: Callable[[], Any]) -> Any:
        """Run `action` until it succeeds: the lake is retried forever, holding the flow back meanwhile."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = action()
                break
            except Exception as exc:  # noqa: BLE001 - any store failure; the data itself is already serialized
                delay = self._backoff.next_delay()
                self.retries += 1
                WRITE_RETRIES.inc()
                logger.warning(
                    "%s: %s to %s failed (attempt %d), retrying in %.2fs: %s",
                    self.name, what, self.root, attempt, delay, _one_line(exc),
                )
                time.sleep(delay)
        if attempt > 1:
            logger.info("%s: %s succeeded after %d attempts", self.name, what, attempt)
        self._backoff.reset()
        return result


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(chunk: bytes) -> pa.Table:
    return pa.ipc.open_stream(chunk).read_all()


def _partition_number(key: str) -> int:
    number = key.removeprefix(PART_PREFIX)
    if not key.startswith(PART_PREFIX) or not number.isdigit():
        raise ValueError(f"lake: item key / partition {key!r} is not '{PART_PREFIX}<kafka partition>'")
    return int(number)


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one log-friendly line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_name(schema: pa.Schema) -> str:
    return "QUARANTINE_ARROW_SCHEMA" if schema.equals(QUARANTINE_ARROW_SCHEMA) else "READING_ARROW_SCHEMA"
