"""The Bytewax sink that keeps every valid reading as Parquet (zstd) in the raw telemetry lake.

Items are `(f"lake-{kafka_partition}", decoded_readings_table)`; the sink stores `READING_ARROW_SCHEMA`
(the decoder's `raw` column is dropped, `ts` becomes timestamp[ms, UTC]) under `LAKE_URL` in Hive-style
`dt=YYYY-MM-DD/hour=HH/` directories by event time (see `connectors.lake_store` for the layout).

Visibility: a partition buffers rows in `write_batch` and writes them at the end of the same epoch, in
`snapshot()`, which Bytewax calls for every partition that received items in the epoch (with or without
recovery). So a reading is in the lake at most one `SNAPSHOT_INTERVAL_SECONDS` (plus the write) after the
flow read it, whether or not more data follows; `close()` (a clean stop on SIGINT/SIGTERM, or the end of a
bounded input) writes what arrived since the last snapshot.

Exactly once under recovery replay: files are named `part-{partition:03d}-{seq:010d}.parquet` where `seq`
is part of the state that `snapshot()` returns, so a replay after a crash rebuilds exactly the sequences
that the recovery store did not commit:

- before writing sequence N, everything a previous attempt at N wrote (in any dt/hour; its manifest says
  where) is deleted; the manifest is written first, so a crash at any point leaves nothing unlisted;
- on resume from state s, sequences >= s.seq (written after the committed snapshot, so their rows will be
  replayed) are deleted before anything else happens - also out of roll-ups and compactions that merged
  them already (by Kafka partition and offset range, `connectors.lake_compact.drop_compacted_rows`).

File sizes without a cost in the snapshot: the snapshot holds no rows, only the sequence number and a few
counters per hour (rows waiting for a file used to be carried inside the snapshot, which made the recovery
store grow with rate x age). Instead each snapshot writes a small file, and once a partition's small files
of an hour reach `LAKE_FILE_MAX_ROWS` or `LAKE_FILE_MAX_BYTES`, or the oldest is `LAKE_FILE_MAX_AGE_SECONDS`
old, the partition rolls them up into one `compacted-pPPP-<digest>.parquet` (the Delta/Iceberg pattern:
small files first, compaction behind). A failed roll-up is only logged and tried again at a later snapshot:
the small files are complete on their own. `plantpulse lake compact` merges an hour's files into one.

Memory: a partition holds at most one snapshot interval of new rows. `max_buffer_rows` only makes a large
interval visible (a warning); rows are never dropped. An unreachable store is retried with backoff forever
inside `snapshot()`/`close()`, which holds the whole flow back - Kafka is no longer polled - until it is
reachable again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from fsspec import AbstractFileSystem
from prometheus_client import Counter, Histogram

from connectors import lake_store as store
from connectors.lake_compact import drop_compacted_rows, roll_up_partition
from connectors.lake_read import QUARANTINE_DIR, read_lake, read_quarantine
from connectors.lake_state import CarriedHour, FileThresholds, LakeState, PendingHour
from connectors.quarantine import with_original_columns
from connectors.retry import Backoff, one_line, retry_forever
from plantpulse.schema import QUARANTINE_ARROW_SCHEMA, READING_ARROW_SCHEMA
from plantpulse.settings import Settings

__all__ = [
    "QUARANTINE_DIR", "CarriedHour", "FileThresholds", "LakeSink", "LakeSinkPartition", "LakeState", "PendingHour",
    "read_lake", "read_quarantine",
]

logger = logging.getLogger("plantpulse.lake")

ROWS_WRITTEN = Counter("plantpulse_lake_rows_written", "Readings written to the raw lake.")
FILES_WRITTEN = Counter("plantpulse_lake_files_written", "Parquet files written to the raw lake.")
WRITE_RETRIES = Counter("plantpulse_lake_write_retries", "Failed lake writes that will be retried.")
ROLL_UPS = Counter("plantpulse_lake_roll_ups", "Roll-ups of a partition's small lake files into one.")
ROLL_UP_FAILURES = Counter("plantpulse_lake_roll_up_failures", "Failed roll-ups (the small files stay; retried later).")
SNAPSHOT_SECONDS = Histogram(
    "plantpulse_lake_snapshot_seconds", "Time a lake partition's snapshot took (writing its files, roll-ups).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

PART_PREFIX = "lake-"
# Manifests older than this many sequences are deleted as new ones are written: the recovery store never
# lags that far behind, and the newest one must survive for a fresh start to find the next sequence.
MANIFESTS_KEPT = 1024


class LakeSink(FixedPartitionedSink[pa.Table, LakeState]):
    """`partitions` writer partitions named `lake-<p>`, one per Kafka partition of the telemetry topic.

    `fs` replaces the filesystem derived from `settings.lake_url`; `endpoint_url`, `key`, `secret`, `sse`,
    `ca_bundle` and `s3_options` configure S3 (the flow passes `lake_store.s3_settings(settings)`).
    `backoff_factory` exists for tests and tuning.
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
        ca_bundle: Path | None = None,
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
            settings.lake_url, fs, endpoint_url=endpoint_url, key=key, secret=secret, sse=sse, ca_bundle=ca_bundle,
            s3_options=s3_options,
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
    """Buffers readings per event hour; at each snapshot writes them as sequence `seq` (a small file per
    hour) and rolls up an hour's small files once they reached a threshold."""

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
        self._backoff.label = "lake"
        self._buffer: dict[int, list[pa.Table]] = {}  # event hour (ms // 3_600_000) -> tables
        self._pending: dict[int, PendingHour] = dict(getattr(resume_state, "pending", None) or {})
        # Roll-ups merge readings only: the quarantine is small, and compaction only knows the reading schema.
        self._rolls_up = schema.equals(READING_ARROW_SCHEMA)
        self.buffered_rows = 0
        self._over_limit_warned = False
        # Counters for tests and operators (the Prometheus metrics aggregate all partitions).
        self.rows_written = 0
        self.files_written = 0
        self.roll_ups = 0
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
            # Rows an earlier release carried in its snapshot: committed, in no file yet, written at the
            # next snapshot like any buffered rows.
            for carried in (getattr(resume_state, "carried", None) or {}).values():
                self.write_batch([_from_ipc(chunk) for chunk in carried.chunks])

    # --- called by the Bytewax worker ---

    def write_batch(self, values: list[pa.Table]) -> None:
        for table in values:
            rows = self._conform(table)
            if rows.num_rows == 0:
                continue
            hours = rows[self.time_column].cast(pa.int64()).to_numpy() // store.MS_PER_HOUR
            for hour in np.unique(hours).tolist():
                self._buffer.setdefault(hour, []).append(rows.filter(pa.array(hours == hour)))
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
        started = time.perf_counter()
        now = self.clock()
        self._flush(now)
        if self._rolls_up:
            for hour in [h for h, pending in self._pending.items() if self._is_due(pending, now)]:
                self._roll_up(hour)
        SNAPSHOT_SECONDS.observe(time.perf_counter() - started)
        return LakeState(self.seq, pending=dict(self._pending))

    def close(self) -> None:
        # Rows after the last snapshot: if no snapshot follows, a rerun resumes before them and rewrites
        # this same sequence, so writing them is safe and keeps a clean shutdown from losing them.
        self._flush(self.clock())

    @property
    def pending_files(self) -> int:
        """Small files of this partition that wait for a roll-up."""
        return sum(p.files for p in self._pending.values())

    # --- internals ---

    def _conform(self, table: Any) -> pa.Table:
        if not isinstance(table, pa.Table):
            raise TypeError(f"{self.name}: expected a pyarrow.Table of decoded readings, got {type(table).__name__}")
        if self.schema.equals(QUARANTINE_ARROW_SCHEMA):
            table = with_original_columns(table)  # rows of releases before the original_* columns
        elif "channels" not in table.column_names and "channels" in self.schema.names:  # readings without channels
            table = table.append_column("channels", pa.nulls(table.num_rows, self.schema.field("channels").type))
        try:
            return table.select(self.schema.names).cast(self.schema)
        except (KeyError, pa.ArrowException) as exc:
            raise ValueError(
                f"{self.name}: table does not fit the lake schema ({_schema_name(self.schema)}): {exc}"
            ) from exc

    def _is_due(self, pending: PendingHour, now: float) -> bool:
        limits = self.thresholds
        # A single small file is already as merged as it gets: rolling it up would only rewrite it.
        return pending.files >= 2 and (
            pending.rows >= limits.max_rows
            or pending.nbytes >= limits.max_bytes
            or now - pending.since_s >= limits.max_age_s
        )

    def _flush(self, now: float) -> None:
        """Write every buffered row as sequence `self.seq` (a file per event hour), retrying forever."""
        if not self._buffer:
            return
        # Serialized once, outside the retry loop: only the store is retried, never the data.
        files: dict[str, bytes] = {}
        rows = 0
        written: dict[int, tuple[int, int]] = {}
        for hour, tables in sorted(self._buffer.items()):
            data = pa.concat_tables(tables)
            rows += data.num_rows
            written[hour] = (data.num_rows, data.nbytes)
            sink = pa.BufferOutputStream()
            pq.write_table(data, sink, compression="zstd")
            path = store.hour_dir(self.root, hour) + "/" + store.file_name(self.partition, self.seq)
            files[path] = sink.getvalue().to_pybytes()
        self._retrying(f"write sequence {self.seq} ({rows} rows)", lambda: self._write_seq(self.seq, files))
        self.rows_written += rows
        self.files_written += len(files)
        ROWS_WRITTEN.inc(rows)
        FILES_WRITTEN.inc(len(files))
        for hour, (hour_rows, nbytes) in written.items():
            before = self._pending.get(hour, PendingHour(since_s=now))
            self._pending[hour] = PendingHour(
                before.files + 1, before.rows + hour_rows, before.nbytes + nbytes, before.since_s
            )
        self._buffer.clear()
        self.buffered_rows = 0
        self._over_limit_warned = False
        self.seq += 1

    def _roll_up(self, hour: int) -> None:
        """Merge this partition's small files of `hour`; on failure keep them (complete on their own) and
        try again at a later snapshot rather than hold the flow back for a tidier layout."""
        directory = store.hour_dir(self.root, hour)
        try:
            result = roll_up_partition(self.fs, directory, self.partition)
        except Exception as exc:  # noqa: BLE001 - any store failure; nothing is lost, the small files stay
            ROLL_UP_FAILURES.inc()
            logger.warning("%s: roll-up of %s failed, keeping its small files for now: %s",
                           self.name, directory, one_line(exc))
            return
        self._pending.pop(hour, None)
        if result.output is not None:
            self.roll_ups += 1
            ROLL_UPS.inc()

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

        def count(_: BaseException) -> None:
            self.retries += 1
            WRITE_RETRIES.inc()

        return retry_forever(f"{self.name}: {what} to {self.root}", action, self._backoff, logger, count)


def _from_ipc(chunk: bytes) -> pa.Table:
    return pa.ipc.open_stream(chunk).read_all()


def _partition_number(key: str) -> int:
    number = key.removeprefix(PART_PREFIX)
    if not key.startswith(PART_PREFIX) or not number.isdigit():
        raise ValueError(f"lake: item key / partition {key!r} is not '{PART_PREFIX}<kafka partition>'")
    return int(number)


def _schema_name(schema: pa.Schema) -> str:
    return "QUARANTINE_ARROW_SCHEMA" if schema.equals(QUARANTINE_ARROW_SCHEMA) else "READING_ARROW_SCHEMA"
