"""How long every dashboard panel and alert-rule query takes on an hour of a 500-machine fleet (issue 14).

    python -m bench.run --only dashboard-queries                       # the defaults, into bench/results
    python -m bench.dashboard_queries [--machines 500 --minutes 60]    # prints the section, records nothing

The database: `bench.dashboard_seed` (the simulator's faults and imperfections through an embedded tansu broker
and the real flow into chDB under bench/data/dashboard_queries/, rollups forced); its ingestion is timed for
context (produce, flow, readings/s).

Timed, through one client (`connectors.clickhouse_client.connect`, embedded chDB in this process), each query
`runs` times in a row (median and max wall ms; the first run pays the cold caches), with its row count and
ClickHouse's `EXPLAIN ESTIMATE` of the rows it reads (whole granules of the parts it selects, an upper bound):

- every dashboard query of `grafana.queries.QUERIES` (panels and template variables) as a Grafana panel sends
  it (`grafana.macros.expand`): over the last hour (ending now, rounded up to a window's end, plus a window:
  a minute or two after the data's end, since producing and the flow took that long; the pipeline panels filter
  on detection time) and over the last 24 hours of the same data, which switches the window panels to the
  hourly rollup; interval as a panel's (`grafana.snapshot.panel_interval`: 30 s and 10 min);
  `site`, `line`, `machine_type` at All (every value of `machines FINAL`), `machine_id` the machine with the
  most incidents in the hour (else the one that reported last);
- every alert-rule query (`alert.*`) as Grafana's alerting sends it (`grafana.macros.expand_alert_query`: no
  variables, interval 60 s) over its rule's relative time range ending at `time_to`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from bench.dashboard_seed import IMPERFECTIONS, SeedConfig, Seeded, seed
from connectors.broker import EmbeddedBroker
from connectors.clickhouse_client import connect
from grafana.alerting import GROUPS
from grafana.macros import expand, expand_alert_query
from grafana.queries import QUERIES, PanelQuery
from grafana.snapshot import FLEET_VARIABLES, panel_interval

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "data" / "dashboard_queries"
DATABASE = "dashboard_queries"
RUNS = 5
RANGES: dict[str, timedelta] = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
ALERT_INTERVAL = timedelta(seconds=60)  # grafana/alerting.py: intervalMs of every rule's query
SLOWEST = 3


def reproduce(config: SeedConfig = SeedConfig(), runs: int = RUNS) -> str:
    """The command that measures this configuration again (`bench.run` records only the defaults)."""
    if config == SeedConfig() and runs == RUNS:
        return "python -m bench.run --only dashboard-queries"
    return (f"python -m bench.dashboard_queries --machines {config.machines} --minutes {config.minutes:g} "
            f"--seed {config.seed} --runs {runs}")


# ---- timing ----------------------------------------------------------------------------------------------

def time_query(client: Client, sql: str, runs: int) -> dict:
    """`sql` run `runs` times: median and max wall ms (query + fetching the rows), rows returned, rows estimated."""
    if runs < 1:
        raise ValueError(f"time_query: runs must be >= 1, got {runs}")
    wall_ms: list[float] = []
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = len(client.query(sql).result_rows)
        wall_ms.append((time.perf_counter() - started) * 1000)
    try:
        estimate: int | None = sum(int(row[3]) for row in client.query(f"EXPLAIN ESTIMATE {sql}").result_rows)
    except DatabaseError:  # the estimate is context only; a query ClickHouse cannot estimate still has its time
        estimate = None
    return {"median_ms": round(statistics.median(wall_ms), 2), "max_ms": round(max(wall_ms), 2),
            "runs_ms": [round(ms, 2) for ms in wall_ms], "rows": rows, "estimated_rows_read": estimate}


def scope_variables(client: Client) -> dict[str, list[str]]:
    """site, line and machine_type at All: every value of `machines FINAL` (as Grafana substitutes for All)."""
    variables = {}
    for name in FLEET_VARIABLES:
        values = sorted(str(v) for (v,) in client.query(f"SELECT DISTINCT {name} FROM machines FINAL").result_rows)
        if not values:
            raise RuntimeError(f"dashboard queries: machines FINAL has no {name}; the machines file was not loaded")
        variables[name] = values
    return variables


def focus_machine(client: Client, time_from: datetime, time_to: datetime) -> tuple[str, int]:
    """(machine, its incidents in the range): the machine with the most incidents (ties: the latest first seen,
    then the id), else the machine that reported last with 0."""
    low, high = (f"fromUnixTimestamp64Milli({int(moment.timestamp() * 1000)})" for moment in (time_from, time_to))
    rows = client.query(
        f"SELECT machine_id, count() FROM incidents FINAL WHERE first_seen_ts <= {high} AND last_seen_ts >= {low} "
        "GROUP BY machine_id ORDER BY count() DESC, max(first_seen_ts) DESC, machine_id LIMIT 1").result_rows
    if rows:
        return str(rows[0][0]), int(rows[0][1])
    rows = client.query("SELECT machine_id FROM machine_state FINAL ORDER BY last_ts DESC, machine_id LIMIT 1").result_rows
    if not rows:
        raise RuntimeError("dashboard queries: machine_state is empty; the flow wrote nothing")
    return str(rows[0][0]), 0


def time_panels(client: Client, queries: Mapping[str, PanelQuery], *, time_from: datetime, time_to: datetime,
                variables: Mapping[str, str | list[str]], all_machines: list[str], runs: int) -> dict:
    """Every dashboard query (not alert.*) expanded as a panel over [time_from, time_to]."""
    interval = panel_interval(time_from, time_to)
    timed = {}
    for key, query in queries.items():
        if key.startswith("alert."):
            continue
        # Machine detail shows the focus machine; the other boards have machine_id at All (every machine).
        scoped = {**variables, "machine_id": variables["machine_id"] if key.startswith("machine.") else all_machines}
        sql = expand(query.sql, time_from=time_from, time_to=time_to, interval=interval, variables=scoped,
                     all_selected=FLEET_VARIABLES)
        timed[key] = time_query(client, sql, runs)
    return {"time_from": _iso(time_from), "time_to": _iso(time_to), "interval_s": interval.total_seconds(),
            "queries": timed, "slowest": slowest(timed)}


def time_alerts(client: Client, queries: Mapping[str, PanelQuery], *, time_to: datetime, runs: int) -> dict:
    """Every alert.* query over its rule's relative range (a query no rule uses: over the last hour)."""
    range_s = {rule.query_key: rule.range_s for group in GROUPS for rule in group.rules}
    timed = {}
    for key, query in queries.items():
        if not key.startswith("alert."):
            continue
        seconds = range_s.get(key, 3600)
        sql = expand_alert_query(query.sql, time_from=time_to - timedelta(seconds=seconds), time_to=time_to,
                                 interval=ALERT_INTERVAL)
        timed[key] = {"range_s": seconds, **time_query(client, sql, runs)}
    return {"interval_s": ALERT_INTERVAL.total_seconds(), "queries": timed, "slowest": slowest(timed)}


