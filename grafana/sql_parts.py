"""Shared pieces of the dashboard SQL: the query records, the range switch, the template-variable filters.

See grafana/queries.py for the conventions; the queries themselves are in queries.py and queries_ops.py.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class PanelQuery:
    key: str  # stable id, e.g. "fleet.machine_states"
    title: str
    sql: str  # ClickHouse SQL with plugin macros and Grafana template variables
    format: str  # "table" | "time_series" | "logs" (grafana.dataquery.FORMATS)
    columns: tuple[str, ...]  # expected result column names, in order


@dataclass(frozen=True)
class PromQuery:
    key: str
    title: str
    expr: str  # PromQL; $__rate_interval is Grafana's
    legend: str
    metrics: tuple[str, ...]  # metric names the expression reads (a test checks the flow exposes them)


RAW_MAX_SECONDS = 6 * 3600
SHORT_RANGE = f"dateDiff('second', $__fromTime, $__toTime) <= {RAW_MAX_SECONDS}"
LONG_RANGE = f"dateDiff('second', $__fromTime, $__toTime) > {RAW_MAX_SECONDS}"
HOUR_BUCKET_S = "greatest($__interval_s, 3600)"
HOUR_BUCKET = f"toStartOfInterval(hour, INTERVAL {HOUR_BUCKET_S} SECOND)"
HOUR_FILTER = "hour >= toStartOfHour($__fromTime) AND hour <= $__toTime"  # hours overlapping the range

# The contract's filter idiom: machines of the selected sites, lines and types.
IN_SCOPE = (
    "machine_id IN (SELECT machine_id FROM machines FINAL WHERE site IN (${site:singlequote}) "
    "AND line IN (${line:singlequote}) AND machine_type IN (${machine_type:singlequote}))"
)
SELECTED = "machine_id IN (${machine_id:singlequote})"
OPEN = "status != 'resolved'"
DEAD_LETTER = "reason NOT IN ('duplicate', 'late', 'seq_reset')"  # reading_issues rows that are dead letters



class QuerySet:
    """An ordered, duplicate-free collection of PanelQuery, filled by `add`."""

    def __init__(self) -> None:
        self.queries: dict[str, PanelQuery] = {}

    def add(self, key: str, title: str, fmt: str, columns: tuple[str, ...], sql: str) -> None:
        if key in self.queries:
            raise ValueError(f"grafana queries: key {key!r} defined twice")
        self.queries[key] = PanelQuery(key, title, textwrap.dedent(sql).strip(), fmt, columns)
