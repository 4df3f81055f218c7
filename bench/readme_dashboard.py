"""The README block `dashboard-queries` (`bench.readme` renders it): how long the dashboards' queries take.

Kept out of bench/readme.py, which is long enough; the figures come from the `dashboard_queries` section of
bench/results/latest.json (`bench/dashboard_queries.py`).
"""

from __future__ import annotations

from bench.readme_format import Results, dec, missing, n, source

KEY = "dashboard_queries"


def _ms(x: float) -> str:
    return f"{dec(x, 1)} ms"


def _rows(figures: dict) -> str:
    estimate = figures.get("estimated_rows_read")
    return f"{n(figures['rows'])} | {'–' if estimate is None else n(estimate)}"


def _listed(slowest: list[dict]) -> str:
    return ", ".join(f"`{q['key']}` {_ms(q['median_ms'])}" for q in slowest)


def dashboard_queries(results: Results) -> str:
    s = results.get(KEY)
    if s is None:
        return missing(KEY, "python -m bench.run --only dashboard-queries")
    c, ingestion, ranges, alerts = s["config"], s["ingestion"], s["ranges"], s["alert_rules"]
    hour, day = ranges["1h"], ranges["24h"]
    top = hour["slowest"][0]
    v = s["variables"]
    lines = [
        f"Dashboard queries (`bench/dashboard_queries.py`): {c['minutes']:g} minutes of event time of "
        f"{n(c['machines'])} simulated machines, one reading per machine every {c['interval_ms'] / 1000:g} s "
        f"({n(ingestion['readings'])} readings; faults `all` on {dec(c['fault_rate'] * 100, 0)} % of the machines, the "
        f"first after {c['faults_after_s'] / 60:g} healthy minutes; duplicates, late, out-of-order and malformed "
        f"messages; {n(c['silent_machines'])} machines silent for the last {c['silent_for_s'] / 60:g} minutes, "
        f"{n(c.get('quiet_machines', 0))} quiet for {c.get('quiet_for_s', 0) / 60:g} minutes mid-run, clean readings "
        f"lost at {dec(c.get('lost_rate', 0) * 100, 1)} %; seed "
        f"{c['seed']}), produced to the embedded broker in {dec(ingestion['produce_seconds'], 1)} s and run through "
        "the live flow (`build_flow(tail=False)`, one worker, packaged rules and models) into embedded chDB in "
        f"{dec(ingestion['flow_seconds'], 1)} s ({n(ingestion['flow_readings_per_s'])} readings/s), rollups forced. "
        f"Each of the {len(hour['queries'])} dashboard queries (panels and template variables) is expanded as "
        "Grafana sends it (every site, line and machine type; on Machine detail the machine with the most "
        "incidents, on the other boards every machine) and run "
        f"{c['runs']} times through one client on the same machine; the time includes fetching the rows; "
        "estimated rows read are ClickHouse's `EXPLAIN ESTIMATE` (whole granules). The alert rules' queries run "
        "over their rules' own ranges.",
        "",
        f"- Last hour (ending {hour['time_to']}, the data ending {s['data_end']}; interval {hour['interval_s']:g} s): "
        f"slowest **`{top['key']}`, median {_ms(top['median_ms'])}** "
        f"(max {_ms(top['max_ms'])}); then {_listed(hour['slowest'][1:])}.",
        f"- Last 24 hours of the same data (interval {day['interval_s']:g} s; the fleet-wide panels read the hourly "
        f"rollups): slowest {_listed(day['slowest'])}.",
        f"- Alert rules: slowest {_listed(alerts['slowest'])}.",
        "",
        "| query | last hour: median / max | rows | est. rows read | last 24 h: median / max | rows | "
        "est. rows read |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, figures in hour["queries"].items():
        other = day["queries"].get(key)
        wide = (f"{_ms(other['median_ms'])} / {_ms(other['max_ms'])} | {_rows(other)}" if other else "– | – | –")
        lines.append(f"| `{key}` | {_ms(figures['median_ms'])} / {_ms(figures['max_ms'])} | {_rows(figures)} | "
                     f"{wide} |")
    for key, figures in alerts["queries"].items():
        lines.append(f"| `{key}` (rule range {figures['range_s'] / 60:g} min) | {_ms(figures['median_ms'])} / "
                     f"{_ms(figures['max_ms'])} | {_rows(figures)} | | | |")
    incidents = v["machine_incidents_in_1h"]
    lines += ["", f"Machine shown: `{v['machine_id']}` ({n(incidents)} incident{'' if incidents == 1 else 's'} in the "
              "hour)."]
    return "\n".join([*lines, "", source(results, KEY)])
