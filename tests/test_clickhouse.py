"""The ClickHouse connector against a real embedded chDB engine.

chDB hosts one engine per process, on one data directory at a time: every test here uses the same
directory (one per pytest session) and a database of its own. A module-scoped client keeps the engine up
for the module and is closed at its end, so other test modules can open a different directory afterwards.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError
from prometheus_client import REGISTRY

from connectors.clickhouse import (
    ClickHouseSink,
    ClickHouseSinkPartition,
    EmbeddedDatabaseBusy,
    SinkFailed,
    apply_schema,
    connect,
    load_machines,
    refresh_rollups,
    run_sql,
)
from connectors.clickhouse_schema import load_migrations
from connectors.clickhouse_sink import TABLE_SCHEMAS
from connectors.retry import Backoff
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    MACHINE_STATE_ARROW_SCHEMA,
    SENSORS,
    STATUSES,
    WINDOW_STATS_ARROW_SCHEMA,
)
from plantpulse.settings import Settings

pytestmark = pytest.mark.integration

_db_numbers = itertools.count()
# Recent timestamps: window_stats has a 90-day TTL, so older fixture rows could vanish at a merge.
HOUR0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(chdb_dir: Path) -> Iterator[Client]:
    client = connect(Settings(clickhouse_url=f"chdb://{chdb_dir}"))
    yield client
    client.close()


@pytest.fixture
def settings(engine: Client, chdb_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    database = re.sub(r"\W", "_", f"t{next(_db_numbers)}_{request.node.name}")[:60]
    return Settings(
        data_dir=tmp_path,  # nothing from the working directory (e.g. a demo's machines.csv) leaks in
        clickhouse_url=f"chdb://{chdb_dir}",
        clickhouse_database=database,
        clickhouse_flush_seconds=0.05,
        metrics_port=0,
    )


@pytest.fixture
def db(engine: Client, settings: Settings) -> str:
    apply_schema(engine, settings.clickhouse_database)
    return settings.clickhouse_database


# --- table builders ---------------------------------------------------------------------------------


def window_row(machine_id: str, start: datetime, n: int = 10, base: float = 50.0, **overrides: object) -> dict:
    """A plausible window_stats row; `overrides` replace fields."""
    row: dict[str, object] = {
        "machine_id": machine_id,
        "machine_type": "press",
        "window_start": start,
        "window_end": start + timedelta(seconds=10),
        "readings": n,
        "first_ts": start,
        "last_ts": start + timedelta(seconds=9),
        "last_seq": int(start.timestamp()),
        "first_seq": int(start.timestamp()) - (n - 1),
        "status_last": "running",
        "emitted_at": start + timedelta(seconds=12),
    }
    for i, sensor in enumerate(SENSORS):
        mean = base + i + start.minute / 7
        row |= {
            f"{sensor}_count": n,
            f"{sensor}_mean": mean,
            f"{sensor}_min": mean - 1.5,
            f"{sensor}_max": mean + 2.25,
            f"{sensor}_std": 0.5,
            f"{sensor}_last": mean + 0.125,
        }
    for status in STATUSES:
        row[f"secs_{status}"] = 10.0 if status == "running" else 0.0
    flow = base + start.second / 3  # an extra channel (maps keyed by channel name) on every window
    row |= {"channel_count": [("flow", n)], "channel_mean": [("flow", flow)], "channel_min": [("flow", flow - 1.0)],
            "channel_max": [("flow", flow + 1.0)], "channel_std": [("flow", 0.25)], "channel_last": [("flow", flow)]}
    row |= overrides
    return row


def windows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=WINDOW_STATS_ARROW_SCHEMA)


def alert_row(machine_id: str, start: datetime) -> dict:
    return {
        "alert_id": f"{machine_id}:temp_high:{int(start.timestamp())}",
        "machine_id": machine_id,
        "machine_type": "press",
        "rule_id": "temp_high",
        "kind": "threshold",
        "severity": "warning",
        "sensor": "temperature",
        "window_start": start,
        "window_end": start + timedelta(seconds=10),
        "value": 91.5,
        "threshold": 90.0,
        "duration_s": 10.0,
        "message": "temperature 91.5 > 90",
        "raised_at": start + timedelta(seconds=12),
    }


def state_row(machine_id: str, last_ts: datetime, updated_at: datetime, state: str = "ok") -> dict:
    return {
        "machine_id": machine_id,
        "machine_type": "press",
        "last_ts": last_ts,
        "last_seq": 7,
        **{sensor: 1.0 + i for i, sensor in enumerate(SENSORS)},
        "status": "running",
        "state": state,
        "updated_at": updated_at,
        "seq_resets": 0,
    }


def read_table(client: Client, db: str, table: str, order_by: str) -> pa.Table:
    """A table's rows (FINAL) in the flow's Arrow schema."""
    schema = TABLE_SCHEMAS[table]
    columns = ", ".join(schema.names)
    result = client.query_arrow(f"SELECT {columns} FROM `{db}`.{table} FINAL ORDER BY {order_by}")
    return result.cast(schema)


def scalar(client: Client, sql: str) -> object:
    return client.query(sql).result_rows[0][0]


class FlakyInserts:
    """A real chDB client whose first `failures` insert_arrow calls raise OperationalError.

    The one fake in these tests: an outage of an embedded, in-process engine cannot be produced for
    real, so the failure is injected where a network error from a server would surface.
    """

    def __init__(self, client: Client, failures: int) -> None:
        self._client = client
        self.failures_left = failures
        self.calls = 0

    def insert_arrow(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.failures_left > 0:
            self.failures_left -= 1
            raise OperationalError("Error HTTPConnectionPool: connection refused (injected outage)")
        return self._client.insert_arrow(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


# --- schema -----------------------------------------------------------------------------------------


def test_schema_applies_once_and_is_idempotent(engine: Client, settings: Settings) -> None:
    database = settings.clickhouse_database
    packaged = [m.version for m in load_migrations()]
    # 001_init, 002_hourly_rollup, 003_anomaly_scores, 004_machine_seq_resets, 005_incidents, 006_data_quality,
    # 007_anomaly_hourly
    assert packaged == [1, 2, 3, 4, 5, 6, 7, 8]
    assert apply_schema(engine, database) == packaged
    assert apply_schema(engine, database) == []
    versions = engine.query(f"SELECT version FROM `{database}`.schema_migrations FINAL ORDER BY version").result_rows
    assert versions == [(v,) for v in packaged]
    tables = {row[0] for row in engine.query(f"SHOW TABLES FROM `{database}`").result_rows}
    assert {"window_stats", "alerts", "machine_state", "machines", "window_stats_hourly", "anomaly_scores", "incidents",
            "incident_events", "reading_issues", "data_quality", "data_quality_store",
            "anomaly_scores_hourly"} <= tables
    # A start that crashed after the DDL but before recording it runs the files again: every statement
    # is IF NOT EXISTS, so that succeeds and records the versions.
    engine.command(f"TRUNCATE TABLE `{database}`.schema_migrations")
    assert apply_schema(engine, database) == packaged


def _clickhouse_type(field: pa.Field) -> str:
    if pa.types.is_map(field.type):  # extra channels: keyed by channel name
        return f"Map(LowCardinality(String), {_clickhouse_type(pa.field('v', field.type.item_type, nullable=False))})"
    if pa.types.is_timestamp(field.type):
        return "Nullable(DateTime64(3, 'UTC'))" if field.nullable else "DateTime64(3, 'UTC')"
    base = {pa.string(): "String", pa.float64(): "Float64", pa.uint32(): "UInt32", pa.int32(): "Int32", pa.int64(): "Int64",
            pa.bool_(): "Bool"}[field.type]
    return f"Nullable({base})" if field.nullable else base


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_table_columns_match_arrow_schema(engine: Client, db: str, table: str) -> None:
    # MATERIALIZED columns (reading_issues.hour) are computed by the table, never sent by the sink.
    described = [row for row in engine.query(f"DESCRIBE TABLE `{db}`.{table}").result_rows if row[2] != "MATERIALIZED"]
    actual = {name: ch_type[len("LowCardinality("):-1] if ch_type.startswith("LowCardinality(") else ch_type
              for name, ch_type, *_ in described}
    expected = {field.name: _clickhouse_type(field) for field in TABLE_SCHEMAS[table]}
    assert [name for name, *_ in described] == [*expected, "ingested_at"]
    assert {name: actual[name] for name in expected} == expected


def test_redelivered_windows_replace_instead_of_duplicating(engine: Client, db: str) -> None:
    rows = [window_row(f"M{m}", HOUR0 + timedelta(seconds=10 * w)) for m in range(3) for w in range(20)]
    first = windows_table(rows)
    engine.insert_arrow("window_stats", first, database=db)
    # Re-delivered after a crash: same (machine_id, window_start), emitted later, one value recomputed.
    again = windows_table([{**row, "emitted_at": row["emitted_at"] + timedelta(minutes=1), "readings": 11} for row in rows])
    engine.insert_arrow("window_stats", again, database=db)

    assert scalar(engine, f"SELECT count() FROM `{db}`.window_stats") == 2 * len(rows)
    assert scalar(engine, f"SELECT count() FROM `{db}`.window_stats FINAL") == len(rows)
    assert scalar(engine, f"SELECT min(readings) FROM `{db}`.window_stats FINAL") == 11  # the later version won


def test_retried_insert_with_same_token_is_stored_once(engine: Client, db: str) -> None:
    table = windows_table([window_row("M1", HOUR0 + timedelta(seconds=10 * w)) for w in range(5)])
    for _ in range(2):
        engine.insert_arrow("window_stats", table, database=db, settings={"insert_deduplication_token": "batch-1"})
    assert scalar(engine, f"SELECT count() FROM `{db}`.window_stats") == 5


def test_machine_state_newest_update_wins_even_when_inserted_first(engine: Client, db: str) -> None:
    last_ts = HOUR0 + timedelta(minutes=5)
    stale = state_row("M1", last_ts, last_ts + timedelta(seconds=40), state="stale")
    ok = state_row("M1", last_ts, last_ts + timedelta(seconds=1), state="ok")
    engine.insert_arrow("machine_state", pa.Table.from_pylist([stale], schema=MACHINE_STATE_ARROW_SCHEMA), database=db)
    engine.insert_arrow("machine_state", pa.Table.from_pylist([ok], schema=MACHINE_STATE_ARROW_SCHEMA), database=db)
    assert engine.query(f"SELECT state FROM `{db}`.machine_state FINAL").result_rows == [("stale",)]


# --- the hourly rollup ------------------------------------------------------------------------------


def expected_hourly(rows: list[dict]) -> dict[tuple[str, datetime], dict]:
    """The rollup computed in plain Python from the latest version of each window."""
    latest: dict[tuple[str, datetime], dict] = {}
    for row in rows:
        key = (row["machine_id"], row["window_start"])
        if key not in latest or row["emitted_at"] >= latest[key]["emitted_at"]:
            latest[key] = row
    groups: dict[tuple[str, datetime], list[dict]] = defaultdict(list)
    for (machine_id, start), row in latest.items():
        groups[(machine_id, start.replace(minute=0, second=0, microsecond=0))].append(row)
    out = {}
    for key, windows in groups.items():
        agg: dict[str, object] = {"windows": len(windows), "readings": sum(w["readings"] for w in windows)}
        for sensor in SENSORS:
            count = sum(w[f"{sensor}_count"] for w in windows)
            agg[f"{sensor}_count"] = count
            agg[f"{sensor}_avg"] = (
                sum(w[f"{sensor}_mean"] * w[f"{sensor}_count"] for w in windows if w[f"{sensor}_count"]) / count
                if count
                else None
            )
            mins = [w[f"{sensor}_min"] for w in windows if w[f"{sensor}_min"] is not None]
            maxs = [w[f"{sensor}_max"] for w in windows if w[f"{sensor}_max"] is not None]
            agg[f"{sensor}_min"] = min(mins) if mins else None
            agg[f"{sensor}_max"] = max(maxs) if maxs else None
        for status in STATUSES:
            agg[f"secs_{status}"] = sum(w[f"secs_{status}"] for w in windows)
        out[key] = agg
    return out


def read_hourly(client: Client, db: str) -> dict[tuple[str, datetime], dict]:
    result = client.query(f"SELECT * FROM `{db}`.window_stats_hourly ORDER BY machine_id, hour")
    out = {}
    for row in result.named_results():
        hour = row.pop("hour").replace(tzinfo=UTC)
        machine_id = row.pop("machine_id")
        row.pop("machine_type")
        out[(machine_id, hour)] = row
    return out


def assert_rollup_equals(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        for column, value in want.items():
            got = actual[key][column]
            if value is None or got is None:
                assert got == value, (key, column)
            else:
                assert got == pytest.approx(value, rel=1e-12), (key, column)


def test_hourly_rollup_is_correct_and_not_inflated_by_redelivery(engine: Client, db: str) -> None:
    h1, h2 = HOUR0, HOUR0 + timedelta(hours=1)
    rows = [
        window_row("M1", h1 + timedelta(minutes=1), n=10, base=40.0),
        window_row("M1", h1 + timedelta(minutes=2), n=4, base=60.0, secs_running=6.0, secs_idle=4.0),
        # The vibration sensor dropped out for a whole window: its statistics are NULL and count 0.
        window_row("M1", h1 + timedelta(minutes=59, seconds=50), n=3, base=45.0, vibration_count=0,
                   vibration_mean=None, vibration_min=None, vibration_max=None, vibration_std=None, vibration_last=None),
        window_row("M1", h2, n=10, base=70.0, secs_running=0.0, secs_fault=10.0, status_last="fault"),
        window_row("M2", h1 + timedelta(minutes=30), n=8, base=20.0),
        # M3 reported only NULL vibration in its hour: the hourly vibration stats are NULL.
        window_row("M3", h2 + timedelta(minutes=5), n=5, vibration_count=0, vibration_mean=None,
                   vibration_min=None, vibration_max=None, vibration_std=None, vibration_last=None),
    ]
    engine.insert_arrow("window_stats", windows_table(rows), database=db)
    refresh_rollups(engine, db)
    assert_rollup_equals(read_hourly(engine, db), expected_hourly(rows))
    assert read_hourly(engine, db)[("M3", h2)]["vibration_avg"] is None

    # After a crash the flow re-delivers windows (emitted later, same statistics), and a new window arrives.
    redelivered = [{**row, "emitted_at": row["emitted_at"] + timedelta(minutes=3)} for row in rows[:4]]
    late = [window_row("M2", h1 + timedelta(minutes=40), n=6, base=25.0)]
    engine.insert_arrow("window_stats", windows_table(redelivered + late), database=db)
    refresh_rollups(engine, db)
    all_rows = rows + redelivered + late
    assert_rollup_equals(read_hourly(engine, db), expected_hourly(all_rows))
    assert read_hourly(engine, db)[("M1", h1)]["windows"] == 3  # not 6

    # A window recomputed with different statistics replaces the old one in the rollup as well.
    changed = [{**rows[4], "readings": 9, "temperature_count": 9, "temperature_max": 99.0,
                "emitted_at": rows[4]["emitted_at"] + timedelta(minutes=5)}]
    engine.insert_arrow("window_stats", windows_table(changed), database=db)
    refresh_rollups(engine, db)
    assert_rollup_equals(read_hourly(engine, db), expected_hourly(all_rows + changed))


# --- the sink ---------------------------------------------------------------------------------------


def _sink_items(n_batches: int, machines: int) -> tuple[list[tuple[str, tuple[str, pa.Table]]], dict[str, pa.Table]]:
    items = []
    inputs: dict[str, list[pa.Table]] = defaultdict(list)
    for b in range(n_batches):
        start = HOUR0 + timedelta(seconds=10 * b)
        windows = windows_table([window_row(f"M{m:03d}", start, base=float(m + b)) for m in range(machines)])
        alerts = pa.Table.from_pylist([alert_row(f"M{b % machines:03d}", start)], schema=ALERT_ARROW_SCHEMA)
        states = pa.Table.from_pylist(
            [state_row(f"M{m:03d}", start, start + timedelta(seconds=11)) for m in range(machines)],
            schema=MACHINE_STATE_ARROW_SCHEMA,
        )
        for name, table in (("window_stats", windows), ("alerts", alerts), ("machine_state", states)):
            items.append((name, (name, table)))
            inputs[name].append(table)
    return items, {name: pa.concat_tables(tables) for name, tables in inputs.items()}


def _run_flow(settings: Settings, items: list, sink: ClickHouseSink) -> None:
    flow = Dataflow("clickhouse_sink_test")
    op.output("clickhouse_out", op.input("in", flow, TestingSource(items)), sink)
    run_main(flow)


def test_sink_in_a_bytewax_flow_writes_exactly_the_input(engine: Client, settings: Settings) -> None:
    items, inputs = _sink_items(n_batches=12, machines=25)
    sink = ClickHouseSink(settings)
    _run_flow(settings, items, sink)
    db = settings.clickhouse_database

    got_windows = read_table(engine, db, "window_stats", "machine_id, window_start")
    assert got_windows.equals(inputs["window_stats"].sort_by([("machine_id", "ascending"), ("window_start", "ascending")]))
    got_alerts = read_table(engine, db, "alerts", "machine_id, rule_id, window_start")
    assert got_alerts.equals(inputs["alerts"].sort_by([("machine_id", "ascending"), ("window_start", "ascending")]))
    state = inputs["machine_state"]
    latest_state = state.filter(pa.compute.equal(state["last_ts"], HOUR0 + timedelta(seconds=110)))
    assert read_table(engine, db, "machine_state", "machine_id").equals(latest_state.sort_by("machine_id"))

    (part,) = sink.partitions.values()
    assert part.rows_inserted == {name: inputs[name].num_rows if name in inputs else 0 for name in TABLE_SCHEMAS}
    assert part.retries == 0
    # Latency column filled by the server.
    assert scalar(engine, f"SELECT countIf(ingested_at > now64(3) - INTERVAL 1 HOUR) FROM `{db}`.window_stats") == 300


def test_sink_backpressure_and_outage_lose_nothing(engine: Client, settings: Settings) -> None:
    settings = settings.model_copy(update={"clickhouse_max_buffer_rows": 60, "clickhouse_flush_seconds": 0.02})
    failures = 7
    flaky: list[FlakyInserts] = []

    def flaky_connect(s: Settings) -> Client:
        flaky.append(FlakyInserts(connect(s), failures))
        return flaky[-1]  # type: ignore[return-value]

    retries_before = REGISTRY.get_sample_value("plantpulse_clickhouse_insert_retries_total") or 0.0
    sink_retries = {"sink": "clickhouse"}  # the pipeline board's "sink retries" panel
    sink_retries_before = REGISTRY.get_sample_value("plantpulse_sink_retries_total", sink_retries) or 0.0
    items, inputs = _sink_items(n_batches=40, machines=20)  # 20-row tables into a 60-row buffer
    sink = ClickHouseSink(settings, connect_fn=flaky_connect, backoff_factory=lambda: Backoff(0.01, 0.05))
    _run_flow(settings, items, sink)

    (part,) = sink.partitions.values()
    db = settings.clickhouse_database
    assert part.retries == failures
    assert REGISTRY.get_sample_value("plantpulse_clickhouse_insert_retries_total") - retries_before == failures
    assert REGISTRY.get_sample_value("plantpulse_sink_retries_total", sink_retries) - sink_retries_before == failures
    assert part.backpressure_waits > 0
    assert part.peak_buffered_rows <= settings.clickhouse_max_buffer_rows
    assert scalar(engine, f"SELECT count() FROM `{db}`.window_stats") == inputs["window_stats"].num_rows
    assert read_table(engine, db, "window_stats", "machine_id, window_start").equals(
        inputs["window_stats"].sort_by([("machine_id", "ascending"), ("window_start", "ascending")])
    )
    assert part.rows_inserted["alerts"] == inputs["alerts"].num_rows
    assert REGISTRY.get_sample_value("plantpulse_clickhouse_rows_inserted_total", {"table": "alerts"}) >= 40


def _partition(settings: Settings, client: Client | None = None, **kwargs: object) -> ClickHouseSinkPartition:
    """A sink partition built directly (no flow), for timing tests."""
    options: dict = {"flush_seconds": 0.05, "max_buffer_rows": 10_000, "name": "test/clickhouse-0"} | kwargs
    return ClickHouseSinkPartition(client or connect(settings), settings.clickhouse_database, **options)


def test_sink_flushes_on_time_without_new_items(engine: Client, db: str, settings: Settings) -> None:
    part = _partition(settings, flush_seconds=0.3)
    try:
        for w in range(20):  # 20 small tables in quick succession
            part.write_batch([("window_stats", windows_table([window_row("M1", HOUR0 + timedelta(seconds=10 * w))]))])
        deadline = time.monotonic() + 5
        while scalar(engine, f"SELECT count() FROM `{db}`.window_stats") < 20:
            assert time.monotonic() < deadline, "buffered rows were not flushed without a snapshot"
            time.sleep(0.02)
        assert part.inserts <= 2  # batched: about one insert per table per flush interval, not 20
    finally:
        part.close()


def test_snapshot_returns_only_after_rows_are_inserted(engine: Client, db: str, settings: Settings) -> None:
    part = _partition(settings, flush_seconds=3600)  # never flushed by age during this test
    try:
        part.write_batch([("window_stats", windows_table([window_row("M1", HOUR0)]))])
        part.write_batch([("alerts", pa.Table.from_pylist([alert_row("M1", HOUR0)], schema=ALERT_ARROW_SCHEMA))])
        assert part.snapshot() is None
        assert scalar(engine, f"SELECT count() FROM `{db}`.window_stats") == 1
        assert scalar(engine, f"SELECT count() FROM `{db}`.alerts") == 1
    finally:
        part.close()


def test_sink_stops_with_a_clear_error_on_a_permanent_failure(engine: Client, db: str, settings: Settings) -> None:
    class RejectingClient(FlakyInserts):
        def insert_arrow(self, *args: object, **kwargs: object) -> object:
            raise ProgrammingError("Code: 16. DB::Exception: No such column bogus in table (NO_SUCH_COLUMN_IN_TABLE)")

    part = _partition(settings, client=RejectingClient(connect(settings), 0))
    part.write_batch([("window_stats", windows_table([window_row("M1", HOUR0)]))])
    with pytest.raises(SinkFailed, match=r"window_stats failed and cannot succeed by retrying.*NO_SUCH_COLUMN"):
        part.snapshot()
    with pytest.raises(SinkFailed):
        part.close()


def test_sink_rejects_unknown_tables_and_bad_items(engine: Client, db: str, settings: Settings) -> None:
    part = _partition(settings)
    try:
        with pytest.raises(ValueError, match="unknown table 'windows'"):
            part.write_batch([("windows", windows_table([]))])
        with pytest.raises(TypeError, match=r"expected \(table_name, pyarrow.Table\)"):
            part.write_batch([windows_table([])])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="does not fit its Arrow schema"):
            part.write_batch([("alerts", windows_table([window_row("M1", HOUR0)]))])
    finally:
        part.close()


# --- embedded engine: one process, one directory ----------------------------------------------------


def test_embedded_dir_in_use_by_another_process_raises_busy(engine: Client, chdb_dir: Path) -> None:
    # This process holds the directory (the module's engine); a second process must get the busy error.
    code = textwrap.dedent(
        f"""
        from connectors.clickhouse import EmbeddedDatabaseBusy, connect
        from plantpulse.settings import Settings
        try:
            connect(Settings(clickhouse_url="chdb://{chdb_dir}"))
        except EmbeddedDatabaseBusy as exc:
            print("BUSY", exc)
        else:
            print("OPENED")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("BUSY "), (result.stdout, result.stderr)
    message = lines[-1].removeprefix("BUSY ")
    assert message == (
        f"the embedded ClickHouse at {chdb_dir} is in use by another process (pid {os.getpid()}) (a running flow "
        "or demo); stop it, or set CLICKHOUSE_URL to a ClickHouse server to query concurrently"
    )


