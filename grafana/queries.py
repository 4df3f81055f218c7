"""Every ClickHouse query of the dashboards and alert rules, and the PromQL of the flow-metrics panels.

`QUERIES` is the single source: the dashboard builders (grafana/boards), the alert rules (grafana/alerting.py),
the snapshot renderer and the tests that execute every query against a seeded database all read it.
Keys: `fleet.*`, `machine.*`, `incidents.*`, `dq.*` (pipeline health and data quality), `var.*` (template
variable values), `alert.*` (alert-rule conditions, one numeric `value` column, no template variables: Grafana
alerting has no dashboard).

SQL conventions:
- Macros of the ClickHouse plugin (pkg/macros/macros.go): `$__timeFilter(col)`, `$__timeInterval(col)`,
  `$__fromTime`, `$__toTime` (DateTime, whole seconds), `$__interval_s`. Template variables as
  `${name:singlequote}` (multi-value, All expands to every option).
- ReplacingMergeTree tables are read with FINAL where a duplicate would change the result (counts, sums,
  means, the current state). Pure max()/min() aggregates skip FINAL: a re-delivered row repeats its twin's
  values, so the extreme is the same, and FINAL would only add a merge-on-read.
- Long ranges: window statistics switch from `window_stats` (one row per machine and 10-s window) to the hourly
  rollup `window_stats_hourly` when the range exceeds RAW_MAX_SECONDS. Both branches of a UNION ALL carry
  the range condition; it is a constant once the macros are expanded, so ClickHouse drops the branch that is
  off (constant-false WHERE) without reading its table. Hourly buckets are at least an hour wide, so a rate or
  mean never divides an hour's rows by a shorter bucket.
- Fleet-wide risk panels switch likewise from `anomaly_scores` to its hourly rollup `anomaly_scores_hourly`
  (max score / threshold per machine and hour); the per-machine score panel reads `anomaly_scores` by the
  (machine_id, window_start) primary key.
- Incident panels filter on `opened_window_start` (event time of the opening detection, the table's partition
  key) so they line up with the window charts; durations use the wall-clock opened/acknowledged/resolved_at.
"""

from __future__ import annotations

from grafana.queries_ops import OPS_QUERIES, PROM_QUERIES
from grafana.sql_parts import (
    HOUR_BUCKET,
    HOUR_BUCKET_S,
    HOUR_FILTER,
    IN_SCOPE,
    LONG_RANGE,
    OPEN,
    SELECTED,
    SHORT_RANGE,
    PanelQuery,
    PromQuery,
    QuerySet,
)
from plantpulse.schema import SENSORS

__all__ = ["PROM_QUERIES", "QUERIES", "PanelQuery", "PromQuery"]


_core = QuerySet()
_add = _core.add


# --- template variables -------------------------------------------------------------------------------------
_add("var.site", "site", "table", ("site",), "SELECT DISTINCT site FROM machines FINAL ORDER BY site")
_add("var.line", "line", "table", ("line",), """
    SELECT DISTINCT line FROM machines FINAL
    WHERE site IN (${site:singlequote})
    ORDER BY line""")
_add("var.machine_type", "machine_type", "table", ("machine_type",), """
    SELECT DISTINCT machine_type FROM machines FINAL
    WHERE site IN (${site:singlequote}) AND line IN (${line:singlequote})
    ORDER BY machine_type""")
_add("var.machine_id", "machine_id", "table", ("machine_id",), f"""
    SELECT machine_id FROM machine_state FINAL
    WHERE {IN_SCOPE}
    ORDER BY machine_id""")

# --- Fleet now ----------------------------------------------------------------------------------------------
_add("fleet.machine_states", "Machines by state", "table", ("state", "machines"), f"""
    SELECT current AS state, count() AS machines
    FROM
    (
        SELECT if(machine_id IN (SELECT machine_id FROM incidents FINAL WHERE {OPEN}),
                  'in_incident', toString(state)) AS current
        FROM machine_state FINAL
        WHERE {IN_SCOPE}
    )
    GROUP BY state
    ORDER BY state""")
_add("fleet.open_incidents_by_severity", "Open incidents by severity", "table", ("severity", "incidents"), f"""
    SELECT severity, countIf({OPEN}) AS incidents
    FROM incidents FINAL
    WHERE {IN_SCOPE}
    GROUP BY severity
    ORDER BY severity""")
