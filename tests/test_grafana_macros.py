"""grafana.macros: a panel's SQL expanded as Grafana and the official ClickHouse plugin expand it.

The plugin cases are ported from upstream, with the expected strings written as upstream states them:
- grafana/clickhouse-datasource `pkg/macros/macros_test.go` (commit 897b9dc25ff81af886e2edb424b176b7158522a6,
  the sqlds/v4 version matching `pkg/macros/macros.go` at 4304e52e020c0e47ea0f6e9e2abf65c83aee05ab);
- grafana/grafana-plugin-sdk-go `data/sqlutil/macros_test.go` (argument parsing and the default macros);
- grafana/clickhouse-datasource `src/data/CHDatasource.test.ts` ("Conditional All").
The template-variable cases are written here from Grafana's documented format rules
(https://grafana.com/docs/grafana/latest/dashboards/variables/variable-syntax/), and the end-to-end cases run
the expanded SQL on chDB and compare with rows selected in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from grafana.macros import _apply_conditional_all, expand, expand_alert_query


def _parse(text: str) -> datetime:
    """Go's time.Parse("2006-01-02T15:04:05.000Z", text)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


FROM, TO = _parse("2014-11-12T11:45:26.371Z"), _parse("2015-11-12T11:45:26.371Z")
ANY_INTERVAL = timedelta(seconds=1)


def _expand(sql: str, time_from: datetime = FROM, time_to: datetime = TO, interval: timedelta = ANY_INTERVAL,
            **variables: Any) -> str:
    return expand(sql, time_from=time_from, time_to=time_to, interval=interval, variables=variables)


# --- pkg/macros/macros_test.go ----------------------------------------------------------------------------


def test_time_to_date() -> None:
    assert "toDate('2014-11-12')" in _expand("$__dateFilter(d)")


def test_time_to_datetime_and_datetime64() -> None:
    second = datetime.fromtimestamp(1708430068, UTC)  # time.Unix(1708430068, 0)
    assert _expand("$__toTime", FROM, second) == "toDateTime(1708430068)"
    milli = second + timedelta(milliseconds=123)  # time.UnixMilli(1708430068123)
    assert _expand("$__toTime_ms", FROM, milli) == "fromUnixTimestamp64Milli(1708430068123)"


@pytest.mark.parametrize(("sql", "want"), [
    ("select foo from foo where bar > $__fromTime", "select foo from foo where bar > toDateTime(1415792726)"),
    ("select foo from foo where bar > $__toTime", "select foo from foo where bar > toDateTime(1447328726)"),
    ("select foo from foo where bar > $__fromTime_ms",
     "select foo from foo where bar > fromUnixTimestamp64Milli(1415792726371)"),
    ("select foo from foo where bar > $__toTime_ms",
     "select foo from foo where bar > fromUnixTimestamp64Milli(1447328726371)"),
])
def test_from_and_to_time(sql: str, want: str) -> None:
    assert _expand(sql) == want


def test_date_filter() -> None:
    assert _expand("$__dateFilter(dateCol)") == "dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')"


@pytest.mark.parametrize("name", ["dateTimeFilter", "dt"])
def test_date_time_filter(name: str) -> None:
    assert _expand(f"${'__'}{name}(dateCol, timeCol)") == (
        "(dateCol >= toDate('2014-11-12') AND dateCol <= toDate('2015-11-12')) AND "
        "(timeCol >= toDateTime(1415792726) AND timeCol <= toDateTime(1447328726))")


def test_time_interval_and_interval_seconds() -> None:
    twenty = timedelta(seconds=20)  # time.Duration(20000000000)
    assert _expand("$__timeInterval(col)", interval=twenty) == "toStartOfInterval(toDateTime(col), INTERVAL 20 second)"
    assert _expand("$__timeInterval_ms(col)", interval=twenty) == (
        "toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond)")
    assert _expand("select toStartOfInterval(col, INTERVAL $__interval_s second) AS time from foo", interval=twenty) == (
        "select toStartOfInterval(col, INTERVAL 20 second) AS time from foo")


def test_sub_second_interval_is_at_least_one_unit() -> None:
    # math.Max(interval, 1) then int(): 1.5 s is 1 second; 0.5 s is still 1 second.
    assert _expand("$__interval_s", interval=timedelta(milliseconds=1500)) == "1"
    assert _expand("$__interval_s", interval=timedelta(milliseconds=500)) == "1"
    assert _expand("$__timeInterval_ms(c)", interval=timedelta(milliseconds=500)) == (
        "toStartOfInterval(toDateTime64(c, 3), INTERVAL 500 millisecond)")


INTERPOLATE_FROM, INTERPOLATE_TO = _parse("2014-11-12T11:45:26.123Z"), _parse("2015-11-12T11:45:26.456Z")