def test_clients_share_one_path_but_not_two_paths_in_one_process(
    engine: Client, db: str, settings: Settings, tmp_path: Path
) -> None:
    other = connect(settings)
    try:
        other.command(f"INSERT INTO `{db}`.machines (machine_id, site, line, machine_type) VALUES ('X1', 's', 'l', 't')")
        assert scalar(engine, f"SELECT count() FROM `{db}`.machines") == 1
    finally:
        other.close()
    with pytest.raises(ProgrammingError, match="already initialized with path"):
        connect(Settings(clickhouse_url=f"chdb://{tmp_path / 'second'}"))


def test_connect_rejects_unusable_urls() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        connect(Settings(clickhouse_url="chdb://relative/dir"))
    with pytest.raises(ValueError, match=r"expected chdb:///absolute/path or http\(s\)://host:port"):
        connect(Settings(clickhouse_url="tcp://user:secret@host:9000"))
    with pytest.raises(ValueError) as info:
        connect(Settings(clickhouse_url="tcp://user:secret@host:9000"))
    assert "secret" not in str(info.value)


# --- run_sql and fleet metadata ---------------------------------------------------------------------


def test_run_sql_resolves_tables_in_the_plantpulse_database(engine: Client, db: str, settings: Settings) -> None:
    engine.insert_arrow("window_stats", windows_table([window_row("M1", HOUR0), window_row("M2", HOUR0)]), database=db)
    columns, rows = run_sql(settings, "SELECT machine_id, readings FROM window_stats FINAL ORDER BY machine_id")
    assert columns == ["machine_id", "readings"]
    assert rows == [("M1", 10), ("M2", 10)]
    assert run_sql(settings, "SELECT machine_id FROM window_stats WHERE 0") == (["machine_id"], [])
    assert run_sql(settings, "OPTIMIZE TABLE window_stats FINAL") == ([], [])
    with pytest.raises(ValueError, match="exactly one SQL statement"):
        run_sql(settings, "SELECT 1; SELECT 2")