# A time-series frame pivoted to one field per line (plugin format 0) is what the heatmap panel draws as rows.
_add("fleet.risk_heatmap", "Anomaly risk by line (score / threshold)", "time_series", ("time", "line", "risk"), f"""
    SELECT time, line, max(risk) AS risk
    FROM
    (
        -- Each branch aggregates to (time, line) itself: far fewer rows cross the UNION than scores.
        SELECT $__timeInterval(s.window_start) AS time, m.line AS line, max(s.score / assumeNotNull(s.threshold)) AS risk
        FROM anomaly_scores AS s
        INNER JOIN (SELECT machine_id, line FROM machines FINAL) AS m ON m.machine_id = s.machine_id
        WHERE {SHORT_RANGE} AND $__timeFilter(s.window_start) AND s.threshold > 0 AND NOT s.warming_up AND s.{IN_SCOPE}
        GROUP BY time, line
        UNION ALL
        SELECT toStartOfInterval(h.hour, INTERVAL {HOUR_BUCKET_S} SECOND) AS time, m.line AS line,
               max(assumeNotNull(h.max_risk)) AS risk
        FROM anomaly_scores_hourly AS h
        INNER JOIN (SELECT machine_id, line FROM machines FINAL) AS m ON m.machine_id = h.machine_id
        WHERE {LONG_RANGE} AND h.hour >= toStartOfHour($__fromTime) AND h.hour <= $__toTime
          AND h.max_risk IS NOT NULL AND h.{IN_SCOPE}
        GROUP BY time, line
    )
    GROUP BY time, line
    ORDER BY time, line""")
_add("fleet.top_risk", "Top 10 machines by risk", "table", ("machine_id", "line", "risk", "open_incidents", "state"), f"""
    SELECT r.machine_id AS machine_id, m.line AS line, r.risk AS risk, i.open_incidents AS open_incidents,
           if(i.open_incidents > 0, 'in_incident', toString(st.state)) AS state
    FROM
    (
        SELECT machine_id, max(risk) AS risk
        FROM
        (
            SELECT machine_id, max(score / assumeNotNull(threshold)) AS risk
            FROM anomaly_scores
            WHERE {SHORT_RANGE} AND $__timeFilter(window_start) AND threshold > 0 AND NOT warming_up AND {IN_SCOPE}
            GROUP BY machine_id
            UNION ALL
            SELECT machine_id, max(assumeNotNull(max_risk)) AS risk
            FROM anomaly_scores_hourly
            WHERE {LONG_RANGE} AND {HOUR_FILTER} AND max_risk IS NOT NULL AND {IN_SCOPE}
            GROUP BY machine_id
        )
        GROUP BY machine_id
        ORDER BY risk DESC, machine_id
        LIMIT 10
    ) AS r
    INNER JOIN (SELECT machine_id, line FROM machines FINAL) AS m ON m.machine_id = r.machine_id
    LEFT JOIN (SELECT machine_id, count() AS open_incidents FROM incidents FINAL WHERE {OPEN} GROUP BY machine_id) AS i
        ON i.machine_id = r.machine_id
    LEFT JOIN (SELECT machine_id, state FROM machine_state FINAL) AS st ON st.machine_id = r.machine_id
    ORDER BY risk DESC, machine_id""")
_add("fleet.readings_rate", "Readings per second", "time_series", ("time", "readings_per_s"), f"""
    SELECT time, sum(readings) / any(bucket_s) AS readings_per_s
    FROM
    (
        SELECT $__timeInterval(window_start) AS time, readings, $__interval_s AS bucket_s
        FROM window_stats FINAL
        WHERE {SHORT_RANGE} AND $__timeFilter(window_start) AND {IN_SCOPE}
        UNION ALL
        SELECT {HOUR_BUCKET} AS time, readings, {HOUR_BUCKET_S} AS bucket_s
        FROM window_stats_hourly
        WHERE {LONG_RANGE} AND {HOUR_FILTER} AND {IN_SCOPE}
    )
    GROUP BY time
    ORDER BY time""")

