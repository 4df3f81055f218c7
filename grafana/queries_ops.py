"""The Incidents and Pipeline-health boards' queries, the alert rules' SQL and the flow-metrics PromQL.

Part of grafana.queries (which merges OPS_QUERIES into QUERIES and re-exports PROM_QUERIES); the SQL
conventions are described there.
"""

from __future__ import annotations

from grafana.sql_parts import (
                  DEAD_LETTER,
                  HOUR_BUCKET,
                  HOUR_FILTER,
                  IN_SCOPE,
                  OPEN,
                  SELECTED,
                  PanelQuery,
                  PromQuery,
                  QuerySet,
)

_ops = QuerySet()
_add = _ops.add

# Incident panels: the selected machines' incidents whose opening window lies in the range, plus every one still
# open (an operator wants what is open now, whenever it started).
_INCIDENTS = f"{IN_SCOPE} AND {SELECTED} AND ($__timeFilter(opened_window_start) OR {OPEN})"
_STATUS_COUNTS = ("countIf(status = 'open') AS open, countIf(status = 'acknowledged') AS acknowledged, "
                  "countIf(status = 'resolved') AS resolved")

# --- Incidents ----------------------------------------------------------------------------------------------
_add("incidents.by_severity", "Open / acknowledged / resolved by severity", "table",
     ("severity", "open", "acknowledged", "resolved"), f"""
    SELECT severity, {_STATUS_COUNTS}
    FROM incidents FINAL
    WHERE {_INCIDENTS}
    GROUP BY severity
    ORDER BY severity""")
_add("incidents.by_rule", "Open / acknowledged / resolved by rule", "table",
     ("rule_id", "kind", "open", "acknowledged", "resolved"), f"""
    SELECT rule_id, kind, {_STATUS_COUNTS}
    FROM incidents FINAL
    WHERE {_INCIDENTS}
    GROUP BY rule_id, kind
    ORDER BY open + acknowledged + resolved DESC, rule_id""")
_add("incidents.response_times", "Time to acknowledge and to resolve, per rule", "table",
     ("rule_id", "incidents", "median_to_ack_s", "p90_to_ack_s", "median_to_resolve_s", "p90_to_resolve_s"), f"""
    SELECT rule_id, count() AS incidents,
           quantile(0.5)(dateDiff('second', opened_at, acknowledged_at)) AS median_to_ack_s,
           quantile(0.9)(dateDiff('second', opened_at, acknowledged_at)) AS p90_to_ack_s,
           quantile(0.5)(dateDiff('second', opened_at, resolved_at)) AS median_to_resolve_s,
           quantile(0.9)(dateDiff('second', opened_at, resolved_at)) AS p90_to_resolve_s
    FROM incidents FINAL
    WHERE {_INCIDENTS}
    GROUP BY rule_id
    ORDER BY incidents DESC, rule_id""")
_add("incidents.response_trend", "Median time to acknowledge / resolve", "time_series",
     ("time", "median_to_ack_s", "median_to_resolve_s"), f"""
    SELECT $__timeInterval(opened_window_start) AS time,
           quantile(0.5)(dateDiff('second', opened_at, acknowledged_at)) AS median_to_ack_s,
           quantile(0.5)(dateDiff('second', opened_at, resolved_at)) AS median_to_resolve_s
    FROM incidents FINAL
    WHERE $__timeFilter(opened_window_start) AND {IN_SCOPE} AND {SELECTED}
    GROUP BY time
    ORDER BY time""")
_add("incidents.noisiest_machines", "Noisiest machines", "table",
     ("machine_id", "machine_type", "incidents", "detections", "open"), f"""
    SELECT machine_id, any(machine_type) AS machine_type, count() AS incidents, sum(detections) AS detections,
           countIf({OPEN}) AS open
    FROM incidents FINAL
    WHERE {_INCIDENTS}
    GROUP BY machine_id
    ORDER BY incidents DESC, detections DESC, machine_id
    LIMIT 10""")
