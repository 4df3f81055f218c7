"""Every dashboard panel's and every alert rule's SQL, executed on a database the real flow filled.

The seed (`tests/dashboard_seed.py`) ran a simulator stream with faults, transport imperfections and gaps
through the live flow into chDB. Each query is expanded the way Grafana and the ClickHouse plugin expand it
(`grafana.macros`) for the seed's range and for a 30-day range (which switches window panels to the hourly
rollup), run, and checked: the columns the dashboards bind to, their types, and rows to show. A query that
fails to parse or run, or returns nothing on data that has everything, fails here instead of on a board.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import pytest

from grafana.macros import expand, expand_alert_query
from grafana.queries import QUERIES
from grafana.snapshot import panel_interval
from tests.dashboard_seed import DashboardSeed, run_panel_sql

PANEL_KEYS = sorted(k for k in QUERIES if not k.startswith("alert."))
ALERT_KEYS = sorted(k for k in QUERIES if k.startswith("alert."))
_DATETIME = re.compile(r"^(Nullable\()?DateTime")
_NUMBER = re.compile(r"^(Nullable\()?(U?Int|Float|Decimal)")
_LABEL = re.compile(r"^(LowCardinality\()?(Nullable\()?(String|Enum|Bool)")


def _variables(seed: DashboardSeed, key: str) -> dict[str, str | list[str]]:
    """All sites, lines and types selected; the Machine-detail board shows one machine (the one with the most
    incidents), the other boards all machines (machine_id set to All)."""
    _, rows = run_panel_sql(seed, "SELECT groupUniqArray(site), groupUniqArray(line), groupUniqArray(machine_type), "
                                  "groupUniqArray(machine_id) FROM machines FINAL")
    sites, lines, types, machines = rows[0]
    machine: str | list[str] = seed.incident_machine if key.startswith("machine.") else sorted(machines)
    return {"site": sorted(sites), "line": sorted(lines), "machine_type": sorted(types), "machine_id": machine}


def _types(seed: DashboardSeed, sql: str) -> dict[str, str]:
    _, rows = run_panel_sql(seed, f"DESCRIBE TABLE ({sql})")
    return {name: kind for name, kind, *_ in rows}


@pytest.fixture(scope="module")
def ranges(dashboard_db: DashboardSeed) -> dict[str, tuple]:
    short = (dashboard_db.time_from, dashboard_db.time_to)
    long = (dashboard_db.time_to - timedelta(days=30), dashboard_db.time_to)
    return {"seed range": short, "30 days": long}


@pytest.mark.parametrize("span", ["seed range", "30 days"])
@pytest.mark.parametrize("key", PANEL_KEYS)
def test_panel_query_runs_and_returns_what_its_panel_binds(dashboard_db: DashboardSeed, ranges: dict, key: str,
                                                          span: str) -> None:
    query = QUERIES[key]
    time_from, time_to = ranges[span]
    sql = expand(query.sql, time_from=time_from, time_to=time_to, interval=panel_interval(time_from, time_to),
                 variables=_variables(dashboard_db, key))
    assert "$" not in sql, f"{key}: unexpanded macro or variable left in {sql!r}"
    columns, rows = run_panel_sql(dashboard_db, sql)
    assert tuple(columns) == query.columns, key
    assert rows, f"{key} ({span}) returned no rows on a seed with faults, incidents and gaps:\n{sql}"
    types = _types(dashboard_db, sql)
    assert not any("Nothing" in kind for kind in types.values()), f"{key}: a column of constant NULLs: {types}"
    for name, kind in types.items():
        if name in ("time", "timeEnd") or name.endswith("_at") or name in ("hour", "ts", "opened", "last_seen"):
            assert _DATETIME.match(kind), f"{key}: {name} is {kind}, not a time"
    if query.format == "time_series":
        assert columns[0] == "time", f"{key}: a time series starts with its time column"
        for name in columns[1:]:
            assert _NUMBER.match(types[name]) or _LABEL.match(types[name]), f"{key}: {name} is {types[name]}"
    for row in rows:
        for name, value in zip(columns, row):
            if isinstance(value, float):
                assert not math.isinf(value), f"{key}: {name} is infinite in {row}"


@pytest.mark.parametrize("key", ALERT_KEYS)
def test_alert_rule_query_yields_one_numeric_value(dashboard_db: DashboardSeed, ranges: dict, key: str) -> None:
    time_from, time_to = ranges["seed range"]
    sql = expand_alert_query(QUERIES[key].sql, time_from=time_from, time_to=time_to, interval=timedelta(minutes=1))
    columns, rows = run_panel_sql(dashboard_db, sql)
    assert columns == ["value"] and len(rows) == 1, (key, columns, rows)
    assert _NUMBER.match(_types(dashboard_db, sql)["value"]), key
    assert rows[0][0] is not None and math.isfinite(float(rows[0][0])), (key, rows)


def test_open_critical_incidents_rule_counts_what_the_incident_table_holds(dashboard_db: DashboardSeed,
                                                                           ranges: dict) -> None:
    """The rule's value against a count written independently, and a positive control: the seed has some."""
    time_from, time_to = ranges["seed range"]
    key = next(k for k in ALERT_KEYS if "critical" in k)
    sql = expand_alert_query(QUERIES[key].sql, time_from=time_from, time_to=time_to, interval=timedelta(minutes=1))
    _, rows = run_panel_sql(dashboard_db, sql)
    _, expected = run_panel_sql(dashboard_db, "SELECT countIf(status != 'resolved' AND severity = 'critical') "
                                              "FROM incidents FINAL")
    assert float(rows[0][0]) == float(expected[0][0])


