"""The database the dashboard-query bench queries: a simulated fleet through the broker and the real flow into chDB.

`seed` produces `SeedConfig.minutes` of event time for `SeedConfig.machines` machines (one reading per machine and
`interval_ms`) to a Kafka-protocol broker with `sim.producer.produce`, as fast as it can, event time ending at
the moment production starts; then runs the live flow in this process (`flows.telemetry.build_flow(tail=False)`
through `bytewax.testing.run_main`: one worker, stops at the end of the topics) into an embedded chDB database,
and forces the refreshable rollups (`window_stats_hourly`, `data_quality`), as a minute of waiting would.

The stream is what tests/dashboard_seed.py sends (that module is the tests' seed; bench/ does not import
tests/), at production size and with production settings: the simulator's faults (`faults="all"` on
`fault_rate` of the machines, the first after `faults_after_s` healthy seconds, as `bench.model_quality`, so
the packaged anomaly models have learned a baseline), its transport imperfections (duplicates, late,
out-of-order and malformed messages at `IMPERFECTIONS`) and gaps (`sim.gaps`): the fleet's last
`silent_machines` machines send nothing in the last `silent_for_s` seconds (stale at the end), the
`quiet_machines` before them are quiet for `quiet_for_s` mid-run, and clean readings are lost at `lost_rate`.
Packaged rules and model specs, default window
(10 s) and state shards; idle windows close by event time and at the end of the topic, not by the wall clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.model_quality import FAULTS_AFTER_S
from connectors.clickhouse_client import connect
from connectors.clickhouse_schema import refresh_rollups
from connectors.topics import ensure_topics
from plantpulse.settings import PACKAGED_MODELS_FILE, PACKAGED_RULES_FILE, Settings
from sim import Simulator, build_fleet
from sim.faults import DEFAULT_FAULT_RATE
from sim.fleet import write_fleet_csv
from sim.gaps import Gaps, with_gaps
from sim.producer import ProduceSummary, produce

# Per clean reading: the rates of tests/dashboard_seed.py, so every data-quality panel has rows.
IMPERFECTIONS: dict[str, float] = {"duplicates": 0.004, "late": 0.002, "out_of_order": 0.01, "malformed": 0.003}


@dataclass(frozen=True)
class SeedConfig:
    machines: int = 500
    minutes: float = 60.0
    seed: int = 7
    fault_rate: float = DEFAULT_FAULT_RATE
    faults_after_s: float = FAULTS_AFTER_S
    interval_ms: int = 1000  # one reading per machine and second
    silent_machines: int = 10
    silent_for_s: float = 300.0
    quiet_machines: int = 10  # quiet for quiet_for_s mid-run, then resume (sim.gaps)
    quiet_for_s: float = 120.0
    lost_rate: float = 0.002
    topic_partitions: int = 8

    @classmethod
    def sized(cls, machines: int, minutes: float, seed: int = 7) -> SeedConfig:
        """Defaults scaled to a smaller fleet or run: at most a tenth of the machines fall silent, for at most
        a quarter of the run (500 machines and 60 minutes give the defaults)."""
        few = min(10, max(1, machines // 10))
        return cls(machines=machines, minutes=minutes, seed=seed, silent_machines=few, silent_for_s=min(300.0, minutes * 15),
                   quiet_machines=few, quiet_for_s=min(120.0, minutes * 6))


@dataclass(frozen=True)
class Seeded:
    settings: Settings  # clickhouse_url / clickhouse_database point at the seeded database
    database: str
    produced: ProduceSummary
    produce_seconds: float
    flow_seconds: float
    rollup_seconds: float


def seed_settings(config: SeedConfig, work: Path, chdb_dir: Path, bootstrap: str, database: str) -> Settings:
    """Production defaults, except: this fleet's machines file, topics named after `database` (a shared
    broker keeps runs apart), idle windows closed by event time, no metrics endpoint."""
    fleet = build_fleet(config.machines, config.seed)
    machines_csv = write_fleet_csv(work / "machines.csv", fleet)
    return Settings(
        kafka_bootstrap_servers=bootstrap,
        telemetry_topic=f"telemetry-{database}",
        alerts_topic=f"alerts-{database}",
        deadletter_topic=f"deadletter-{database}",
        incidents_topic=f"incidents-{database}",
        incident_commands_topic=f"incident-commands-{database}",
        topic_partitions=config.topic_partitions,
        data_dir=work,
        clickhouse_url=f"chdb://{chdb_dir}",
        clickhouse_database=database,
        machines_file=machines_csv,
        rules_file=PACKAGED_RULES_FILE,
        models_file=PACKAGED_MODELS_FILE,
        # The flow stops at the end of the topic; by the wall clock every window of an hour-old stream is idle.
        idle_close_seconds=3600,
        metrics_port=0,
    )


def seed(config: SeedConfig, work: Path, chdb_dir: Path, bootstrap: str, database: str) -> Seeded:
    """Produce, run the flow to the end of the topic, force the rollups (see the module docstring)."""
    from bytewax.testing import run_main

    from flows.telemetry import build_flow

    work.mkdir(parents=True, exist_ok=True)
    settings = seed_settings(config, work, chdb_dir, bootstrap, database)
    ensure_topics(settings)
    duration_s = config.minutes * 60
    gaps = Gaps(silent_machines=config.silent_machines, silent_for_s=config.silent_for_s,
                quiet_machines=config.quiet_machines, quiet_for_s=config.quiet_for_s, lost_rate=config.lost_rate,
                seed=config.seed)
    simulator = with_gaps(Simulator, gaps)(
        build_fleet(config.machines, config.seed), seed=config.seed, faults="all", fault_rate=config.fault_rate,
        imperfections=IMPERFECTIONS, start_ts_ms=int(time.time() * 1000 - duration_s * 1000),
        interval_ms=config.interval_ms, faults_after_s=config.faults_after_s,
    )
    started = time.perf_counter()
    produced = produce(settings, simulator, duration_s=duration_s)
    produce_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run_main(build_flow(settings, tail=False))
    flow_seconds = time.perf_counter() - started
    started = time.perf_counter()
    client = connect(settings)
    try:
        refresh_rollups(client, database)
    finally:
        client.close()
    return Seeded(settings, database, produced, produce_seconds, flow_seconds, time.perf_counter() - started)