@pytest.mark.parametrize(("sql", "want"), [
    ("select * from foo where $__timeFilter(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= "
     "toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) AND cast(sth as timestamp) <= "
     "toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND cast(sth as timestamp) "
     "<= fromUnixTimestamp64Milli(1447328726456)"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) AND cast(sth as timestamp) "
     "<= fromUnixTimestamp64Milli(1447328726456)"),
    ("select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) and date <= toDateTime(1447328726) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime ) and ( date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) ) and ( date <= toDateTime(1447328726) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms and date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) and date <= "
     "fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and ( date <= "
     "fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
])
def test_interpolate(sql: str, want: str) -> None:
    assert _expand(sql, INTERPOLATE_FROM, INTERPOLATE_TO) == want


# --- data/sqlutil/macros_test.go: argument parsing and the defaults the plugin keeps --------------------------

ZERO = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time.Time


@pytest.mark.parametrize(("sql", "want"), [
    ("select * from foo where $__timeTo(time)", "select * from foo where time <= '0001-01-01T00:00:00Z'"),
    ("select * from foo where $__timeFrom(time)", "select * from foo where time >= '0001-01-01T00:00:00Z'"),
    ("select * from foo where $__timeFrom(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= '0001-01-01T00:00:00Z'"),
])
def test_sqlutil_default_time_from_and_to(sql: str, want: str) -> None:
    assert _expand(sql, ZERO, ZERO) == want


def test_arguments_follow_the_name_immediately() -> None:
    # "don't consume args after a space" / "after other non-paren characters" (sqlds issue 82).
    assert _expand("select * from foo where $__fromTime > $__toTime (x)") == (
        "select * from foo where toDateTime(1415792726) > toDateTime(1447328726) (x)")
    assert _expand("select $__interval_s*(a + b)", interval=timedelta(seconds=20)) == "select 20*(a + b)"


def test_nested_brackets_stay_in_one_argument_and_top_level_commas_split() -> None:
    assert _expand("$__timeFilter(toDateTime(ts, 'UTC'))") == (
        "toDateTime(ts, 'UTC') >= toDateTime(1415792726) AND toDateTime(ts, 'UTC') <= toDateTime(1447328726)")
    with pytest.raises(ValueError, match=r"\$__timeFilter: .*expected 1 argument, received 2"):
        _expand("$__timeFilter(a, b)")


@pytest.mark.parametrize("sql", [
    "select * from foo where $__timeFilter(whoops",
    "select * from foo where $__timeFilter(FUNC(foo, bar)",
    "select * from foo where $__timeFilter(FUNC(foo)) > $__timeTo(uhoh",
])
def test_missing_close_bracket_is_an_error(sql: str) -> None:
    with pytest.raises(ValueError, match="missing close bracket"):
        _expand(sql)


def test_a_longer_name_is_not_matched_by_its_prefix() -> None:
    # "does not return matches for macro name which is substring": $__timeFilterEpoch is not $__timeFilter.
    with pytest.raises(ValueError, match=r"unknown macro .*\$__timeFilterEpoch"):
        _expand("$__timeFilterEpoch(time_column)")


@pytest.mark.parametrize("macro", ["$__timeGroup(t, hour)", "$__table", "$__column", "$__nope(x)", "$__range_s"])
def test_macros_that_would_not_give_clickhouse_sql_raise(macro: str) -> None:
    with pytest.raises(ValueError, match=r"\$__" + macro[3:].split("(")[0]):
        _expand(f"select 1 where {macro}")


# --- src/data/CHDatasource.test.ts "Conditional All" (the frontend step alone) -----------------------------


def test_conditional_all_upstream_cases() -> None:
    raw = "select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal);"
    assert _apply_conditional_all(raw, {"fieldVal": "$__all"}, ()) == "select stuff from table where 1=1;"
    assert _apply_conditional_all(raw, {"fieldVal": "'val1', 'val2'"}, ()) == (
        "select stuff from table where fieldVal in ($fieldVal);")
    both = ("select stuff from table where $__conditionalAll(fieldVal in ($fieldVal), $fieldVal) and "
            "$__conditionalAll(fieldVal in ($fieldVal2), $fieldVal2);")
    assert _apply_conditional_all(both, {"fieldVal": "'val1', 'val2'", "fieldVal2": "$__all"}, ()) == (
        "select stuff from table where fieldVal in ($fieldVal) and 1=1;")