_add("incidents.noisiest_rules", "Noisiest rules", "table", ("rule_id", "kind", "incidents", "machines", "detections"), f"""
    SELECT rule_id, any(kind) AS kind, count() AS incidents, uniqExact(machine_id) AS machines,
           sum(detections) AS detections
    FROM incidents FINAL
    WHERE {_INCIDENTS}
    GROUP BY rule_id
    ORDER BY incidents DESC, detections DESC, rule_id
    LIMIT 10""")
_add("incidents.open_list", "Open incidents", "table",
     ("incident_id", "machine_id", "rule_id", "severity", "status", "opened_at", "acknowledged_by", "detections",
      "peak_value", "message"), f"""
    SELECT incident_id, machine_id, rule_id, severity, status, opened_at, acknowledged_by, detections, peak_value, message
    FROM incidents FINAL
    WHERE {OPEN} AND {IN_SCOPE} AND {SELECTED}
    ORDER BY (severity = 'critical') DESC, opened_at""")

# --- Pipeline health and data quality -----------------------------------------------------------------------
# data_quality has one row per machine and hour (a view over a store refreshed like the hourly rollup), so these
# panels read at most machines x hours rows whatever the range. completeness = (readings + late) / expected.
# Columns are qualified (q.) because the output aliases reuse their names (see connectors/sql/002_hourly_rollup.sql).
# Completeness over several rows is capped at 1 like each row's: a late reading counted in a later hour than the
# one that expected it could otherwise push a sum over 1.
_DQ = f"{HOUR_FILTER} AND q.{IN_SCOPE} AND q.{SELECTED}"
_COMPLETENESS = "least(1., sum(q.readings + q.late) / nullIf(sum(q.expected), 0))"
_add("dq.summary", "Data quality over the range", "table",
     ("completeness", "readings", "late", "expected", "duplicates", "dead_letters", "seq_resets"), f"""
    SELECT {_COMPLETENESS} AS completeness, sum(q.readings) AS readings, sum(q.late) AS late,
           sum(q.expected) AS expected, sum(q.duplicates) AS duplicates, sum(q.dead_letters) AS dead_letters,
           sum(q.seq_resets) AS seq_resets
    FROM data_quality AS q
    WHERE {_DQ}""")
_add("dq.completeness_trend", "Completeness (received / expected), per hour", "time_series",
     ("time", "completeness"), f"""
    SELECT {HOUR_BUCKET} AS time, {_COMPLETENESS} AS completeness
    FROM data_quality AS q
    WHERE {_DQ}
    GROUP BY time
    ORDER BY time""")
_add("dq.completeness_by_machine", "Completeness per machine and hour (worst first)", "table",
     ("hour", "machine_id", "machine_type", "readings", "late", "expected", "completeness"), f"""
    SELECT hour, machine_id, machine_type, readings, late, expected, completeness
    FROM data_quality AS q
    WHERE {_DQ}
    ORDER BY completeness, hour DESC, machine_id
    LIMIT 500""")
_add("dq.below_99", "Machines below 99 % completeness", "table",
     ("machine_id", "machine_type", "readings", "late", "expected", "missing", "completeness", "dead_letters",
      "duplicates", "seq_resets"), f"""
    SELECT machine_id, any(q.machine_type) AS machine_type, sum(q.readings) AS readings, sum(q.late) AS late,
           sum(q.expected) AS expected, greatest(toInt64(sum(q.expected)) - toInt64(sum(q.readings + q.late)), 0) AS missing,
           {_COMPLETENESS} AS completeness, sum(q.dead_letters) AS dead_letters, sum(q.duplicates) AS duplicates,
           sum(q.seq_resets) AS seq_resets
    FROM data_quality AS q
    WHERE {_DQ}
    GROUP BY machine_id
    HAVING completeness < 0.99
    ORDER BY completeness, machine_id""")