@pytest.mark.parametrize(("rollup", "raw"), [("window_stats_hourly", "window_stats"),
                                           ("anomaly_scores_hourly", "anomaly_scores")])
def test_long_range_panels_read_the_hourly_rollups(dashboard_db: DashboardSeed, ranges: dict, rollup: str,
                                                   raw: str) -> None:
    """Over 30 days the fleet-wide panels must not scan raw windows or scores: EXPLAIN ESTIMATE shows which
    tables the expanded query would read, and the raw table must not be among them."""
    time_from, time_to = ranges["30 days"]
    switching = [k for k in PANEL_KEYS if rollup in QUERIES[k].sql]
    assert switching, f"no panel uses {rollup}"
    for key in switching:
        sql = expand(QUERIES[key].sql, time_from=time_from, time_to=time_to, interval=panel_interval(time_from, time_to),
                     variables=_variables(dashboard_db, key))
        columns, rows = run_panel_sql(dashboard_db, f"EXPLAIN ESTIMATE {sql}")
        read = {row[columns.index("table")]: row[columns.index("rows")] for row in rows}
        assert read.get(raw, 0) == 0, f"{key} reads {raw} over 30 days: {read}"
        assert read.get(f"{rollup}_store", 0) > 0, f"{key} does not read {rollup}: {read}"  # the view's table


def test_anomaly_rollup_holds_each_hours_highest_risk(dashboard_db: DashboardSeed) -> None:
    """anomaly_scores_hourly against the same figures computed from the scores in Python."""
    _, scores = run_panel_sql(dashboard_db, "SELECT machine_id, toStartOfHour(window_start), score, threshold, warming_up "
                                            "FROM anomaly_scores FINAL")
    expected: dict[tuple, float] = {}
    for machine, hour, score, threshold, warming_up in scores:
        if not warming_up and threshold and threshold > 0:
            expected[(machine, hour)] = max(expected.get((machine, hour), 0.0), score / threshold)
    _, rolled = run_panel_sql(dashboard_db, "SELECT machine_id, hour, max_risk FROM anomaly_scores_hourly "
                                            "WHERE max_risk IS NOT NULL")
    got = {(machine, hour): risk for machine, hour, risk in rolled}
    assert got.keys() == expected.keys() and len(got) > 0
    assert all(math.isclose(got[k], expected[k], rel_tol=1e-9) for k in got)