def slowest(timed: Mapping[str, dict], count: int = SLOWEST) -> list[dict]:
    """The `count` queries with the highest median, slowest first."""
    ranked = sorted(timed.items(), key=lambda item: (-item[1]["median_ms"], item[0]))[:count]
    return [{"key": key, "median_ms": figures["median_ms"], "max_ms": figures["max_ms"]} for key, figures in ranked]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- the run ---------------------------------------------------------------------------------------------

def time_seeded(seeded: Seeded, runs: int = RUNS, queries: Mapping[str, PanelQuery] = QUERIES) -> dict:
    """Time every query on a seeded database: the timing part of the section."""
    # The range ends now, as a dashboard's "last hour" does: a minute or two after the data's end (production and
    # the flow took that long), which the pipeline panels need, filtering on when the flow detected an issue.
    window_ms = seeded.settings.window_seconds * 1000
    now_ms = max(seeded.produced.end_ts_ms, int(time.time() * 1000))
    time_to = datetime.fromtimestamp((-(-now_ms // window_ms) * window_ms + window_ms) / 1000, tz=UTC)
    client = connect(seeded.settings, seeded.database)
    try:
        variables: dict[str, str | list[str]] = dict(scope_variables(client))
        machine, incidents = focus_machine(client, time_to - RANGES["1h"], time_to)
        variables["machine_id"] = machine
        stored = {table: int(client.query(f"SELECT count() FROM {table}{final}").result_rows[0][0])
                  for table, final in (("window_stats", " FINAL"), ("anomaly_scores", " FINAL"), ("incidents", " FINAL"),
                                       ("reading_issues", " FINAL"), ("machine_state", " FINAL"),
                                       ("window_stats_hourly", ""))}
        all_machines = sorted(str(m) for (m,) in client.query("SELECT machine_id FROM machines FINAL").result_rows)
        ranges = {name: time_panels(client, queries, time_from=time_to - span, time_to=time_to,
                                    variables=variables, all_machines=all_machines, runs=runs)
                  for name, span in RANGES.items()}
        alerts = time_alerts(client, queries, time_to=time_to, runs=runs)
    finally:
        client.close()
    first = ranges["1h"]["slowest"][0]
    return {
        "data_end": _iso(datetime.fromtimestamp(seeded.produced.end_ts_ms / 1000, tz=UTC)),
        "variables": {"machine_id": machine, "machine_incidents_in_1h": incidents,
                      **{name: len(variables[name]) for name in FLEET_VARIABLES}},
        "stored_rows": stored,
        "slowest_panel_query_1h": {"key": first["key"], "median_ms": first["median_ms"]},
        "ranges": ranges,
        "alert_rules": alerts,
    }


def run(config: SeedConfig, work: Path, chdb_dir: Path, bootstrap: str, database: str = DATABASE,
        runs: int = RUNS) -> dict:
    """Seed a database (see `bench.dashboard_seed`) and time every query on it: the section without provenance."""
    seeded = seed(config, work, chdb_dir, bootstrap, database)
    produced = seeded.produced
    return {
        "config": {**asdict(config), "imperfections": IMPERFECTIONS, "runs": runs,
                   "window_seconds": seeded.settings.window_seconds},
        "ingestion": {
            "messages": produced.messages, "readings": produced.readings,
            "produce_seconds": round(seeded.produce_seconds, 1), "flow_seconds": round(seeded.flow_seconds, 1),
            "flow_readings_per_s": round(produced.readings / seeded.flow_seconds),
            "rollup_seconds": round(seeded.rollup_seconds, 1),
            "fault_events": dict(produced.fault_events), "imperfections": dict(produced.imperfections),
        },
        **time_seeded(seeded, runs),
    }


def measure(config: SeedConfig = SeedConfig(), runs: int = RUNS, work: Path = WORK) -> dict:
    """The `dashboard_queries` section of latest.json: a fresh broker, a fresh chDB under `work`."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"dashboard queries: {config.machines} machines, {config.minutes:g} min of event time through the broker "
          f"and the flow, then every query {runs} times …", flush=True)
    with EmbeddedBroker(log_dir=work) as broker:
        return run(config, work, work / "chdb", broker.bootstrap, DATABASE, runs)


def report(section: dict) -> str:
    """A few lines for the terminal."""
    ingestion = section["ingestion"]
    lines = [f"ingestion: {ingestion['readings']:,} readings produced in {ingestion['produce_seconds']} s, flow "
             f"{ingestion['flow_seconds']} s ({ingestion['flow_readings_per_s']:,} readings/s)"]
    for name, timed in section["ranges"].items():
        lines.append(f"{name} range ({len(timed['queries'])} dashboard queries, interval {timed['interval_s']:g} s), "
                     "slowest: " + ", ".join(f"{q['key']} {q['median_ms']} ms" for q in timed["slowest"]))
    lines.append("alert rules, slowest: " + ", ".join(f"{q['key']} {q['median_ms']} ms"
                                                      for q in section["alert_rules"]["slowest"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    defaults = SeedConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=defaults.machines)
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="event time simulated")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each query (median and max)")
    args = parser.parse_args(argv)
    if args.machines < 2 or args.minutes <= 0 or args.runs < 1:
        parser.error("--machines must be >= 2, --minutes > 0, --runs >= 1")
    config = SeedConfig.sized(args.machines, args.minutes, args.seed)
    section = measure(config, args.runs)
    print(json.dumps(section, indent=2))
    print(report(section))
    print("(standalone: nothing recorded; `python -m bench.run --only dashboard-queries` records the defaults)")


if __name__ == "__main__":
    main()