def test_conditional_all_through_expand() -> None:
    sql = "WHERE $__conditionalAll(site IN (${site:singlequote}), $site) AND $__conditionalAll(line = $line, ${line})"
    variables = {"site": ["north", "south"], "line": "L1"}
    common: dict[str, Any] = {"time_from": FROM, "time_to": TO, "interval": ANY_INTERVAL, "variables": variables}
    assert expand(sql, **common) == "WHERE site IN ('north','south') AND line = L1"
    assert expand(sql, **common, all_selected={"site"}) == "WHERE 1=1 AND line = L1"
    assert expand(sql, **common, all_selected={"site", "line"}) == "WHERE 1=1 AND 1=1"
    # An empty multi-selection stringifies to '' in JS, which the plugin treats like All.
    assert _expand("$__conditionalAll(a IN ($m), $m)", m=[]) == "1=1"
    # The plugin only recognises $var and ${var} as the second argument: with a format the condition stays.
    assert expand("$__conditionalAll(x, ${site:csv})", **common, all_selected={"site"}) == "x"
    with pytest.raises(ValueError, match="needs 2 arguments"):
        _expand("$__conditionalAll(bar in ($bar))", bar="b")


# --- Grafana template variables ------------------------------------------------------------------------------

SERVERS = ["test1", "it's"]


@pytest.mark.parametrize(("sql", "want"), [
    ("${servers:singlequote}", "'test1','it\\'s'"),
    ("${servers:sqlstring}", "'test1','it''s'"),
    ("${servers:doublequote}", '"test1","it\'s"'),
    ("${servers:csv}", "test1,it's"),
    ("${servers:raw}", "test1,it's"),
    ("${servers:pipe}", "test1|it's"),
    ("${servers:json}", '["test1","it\'s"]'),
    ("$servers", "'test1','it's'"),  # the plugin's default: quoted and joined, nothing escaped
    ("${servers}", "'test1','it's'"),
    ("[[servers]]", "'test1','it's'"),
    ("[[servers:csv]]", "test1,it's"),
])
def test_multi_value_formats(sql: str, want: str) -> None:
    assert _expand(sql, servers=SERVERS) == want


@pytest.mark.parametrize(("sql", "want"), [
    ("$one", "O'Hare"),
    ("${one}", "O'Hare"),
    ("${one:raw}", "O'Hare"),
    ("${one:csv}", "O'Hare"),
    ("${one:singlequote}", "'O\\'Hare'"),
    ("${one:sqlstring}", "'O''Hare'"),
    ("${one:doublequote}", '"O\'Hare"'),
    ("${one:json}", '"O\'Hare"'),
    ("x$one-$one", "xO'Hare-O'Hare"),
])
def test_single_value_formats(sql: str, want: str) -> None:
    assert _expand(sql, one="O'Hare") == want


def test_a_multi_variable_with_one_value_is_still_a_list() -> None:
    assert _expand("$m", m=["a"]) == "'a'"
    assert _expand("${m:singlequote}", m=[]) == ""


@pytest.mark.parametrize(("interval", "text", "ms"), [
    (timedelta(seconds=20), "20s", "20000"),
    (timedelta(seconds=90), "1m", "90000"),
    (timedelta(hours=2), "2h", "7200000"),
    (timedelta(days=1, hours=1), "1d", "90000000"),
    (timedelta(milliseconds=500), "500ms", "500"),
])
def test_interval_built_ins(interval: timedelta, text: str, ms: str) -> None:
    assert _expand("$__interval|$__interval_ms|${__interval}", interval=interval) == f"{text}|{ms}|{text}"


def test_from_and_to_built_ins() -> None:
    assert _expand("$__from $__to") == "1415792726371 1447328726371"
    assert _expand("${__from:date} ${__to:date:iso}") == "2014-11-12T11:45:26.371Z 2015-11-12T11:45:26.371Z"
    assert _expand("${__from:date:seconds} ${__from:date:ms}") == "1415792726 1415792726371"
    half = _parse("2014-11-12T11:45:26.500Z")
    assert _expand("${__from:date:seconds}", half) == "1415792727"  # Math.round: a half goes up


def test_time_zones_are_normalised_to_utc() -> None:
    # 11:45 UTC is 23:45 the day before at UTC-12: toDate must still name the UTC day.
    west = FROM.astimezone(timezone(timedelta(hours=-12)))
    assert west.date() == date(2014, 11, 11)
    assert _expand("$__fromTime $__dateFilter(d)", west) == _expand("$__fromTime $__dateFilter(d)")


