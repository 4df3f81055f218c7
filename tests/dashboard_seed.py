"""A ClickHouse database filled the way production fills it, for tests of dashboard queries and snapshots.

`seed_dashboard_db` runs a short simulator stream through the real path: `sim.producer.produce` to the session's
broker, then the live flow (`build_flow(tail=False)`, in-process) into an embedded chDB database of its own,
then the hourly rollup is forced. The stream has faults (after a short model warm-up, as `plantpulse demo`
does, so both threshold and anomaly incidents open) and transport imperfections (duplicates, late,
out-of-order and malformed messages) and gaps: clean readings lost on the way, machines that go quiet for a
while mid-run and machines that stop sending before the end. The recording holds exactly what
was sent (`sim.gaps`). Event time ends at the seed's wall-clock start, so panels relative to now() (stale machines, open
incidents) have data.

The `dashboard_db` session fixture (tests/conftest.py) calls it once; `run_panel_sql` queries the database.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plantpulse.settings import PACKAGED_MODELS_FILE, Settings
from tests.brokerkit import isolated_settings

if TYPE_CHECKING:
    from sim.gaps import Gaps
    from sim.producer import ProduceSummary

MACHINES = 40
SEED = 7
DURATION_S = 1_500  # 25 min of event time: warm-up, several fault episodes, and a couple of rollup hours at most
INTERVAL_MS = 1_000
FAULT_RATE = 0.25  # of the fleet: about ten faulty machines, so every panel has several to show
WINDOW_SECONDS = 10
# Rates per clean reading, high enough that a 60,000-reading stream carries each kind dozens of times.
IMPERFECTIONS: dict[str, float] = {"duplicates": 0.004, "late": 0.002, "out_of_order": 0.01, "malformed": 0.003}
LOST_RATE = 0.002  # clean readings lost in transport (dropped before the broker: gaps in their machine's seq)
SILENT_MACHINES = 3  # the fleet's last machines stop sending SILENT_FOR_S before the end: stale at the end
SILENT_FOR_S = 300
# The three machines before those go quiet for GAP_S in the middle of the run and then resume (a network cut,
# or a device that stops sending without using up sequence numbers): only the reporting interval tells.
GAP_MACHINES = 3
GAP_S = 120


@dataclass(frozen=True)
class DashboardSeed:
    """What a seeded dashboard database holds and where."""

    settings: Settings  # clickhouse_url/clickhouse_database point at the seeded database
    database: str
    time_from: datetime  # UTC, on or before the first reading's event time
    time_to: datetime  # UTC, after the last one's
    machine_ids: tuple[str, ...]
    incident_machine: str  # the machine with the most incidents (ties: the latest first seen, then the id)
    produced: ProduceSummary  # what the simulator sent: messages, imperfections, fault events, recording paths
    flow_seconds: float  # wall time of the flow's run, for the record


def seed_dashboard_db(bootstrap: str, chdb_dir: Path, work: Path) -> DashboardSeed:
    """Produce, run the flow to the end of the topic, force the rollups; see the module docstring."""
    # Imported here: conftest imports this module, and the flow, the demo and the producer take seconds to
    # import, which every test run would pay even when no test asks for the seed.
    from bytewax.testing import run_main

    from connectors.clickhouse_client import connect
    from connectors.clickhouse_schema import refresh_rollups
    from connectors.topics import ensure_topics
    from flows.telemetry import build_flow
    from plantpulse.demo import DEMO_WARMUP_WINDOWS, write_demo_models
    from sim import Simulator, build_fleet
    from sim.fleet import write_fleet_csv
    from sim.gaps import with_gaps
    from sim.producer import produce

    work.mkdir(parents=True, exist_ok=True)
    fleet = build_fleet(MACHINES, SEED)
    machines_csv = write_fleet_csv(work / "machines.csv", fleet)
    models_file, _ = write_demo_models(PACKAGED_MODELS_FILE, work / "seed-models.toml")
    database = f"dashboards_{uuid.uuid4().hex[:8]}"
    settings = isolated_settings(
        bootstrap,
        work,
        label="dashboards",
        topic_partitions=2,
        clickhouse_url=f"chdb://{chdb_dir}",
        clickhouse_database=database,
        clickhouse_flush_seconds=0.2,
        machines_file=machines_csv,
        models_file=models_file,
        window_seconds=WINDOW_SECONDS,
        # A machine turns stale by event time behind the other machines of its state shard; with the default 32
        # shards most of these 40 machines would have a shard to themselves, and a silent one would never be.
        state_shards=4,
        idle_close_seconds=3600,  # windows close by event time and at the end of the topic, not by the wall clock
        metrics_port=0,
    )
    ensure_topics(settings)
    # Event time ends about now, so panels relative to now() (stale machines, open incidents) have data.
    simulator = with_gaps(Simulator, seed_gaps())(
        fleet, seed=SEED, faults="all", fault_rate=FAULT_RATE, imperfections=IMPERFECTIONS,
        start_ts_ms=int(time.time() * 1000) - DURATION_S * 1000, interval_ms=INTERVAL_MS,
        faults_after_s=DEMO_WARMUP_WINDOWS * WINDOW_SECONDS,
    )
    produced = produce(settings, simulator, duration_s=DURATION_S, record_path=work / "seed.parquet")
    started = time.monotonic()
    run_main(build_flow(settings, tail=False))
    flow_seconds = time.monotonic() - started
    client = connect(settings)
    try:
        refresh_rollups(client, database)
        client.database = database
        ranked = client.query(
            "SELECT machine_id FROM incidents FINAL GROUP BY machine_id "
            "ORDER BY count() DESC, max(first_seen_ts) DESC, machine_id LIMIT 1"
        ).result_rows
    finally:
        client.close()
    if not ranked:
        raise RuntimeError(f"dashboard seed: the flow opened no incident in database {database!r}; see {work}")
    window_ms = WINDOW_SECONDS * 1000
    return DashboardSeed(
        settings=settings,
        database=database,
        time_from=_utc(produced.start_ts_ms // window_ms * window_ms - window_ms),
        time_to=_utc(max(produced.end_ts_ms, int(time.time() * 1000)) + window_ms),
        machine_ids=tuple(m.machine_id for m in fleet),
        incident_machine=str(ranked[0][0]),
        produced=produced,
        flow_seconds=flow_seconds,
    )


def seed_gaps() -> Gaps:
    """The seed's gaps (sim.gaps), imported on demand like the rest of the simulator."""
    from sim.gaps import Gaps

    return Gaps(silent_machines=SILENT_MACHINES, silent_for_s=SILENT_FOR_S, quiet_machines=GAP_MACHINES,
                quiet_for_s=GAP_S, lost_rate=LOST_RATE, seed=SEED)


def run_panel_sql(seed: DashboardSeed, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    """Run one query in the seeded database: (column names, rows), through one client per seed.

    The client is kept (`close_clients` at the session's end): the engine is in this process anyway, and a new
    embedded client costs about a second once the session's engine holds many databases."""
    from connectors.clickhouse_client import connect

    client = _clients.get(seed.database)
    if client is None:
        client = _clients[seed.database] = connect(seed.settings, seed.database)
    result = client.query(sql, parameters=parameters)
    columns = list(result.column_names)
    if not columns:  # chDB names no columns for an empty result; DESCRIBE does, without running the query
        columns = [row[0] for row in client.query(f"DESCRIBE TABLE ({sql})", parameters=parameters).result_rows]
    return columns, [tuple(row) for row in result.result_rows]


_clients: dict[str, Any] = {}


def close_clients() -> None:
    """Close the clients `run_panel_sql` kept."""
    while _clients:
        _clients.popitem()[1].close()


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
