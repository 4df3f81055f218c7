"""The Bytewax sink that writes the flow's Arrow tables into ClickHouse.

Items reaching the sink are `(key, (table_name, arrow_table))`; `table_name` is one of `TABLE_SCHEMAS`.
Each partition buffers tables and a background thread inserts them, one insert per table at most about
every `clickhouse_flush_seconds`, because ClickHouse wants few large inserts (every insert is a part on
disk), while the flow emits many small tables.

Delivery: `snapshot()` returns only after everything written before it is inserted, so a Bytewax recovery
snapshot never covers rows that are not in ClickHouse; after a crash the flow replays from that snapshot
and the ReplacingMergeTree tables absorb what was inserted twice. An unavailable database is retried with
backoff forever (nothing is dropped) while the flow is held back once `clickhouse_max_buffer_rows` wait.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from prometheus_client import Counter, Gauge

from connectors.clickhouse_access import schema_is_current
from connectors.clickhouse_client import connect, redacted_url
from connectors.clickhouse_schema import apply_schema, load_machines, quote_database, set_refresh_interval
from connectors.retry import Backoff, one_line
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    ANOMALY_SCORE_ARROW_SCHEMA,
    INCIDENT_ARROW_SCHEMA,
    MACHINE_STATE_ARROW_SCHEMA,
    READING_ISSUE_ARROW_SCHEMA,
    WINDOW_STATS_ARROW_SCHEMA,
)
from plantpulse.settings import Settings

logger = logging.getLogger("plantpulse.clickhouse")

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "window_stats": WINDOW_STATS_ARROW_SCHEMA,
    "alerts": ALERT_ARROW_SCHEMA,
    "machine_state": MACHINE_STATE_ARROW_SCHEMA,
    "anomaly_scores": ANOMALY_SCORE_ARROW_SCHEMA,
    "incidents": INCIDENT_ARROW_SCHEMA,
    "incident_events": INCIDENT_ARROW_SCHEMA,
    "reading_issues": READING_ISSUE_ARROW_SCHEMA,
}
# Incidents are few and someone is waiting for them: their rows are inserted at once, not after the
# flush interval that batches the high-volume tables (with whatever else is pending at that moment).
URGENT_TABLES = frozenset({"incidents", "incident_events"})

ROWS_INSERTED = Counter("plantpulse_clickhouse_rows_inserted", "Rows inserted into ClickHouse.", ["table"])
INSERTS = Counter("plantpulse_clickhouse_inserts", "Successful ClickHouse inserts.", ["table"])
INSERT_RETRIES = Counter("plantpulse_clickhouse_insert_retries", "Failed ClickHouse inserts that will be retried.")
BUFFERED_ROWS = Gauge("plantpulse_clickhouse_buffered_rows", "Rows waiting in the ClickHouse sink buffers.")

# Server error codes that mean "try again later" rather than "this insert is wrong".
_TRANSIENT_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        32,  # ATTEMPT_TO_READ_AFTER_EOF
        159,  # TIMEOUT_EXCEEDED
        201,  # QUOTA_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR
        439,  # CANNOT_SCHEDULE_TASK
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION
    }
)


def is_transient(exc: BaseException) -> bool:
    """Whether an insert failure is worth retrying (the database is unavailable or overloaded).

    Anything else - a wrong column, a type the table rejects - would fail the same way forever, so the
    sink stops and the flow fails loudly instead (a Bytewax restart resumes from the last snapshot).
    """
    if isinstance(exc, (ProgrammingError, DataError, NotSupportedError)):
        return False
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DatabaseError):
        # No code: an HTTP error from a proxy or load balancer in front of the server.
        return exc.code is None or exc.code in _TRANSIENT_CODES
    return isinstance(exc, OSError)


class SinkFailed(RuntimeError):
    """The sink's flusher hit a non-retryable error; the rows it held were not inserted."""