# reading_issues holds only the messages that were not accepted (a small share of the stream). Dead letters are
# not filtered by machine: an unparseable message has none (machine_id '').
_add("dq.dead_letters_by_reason", "Dead letters by reason", "time_series", ("time", "reason", "messages"), f"""
    SELECT $__timeInterval(detected_at) AS time, reason, count() AS messages
    FROM reading_issues FINAL
    WHERE $__timeFilter(detected_at) AND {DEAD_LETTER}
    GROUP BY time, reason
    ORDER BY time, reason""")
_add("dq.dead_letter_totals", "Dead letters over the range", "table", ("reason", "messages"), f"""
    SELECT reason, count() AS messages
    FROM reading_issues FINAL
    WHERE $__timeFilter(detected_at) AND {DEAD_LETTER}
    GROUP BY reason
    ORDER BY messages DESC, reason""")
_add("dq.duplicates_late", "Duplicates, late events, sequence resets", "time_series",
     ("time", "duplicates", "late", "seq_resets"), f"""
    SELECT $__timeInterval(detected_at) AS time, countIf(reason = 'duplicate') AS duplicates,
           countIf(reason = 'late') AS late, countIf(reason = 'seq_reset') AS seq_resets
    FROM reading_issues FINAL
    WHERE $__timeFilter(detected_at) AND reason IN ('duplicate', 'late', 'seq_reset') AND {IN_SCOPE} AND {SELECTED}
    GROUP BY time
    ORDER BY time""")

# --- Alert rules (one row, one numeric `value`; the rule's relative time range feeds the macros) -------------
_add("alert.open_critical_incidents", "Open critical incidents", "table", ("value",), f"""
    SELECT toFloat64(count()) AS value
    FROM incidents FINAL
    WHERE severity = 'critical' AND {OPEN}""")
# Seconds since the newest window ended. No window in the range gives max() = 1970 and so a huge lag: a stopped
# pipeline (or a silent fleet) fires the rule instead of leaving it without data.
_add("alert.pipeline_lag", "Pipeline lag (s since the newest window)", "table", ("value",), """
    SELECT toFloat64(dateDiff('second', max(window_end), now64(3))) AS value
    FROM window_stats
    WHERE $__timeFilter(window_start)""")
# Received = accepted readings + every not-accepted message; seq_reset rows are accepted readings and excluded.
_add("alert.dead_letter_ratio", "Dead-letter ratio", "table", ("value",), f"""
    SELECT if(received = 0, 0., dead_letters / received) AS value
    FROM
    (
        SELECT countIf({DEAD_LETTER}) AS dead_letters,
               countIf(reason != 'seq_reset')
                   + (SELECT sum(readings) FROM window_stats FINAL WHERE $__timeFilter(window_start)) AS received
        FROM reading_issues FINAL
        WHERE $__timeFilter(detected_at)
    )""")

OPS_QUERIES: dict[str, PanelQuery] = _ops.queries

# --- Flow metrics (Prometheus) ------------------------------------------------------------------------------
PROM_QUERIES: dict[str, PromQuery] = {
    q.key: q
    for q in (
        PromQuery("prom.readings_received", "Readings in", "sum(rate(plantpulse_readings_received_total[$__rate_interval]))",
                  "received", ("plantpulse_readings_received_total",)),
        PromQuery("prom.readings_accepted", "Readings accepted",
                  "sum(rate(plantpulse_readings_accepted_total[$__rate_interval]))", "accepted",
                  ("plantpulse_readings_accepted_total",)),
        PromQuery("prom.consumer_lag", "Consumer lag per partition",
                  "sum by (topic, partition) (plantpulse_kafka_lag)", "{{topic}}/{{partition}}",
                  ("plantpulse_kafka_lag",)),
        PromQuery("prom.sink_retries", "Sink retries",
                  "sum by (sink) (rate(plantpulse_sink_retries_total[$__rate_interval]))", "{{sink}}",
                  ("plantpulse_sink_retries_total",)),
        PromQuery("prom.event_time_lag", "Event-time lag", "max(plantpulse_event_time_lag_seconds)", "event-time lag",
                  ("plantpulse_event_time_lag_seconds",)),
    )
}