def test_load_machines(engine: Client, db: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "machines.csv"
    csv_path.write_text("machine_id,site,line,machine_type\nM1,Berlin,L1,press\nM2,Berlin,L2,lathe\n")
    assert load_machines(engine, db, csv_path) == 2
    csv_path.write_text("machine_id,site,line,machine_type\nM2,Munich,L9,lathe\n")
    assert load_machines(engine, db, csv_path) == 1  # reloading replaces M2
    rows = engine.query(f"SELECT machine_id, site, line, machine_type FROM `{db}`.machines FINAL ORDER BY machine_id")
    assert rows.result_rows == [("M1", "Berlin", "L1", "press"), ("M2", "Munich", "L9", "lathe")]
    assert load_machines(engine, db, tmp_path / "absent.csv") == 0
    (tmp_path / "bad.csv").write_text("id,site\nM1,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['machine_id', 'line', 'machine_type'\]"):
        load_machines(engine, db, tmp_path / "bad.csv")


def test_sink_waits_for_an_unavailable_server_at_start(engine: Client, settings: Settings) -> None:
    attempts: list[int] = []

    def connect_when_up(s: Settings) -> Client:
        attempts.append(1)
        if len(attempts) <= 2:  # injected: the server is still starting
            raise OperationalError("Error HTTPConnectionPool: connection refused (injected outage)")
        return connect(s)

    sink = ClickHouseSink(settings, connect_fn=connect_when_up, backoff_factory=lambda: Backoff(0.01, 0.02))
    part = sink.build_part("out", "clickhouse-0", None)
    part.close()
    assert len(attempts) == 3
    assert sink.list_parts() == ["clickhouse-0"]


def test_sink_does_not_retry_a_busy_embedded_engine(settings: Settings, chdb_dir: Path) -> None:
    def busy(s: Settings) -> Client:
        raise EmbeddedDatabaseBusy(chdb_dir, 1234)

    with pytest.raises(EmbeddedDatabaseBusy, match="pid 1234"):
        ClickHouseSink(settings, connect_fn=busy).build_part("out", "clickhouse-0", None)


def test_refresh_interval_comes_from_the_setting_at_every_start(engine: Client, db: str) -> None:
    """CLICKHOUSE_REFRESH_SECONDS replaces the DDL's one minute, and a later start with another value wins."""
    from connectors.clickhouse_schema import REFRESHABLE_VIEWS, set_refresh_interval

    def intervals() -> set[str]:
        return {re.search(r"REFRESH EVERY (\d+ \w+)", engine.query(f"SHOW CREATE TABLE `{db}`.{view}").result_rows[0][0])[1]
                for view in REFRESHABLE_VIEWS}

    assert intervals() == {"1 MINUTE"}
    set_refresh_interval(engine, db, 7)
    assert intervals() == {"7 SECOND"}
    set_refresh_interval(engine, db, 3600)
    assert intervals() == {"1 HOUR"}  # ClickHouse shows the interval in its largest unit
    with pytest.raises(ValueError, match="CLICKHOUSE_REFRESH_SECONDS"):
        set_refresh_interval(engine, db, 0)