# --- Machine detail -----------------------------------------------------------------------------------------
for _sensor in SENSORS:
    _add(f"machine.sensor.{_sensor}", f"{_sensor}: window mean with min-max band", "time_series",
         ("time", "mean", "min", "max"), f"""
    SELECT time, sum(part_mean * part_count) / nullIf(sum(part_count), 0) AS mean, min(part_min) AS min,
           max(part_max) AS max
    FROM
    (
        SELECT $__timeInterval(window_start) AS time, {_sensor}_mean AS part_mean, {_sensor}_count AS part_count,
               {_sensor}_min AS part_min, {_sensor}_max AS part_max
        FROM window_stats FINAL
        WHERE {SHORT_RANGE} AND $__timeFilter(window_start) AND {SELECTED}
        UNION ALL
        SELECT {HOUR_BUCKET} AS time, {_sensor}_avg AS part_mean, {_sensor}_count AS part_count,
               {_sensor}_min AS part_min, {_sensor}_max AS part_max
        FROM window_stats_hourly
        WHERE {LONG_RANGE} AND {HOUR_FILTER} AND {SELECTED}
    )
    GROUP BY time
    ORDER BY time""")
_add("machine.anomaly_score", "Anomaly score vs threshold", "time_series", ("time", "score", "threshold"), f"""
    SELECT $__timeInterval(window_start) AS time, max(score) AS score, max(threshold) AS threshold
    FROM anomaly_scores
    WHERE $__timeFilter(window_start) AND {SELECTED}
    GROUP BY time
    ORDER BY time""")
# Annotation: an incident spans its first detection to its last one once resolved, or to the range's end while
# open (event time, like the charts). Grafana splits `tags` on commas.
_add("machine.incident_spans", "Incidents", "table", ("time", "timeEnd", "text", "tags"), f"""
    SELECT first_seen_ts AS time,
           if(resolved_at IS NULL, greatest(last_seen_ts, toDateTime64($__toTime, 3, 'UTC')), last_seen_ts) AS timeEnd,
           concat(severity, ' ', rule_id, ' (', status, '): ', message) AS text,
           concat(kind, ',', severity, ',', rule_id) AS tags
    FROM incidents FINAL
    WHERE {SELECTED} AND first_seen_ts <= $__toTime AND (resolved_at IS NULL OR last_seen_ts >= $__fromTime)
    ORDER BY time""")
_add("machine.state", "Machine now", "table",
     ("machine_id", "machine_type", "site", "line", "state", "status", "last_ts", "last_seq", "seq_resets",
      "open_incidents"), f"""
    SELECT s.machine_id AS machine_id, s.machine_type AS machine_type, m.site AS site, m.line AS line,
           if(i.open_incidents > 0, 'in_incident', toString(s.state)) AS state, s.status AS status,
           s.last_ts AS last_ts, s.last_seq AS last_seq, s.seq_resets AS seq_resets, i.open_incidents AS open_incidents
    FROM machine_state AS s FINAL
    LEFT JOIN (SELECT machine_id, site, line FROM machines FINAL) AS m ON m.machine_id = s.machine_id
    LEFT JOIN (SELECT machine_id, count() AS open_incidents FROM incidents FINAL WHERE {OPEN} GROUP BY machine_id) AS i
        ON i.machine_id = s.machine_id
    WHERE s.{SELECTED}""")
# The newest windows only: the last hour of the range bounds the FINAL read whatever the range.
_add("machine.last_readings", "Last readings (newest windows)", "table",
     ("time", "readings", *(f"{s}_last" for s in SENSORS), "status"), f"""
    SELECT window_end AS time, readings, {", ".join(f"{s}_last" for s in SENSORS)}, status_last AS status
    FROM window_stats FINAL
    WHERE {SELECTED} AND window_start >= greatest($__fromTime, $__toTime - INTERVAL 1 HOUR)
      AND window_start <= $__toTime
    ORDER BY window_start DESC
    LIMIT 20""")


def _merge(*parts: dict[str, PanelQuery]) -> dict[str, PanelQuery]:
    merged: dict[str, PanelQuery] = {}
    for part in parts:
        for key, query in part.items():
            if key in merged:
                raise ValueError(f"grafana.queries: key {key!r} defined twice")
            merged[key] = query
    return merged


QUERIES: dict[str, PanelQuery] = _merge(_core.queries, OPS_QUERIES)