@pytest.mark.parametrize(("sql", "variables", "match"), [
    ("$site", {}, "undefined template variable 'site'"),
    ("$site_x", {"site": "a"}, "undefined template variable 'site_x'"),  # \w+ is greedy, as in Grafana
    ("${site:glob}", {"site": "a"}, "unsupported variable format 'glob'"),
    ("${site:singlequote:x}", {"site": "a"}, "unsupported variable format"),
    ("${site.name}", {"site": "a"}, "field paths"),
    ("${__from:date:YYYY}", {}, "date formats"),
])
def test_variable_errors(sql: str, variables: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _expand(sql, **variables)


def test_bad_time_range_and_interval() -> None:
    with pytest.raises(ValueError, match="naive"):
        _expand("1", datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="after"):
        _expand("1", TO, FROM)
    with pytest.raises(ValueError, match="interval"):
        _expand("1", interval=timedelta(0))


def test_alert_queries_get_backend_macros_only() -> None:
    sql = "SELECT $__timeInterval(ts), $__interval, $__interval_ms FROM t WHERE $__timeFilter(ts)"
    assert expand_alert_query(sql, time_from=FROM, time_to=TO, interval=timedelta(minutes=5)) == (
        "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 300 second), 5m, 300000 FROM t "
        "WHERE ts >= toDateTime(1415792726) AND ts <= toDateTime(1447328726)")
    with pytest.raises(ValueError, match=r"\$site"):
        expand_alert_query("SELECT 1 WHERE s = ${site}", time_from=FROM, time_to=TO, interval=ANY_INTERVAL)


# --- end to end on chDB --------------------------------------------------------------------------------------

DB = "h2_grafana_macros"
BASE = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(chdb_dir: Path) -> Iterator[Any]:
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    client.command(f"DROP DATABASE IF EXISTS {DB}")
    client.command(f"CREATE DATABASE {DB}")
    client.command(f"CREATE TABLE {DB}.t (ts DateTime64(3, 'UTC'), day Date, site String, v UInt32) "
                   "ENGINE = MergeTree ORDER BY ts")
    # Rows every 7.25 s over an hour, so they straddle whole seconds; site names with a quote and a backslash
    # (ClickHouse keeps an unknown escape like \s as is, so Grafana's quoting is enough for these).
    sites = ["north", "o'hare", "south", "back\\slash"]
    rows = [(BASE + timedelta(milliseconds=7250 * i), (BASE + timedelta(milliseconds=7250 * i)).date(), sites[i % 4], i)
            for i in range(500)]
    client.insert(f"{DB}.t", rows, column_names=["ts", "day", "site", "v"])
    yield client, rows
    client.command(f"DROP DATABASE IF EXISTS {DB}")
    client.close()


def _values(client: Any, sql: str) -> list[int]:
    return [row[0] for row in client.query(sql).result_rows]


@pytest.mark.parametrize(("start", "end"), [
    (BASE + timedelta(minutes=3, milliseconds=250), BASE + timedelta(minutes=17, milliseconds=999)),
    (BASE + timedelta(seconds=7, milliseconds=250), BASE + timedelta(seconds=14, milliseconds=500)),  # exact row times
    (BASE - timedelta(days=1), BASE + timedelta(days=1)),
])
def test_time_filters_select_exactly_the_rows_in_range(engine: Any, start: datetime, end: datetime) -> None:
    client, rows = engine
    sql = f"SELECT v FROM {DB}.t WHERE $__timeFilter(ts) ORDER BY v"
    got = _values(client, _expand(sql, start, end))
    # Whole seconds: the plugin compares with toDateTime(unix seconds), dropping the milliseconds of both ends.
    low, high = start.replace(microsecond=0), end.replace(microsecond=0)
    assert got == [v for ts, _, _, v in rows if low <= ts <= high]
    got_ms = _values(client, _expand(sql.replace("$__timeFilter", "$__timeFilter_ms"), start, end))
    assert got_ms == [v for ts, _, _, v in rows if start <= ts <= end]
    assert got, "the range should select rows"


def test_date_filter_and_time_interval_buckets(engine: Any) -> None:
    client, rows = engine
    start, end = BASE + timedelta(minutes=5), BASE + timedelta(minutes=25)
    sql = (f"SELECT toUnixTimestamp($__timeInterval(ts)) AS bucket, count() FROM {DB}.t "
           f"WHERE $__timeFilter(ts) AND $__dateFilter(day) GROUP BY bucket ORDER BY bucket")
    got = client.query(_expand(sql, start, end, interval=timedelta(minutes=1))).result_rows
    counts: dict[int, int] = {}
    for ts, day, _, _ in rows:
        if start <= ts <= end and start.date() <= day <= end.date():
            bucket = int(ts.replace(second=0, microsecond=0).timestamp())
            counts[bucket] = counts.get(bucket, 0) + 1
    assert [tuple(row) for row in got] == sorted(counts.items())
    assert len(counts) == 20  # minutes 5..24; no row falls on 25:00.000 itself


@pytest.mark.parametrize("fmt", ["singlequote", "sqlstring"])
def test_quoted_variables_match_the_exact_values(engine: Any, fmt: str) -> None:
    client, rows = engine
    chosen = ["o'hare", "back\\slash"]
    sql = f"SELECT v FROM {DB}.t WHERE site IN (${{site:{fmt}}}) AND $__timeFilter(ts) ORDER BY v"
    got = _values(client, _expand(sql, BASE, BASE + timedelta(hours=2), site=chosen))
    assert got == [v for _, _, site, v in rows if site in chosen]