class ClickHouseSink(FixedPartitionedSink[tuple[str, pa.Table], None]):
    """`settings.clickhouse_sink_partitions` writer partitions named `clickhouse-<i>`.

    Keep one partition with embedded chDB: the partition owns the engine, and only one process may.
    `connect_fn` and `backoff_factory` exist for tests and tuning.
    """

    def __init__(
        self,
        settings: Settings,
        connect_fn: Callable[[Settings], Client] = connect,
        backoff_factory: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.settings = settings
        self.connect_fn = connect_fn
        self.backoff_factory = backoff_factory
        # Partitions built in this process, by name, so operators and tests can read their counters.
        self.partitions: dict[str, ClickHouseSinkPartition] = {}

    def list_parts(self) -> list[str]:
        return [f"clickhouse-{i}" for i in range(self.settings.clickhouse_sink_partitions)]

    def part_fn(self, item_key: str) -> int:
        # Stable across processes and runs (Python's hash() is salted per process).
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> ClickHouseSinkPartition:
        # resume_state is unused: every snapshot is taken with nothing buffered, so there is nothing to resume.
        name = f"{step_id}/{for_part}"
        client = self._open(name)
        part = ClickHouseSinkPartition(
            client,
            self.settings.clickhouse_database,
            flush_seconds=self.settings.clickhouse_flush_seconds,
            max_buffer_rows=self.settings.clickhouse_max_buffer_rows,
            name=name,
            backoff=self.backoff_factory(),
        )
        self.partitions[for_part] = part
        return part

    def _open(self, name: str) -> Client:
        """Connect and apply the schema, waiting out an unavailable server (e.g. still starting) like inserts do."""
        backoff = self.backoff_factory()
        while True:
            client: Client | None = None
            try:
                client = self.connect_fn(self.settings)
                # A current schema is left alone: the least-privilege `ingest` user may not run even the
                # CREATE ... IF NOT EXISTS statements of `apply_schema` (connectors/sql/access_control.sql).
                if not schema_is_current(client, self.settings.clickhouse_database):
                    apply_schema(client, self.settings.clickhouse_database)
                set_refresh_interval(client, self.settings.clickhouse_database, self.settings.clickhouse_refresh_seconds)
                # Fleet metadata rides along with the sink so analysts can join machines in embedded mode,
                # where this process is the only one that can open the database.
                load_machines(client, self.settings.clickhouse_database, self.settings.machines_file)
                return client
            except Exception as exc:
                if client is not None:
                    client.close()
                cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ else exc
                if not is_transient(cause):
                    raise
                delay = backoff.next_delay()
                logger.warning(
                    "%s: ClickHouse at %s unavailable (attempt %d), retrying in %.2fs: %s",
                    name, redacted_url(self.settings.clickhouse_url), backoff.failures, delay, one_line(exc),
                )
                time.sleep(delay)


class ClickHouseSinkPartition(StatefulSinkPartition[tuple[str, pa.Table], None]):
    """Buffers Arrow tables per ClickHouse table; a background flusher thread owns the client and all inserts.

    Rows flow pending -> in flight (taken by the flusher) -> inserted. `buffered_rows` counts the first two,
    and `write_batch` blocks while adding a table would take it above `max_buffer_rows`.
    """

    def __init__(
        self,
        client: Client,
        database: str,
        *,
        flush_seconds: float,
        max_buffer_rows: int,
        name: str = "clickhouse",
        backoff: Backoff | None = None,
    ) -> None:
        if flush_seconds <= 0 or max_buffer_rows < 1:
            raise ValueError(
                f"{name}: need flush_seconds > 0 and max_buffer_rows >= 1, got {flush_seconds!r}, {max_buffer_rows!r}"
            )
        self.client = client
        self.database = database
        self.flush_seconds = flush_seconds
        self.max_buffer_rows = max_buffer_rows
        self.name = name
        quote_database(database)  # fail here, not in the flusher, on a malformed name
        self._backoff = backoff or Backoff()
        self._backoff.label = "clickhouse"
        self._cond = threading.Condition()
        self._pending: dict[str, list[pa.Table]] = {}
        self._pending_since: float | None = None  # monotonic time the oldest pending table arrived
        self.buffered_rows = 0
        self._written_seq = 0  # tables accepted by write_batch
        self._durable_seq = 0  # of those, how many are inserted
        self._flush_upto = 0  # flush now (without waiting for age) until _durable_seq reaches this
        self._stopping = False
        self._blocked_writers = 0  # writers waiting for room: flush without waiting for the rows' age
        self._urgent = False  # an URGENT_TABLES table is pending: flush without waiting for the rows' age
        self._failure: SinkFailed | None = None
        # Counters for tests and operators (the Prometheus metrics below aggregate all partitions).
        self.rows_inserted: dict[str, int] = {table: 0 for table in TABLE_SCHEMAS}
        self.inserts = 0
        self.retries = 0
        self.peak_buffered_rows = 0
        self.backpressure_waits = 0  # times write_batch had to wait for room in the buffer
        self._thread = threading.Thread(target=self._run, name=f"clickhouse-flusher {name}", daemon=True)
        self._thread.start()

    # --- called by the Bytewax worker ---

    def write_batch(self, values: list[tuple[str, pa.Table]]) -> None:
        for value in values:
            table_name, table = self._check_item(value)
            if table.num_rows == 0:
                continue
            with self._cond:
                # Backpressure: hold the worker while the buffer is full, so memory stays bounded
                # (<= max_buffer_rows, or one table when a single table is larger than that).
                if self._must_wait(table.num_rows):
                    self.backpressure_waits += 1
                while self._must_wait(table.num_rows):
                    self._raise_if_failed()
                    self._blocked_writers += 1
                    self._cond.notify_all()  # wakes the flusher, which flushes a full buffer at once
                    try:
                        self._cond.wait()
                    finally:
                        self._blocked_writers -= 1
                self._raise_if_failed()
                self._pending.setdefault(table_name, []).append(table)
                self._urgent = self._urgent or table_name in URGENT_TABLES
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
                self.buffered_rows += table.num_rows
                self.peak_buffered_rows = max(self.peak_buffered_rows, self.buffered_rows)
                BUFFERED_ROWS.inc(table.num_rows)
                self._written_seq += 1
                self._cond.notify_all()

    def snapshot(self) -> None:
        # Recovery is exactly-once only if a snapshot never covers rows that are not durably inserted.
        self._wait_durable()
        return None

    def close(self) -> None:
        try:
            self._wait_durable()
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join()
            # On a Python thread: embedded chDB's close hangs or aborts ("double free or corruption") when called
            # on a Bytewax cluster worker thread (a Rust thread), where close() runs with -a/BYTEWAX_ADDRESSES.
            closer = threading.Thread(target=self.client.close, name=f"clickhouse-close {self.name}")
            closer.start()
            closer.join()

    # --- internals ---

    def _must_wait(self, rows: int) -> bool:
        # Called under the lock. A table larger than the whole buffer still gets in once the buffer is empty.
        return self.buffered_rows > 0 and self.buffered_rows + rows > self.max_buffer_rows

    def _check_item(self, value: Any) -> tuple[str, pa.Table]:
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError(f"{self.name}: expected (table_name, pyarrow.Table), got {type(value).__name__}: {value!r:.200}")
        table_name, table = value
        expected = TABLE_SCHEMAS.get(table_name)
        if expected is None:
            raise ValueError(f"{self.name}: unknown table {table_name!r}; expected one of {sorted(TABLE_SCHEMAS)}")
        if not isinstance(table, pa.Table):
            raise TypeError(f"{self.name}: value for table {table_name!r} is a {type(table).__name__}, not a pyarrow.Table")
        if table.schema.equals(expected):
            return table_name, table
        # Checked here, in the worker, because a mismatch found by the flusher would only surface later.
        try:
            return table_name, table.select(expected.names).cast(expected)
        except (KeyError, pa.ArrowException) as exc:
            raise ValueError(f"{self.name}: table {table_name!r} does not fit its Arrow schema: {exc}") from exc

    def _raise_if_failed(self) -> None:
        # A fresh exception, so the worker's traceback shows where the flow was held; the cause is chained.
        if self._failure is not None:
            raise SinkFailed(str(self._failure)) from self._failure

    def _wait_durable(self) -> None:
        with self._cond:
            target = self._written_seq
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            while self._durable_seq < target:
                self._raise_if_failed()
                self._cond.wait()
            self._raise_if_failed()

    def _due(self) -> bool:
        """Whether the flusher should take the pending tables now (called under the lock)."""
        if not self._pending:
            return False
        full = self._blocked_writers > 0 or self.buffered_rows >= self.max_buffer_rows
        forced = self._flush_upto > self._durable_seq or self._stopping or self._urgent
        aged = self._pending_since is not None and time.monotonic() - self._pending_since >= self.flush_seconds
        return full or forced or aged

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._due():
                        if self._stopping and not self._pending:
                            return
                        timeout = None
                        if self._pending_since is not None:
                            timeout = max(0.0, self._pending_since + self.flush_seconds - time.monotonic())
                        # Waiting with a deadline is what flushes old rows when no new items arrive.
                        self._cond.wait(timeout)
                    batch, self._pending, self._pending_since, self._urgent = self._pending, {}, None, False
                    taken_seq = self._written_seq
                for table_name, tables in batch.items():
                    self._insert(table_name, pa.concat_tables(tables))
                with self._cond:
                    self._durable_seq = taken_seq
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the worker thread, which raises it
            failure = exc if isinstance(exc, SinkFailed) else SinkFailed(f"{self.name}: flusher crashed: {one_line(exc)}")
            if failure is not exc:
                failure.__cause__ = exc
            logger.error("%s", failure)
            with self._cond:
                self._failure = failure
                self._cond.notify_all()

    def _insert(self, table_name: str, data: pa.Table) -> None:
        """Insert until it succeeds; transient errors are retried forever with backoff."""
        # One token per batch, reused by its retries: if a failed attempt did reach the table, the server
        # drops the repeat (non_replicated_deduplication_window). Random, so no other batch can collide.
        token = f"plantpulse-{uuid.uuid4().hex}"
        attempt = 0
        while True:
            attempt += 1
            try:
                self.client.insert_arrow(
                    table_name, data, database=self.database, settings={"insert_deduplication_token": token}
                )
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise SinkFailed(
                        f"{self.name}: insert of {data.num_rows} rows into {self.database}.{table_name} failed "
                        f"and cannot succeed by retrying: {one_line(exc)}"
                    ) from exc
                delay = self._backoff.next_delay()
                self.retries += 1
                INSERT_RETRIES.inc()
                logger.warning(
                    "%s: insert of %d rows into %s.%s failed (attempt %d), retrying in %.2fs: %s",
                    self.name, data.num_rows, self.database, table_name, attempt, delay, one_line(exc),
                )
                time.sleep(delay)
        if attempt > 1:
            logger.info("%s: insert into %s.%s succeeded after %d attempts", self.name, self.database, table_name, attempt)
        self._backoff.reset()
        self.inserts += 1
        self.rows_inserted[table_name] += data.num_rows
        ROWS_INSERTED.labels(table=table_name).inc(data.num_rows)
        INSERTS.labels(table=table_name).inc()
        with self._cond:
            self.buffered_rows -= data.num_rows
            BUFFERED_ROWS.dec(data.num_rows)
            self._cond.notify_all()  # writers blocked on a full buffer may continue
