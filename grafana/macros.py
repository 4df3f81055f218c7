"""Expand a panel's SQL the way Grafana and the official ClickHouse plugin do, so tests can run it.

A ClickHouse panel query goes through three rewrites before ClickHouse sees it; `expand` replays them in
the same order:

1. **The plugin's frontend** (grafana/clickhouse-datasource `src/data/CHDatasource.ts`,
   `applyTemplateVariables`) first replaces every `$__conditionalAll(condition, $var)` by `1=1` when the
   variable's current value is All (`$__all`) or empty, else by `condition` (raw, untrimmed). It scans
   from the last occurrence backwards; the variable is recognised only as `$var` or `${var}` (the
   plugin's regex: a `${var:format}` second argument never matches, so the condition is kept).
2. **Grafana's template service** then interpolates variables (docs: "Variable syntax" and "Advanced
   variable format options", https://grafana.com/docs/grafana/latest/dashboards/variables/variable-syntax/;
   formatters: grafana/grafana `public/app/features/templating/formatRegistry.ts`). Syntax: `$name`,
   `${name}`, `${name:format}`, `[[name]]`, `[[name:format]]` (JS `\\w`, ASCII). Without a format the
   ClickHouse plugin's own `format()` applies: a multi-value list becomes `'a','b'` (joined with `','`,
   nothing escaped) and a single value is inserted raw. Formats supported here:
   - `singlequote`: each value in `'…'` with `'` escaped as `\\'`, joined by `,`;
   - `sqlstring`: each value in `'…'` with `'` doubled (`''`), joined by `,`;
   - `doublequote`: each value in `"…"` with `"` escaped as `\\"`, joined by `,`;
   - `csv` and `raw`: values joined by `,` (a single value as is); `pipe`: joined by `|`;
   - `json`: JSON text of the value (no spaces, like `JSON.stringify`);
   - `date[:ms|:seconds|:iso]` on `$__from` / `$__to` only.
   Built-ins: `$__interval` (`secondsToHms` of the interval: `20s`, `1m`, `2h`, `500ms`…),
   `$__interval_ms` (integer milliseconds), `$__from` / `$__to` (epoch milliseconds, or per `:date`).
   Grafana leaves an unknown `$name` in place and falls back to `glob` for an unknown format; here both
   raise `ValueError`, because a query that reaches ClickHouse with a literal `$site` in it is a bug.
   Other `$__…` names are left for step 3.
3. **The plugin's backend** (grafana/clickhouse-datasource `pkg/macros/macros.go`, run through
   grafana-plugin-sdk-go `data/sqlutil/macros.go` `Interpolate`): macro names are tried longest first,
   each matched as `\\$__name\\b`; an argument list must start right after the name (`$__f (x)` has none),
   runs to the matching close bracket (missing one is an error) and is split at top-level commas, each
   argument whitespace-trimmed; every occurrence of the same text is replaced. The plugin's macros
   (`fromTime`, `toTime`, `fromTime_ms`, `toTime_ms`, `timeFilter`, `timeFilter_ms`, `dateFilter`,
   `dateTimeFilter`/`dt`, `timeInterval`, `timeInterval_ms`, `interval_s`) are implemented exactly, plus
   sqlutil's defaults the plugin does not override: `interval`, `interval_ms`, `timeFrom`, `timeTo`. The
   remaining defaults raise: `$__timeGroup` emits SQL Server `datepart(…)`, and `$__table` / `$__column`
   expand to the query model's `table`/`column` fields, which ClickHouse SQL queries leave empty.

Dates: the plugin formats `toDate('…')` in its process's zone; Grafana runs in UTC in containers, so UTC
is used here. Seconds and milliseconds are floored, like Go's `Time.Unix()` / `UnixMilli()`.

`expand_alert_query` is step 3 alone: Grafana's alerting sends a rule's SQL straight to the plugin's
backend, with no dashboard variables and no frontend (`$__interval` is then sqlutil's default macro).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["expand", "expand_alert_query"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VariableValue = str | Sequence[str]

# Grafana's variableRegex (public/app/features/variables/utils.ts), JS \w being ASCII.
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}", re.ASCII
)
# The plugin's regex for the variable named in $__conditionalAll's second argument.
_CONDITIONAL_VAR = re.compile(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+")
_CONDITIONAL_ALL = "$__conditionalAll("
_LEFTOVER_MACRO = re.compile(r"\$__(\w+)", re.ASCII)
_LEFTOVER_VARIABLE = re.compile(r"\$\{?(\w+)", re.ASCII)


@dataclass(frozen=True)
class _Range:
    """The query's time range and interval, as the plugin's Go code sees them."""

    time_from: datetime
    time_to: datetime
    interval: timedelta

    @property
    def from_s(self) -> int:
        return (self.time_from - _EPOCH) // timedelta(seconds=1)

    @property
    def to_s(self) -> int:
        return (self.time_to - _EPOCH) // timedelta(seconds=1)

    @property
    def from_ms(self) -> int:
        return (self.time_from - _EPOCH) // timedelta(milliseconds=1)

    @property
    def to_ms(self) -> int:
        return (self.time_to - _EPOCH) // timedelta(milliseconds=1)

    @property
    def interval_ms(self) -> int:
        return self.interval // timedelta(milliseconds=1)


def expand(
    sql: str,
    *,
    time_from: datetime,
    time_to: datetime,
    interval: timedelta,
    variables: Mapping[str, VariableValue],
    all_selected: Collection[str] = (),
) -> str:
    """`sql` as ClickHouse receives it from a Grafana panel over [time_from, time_to] at `interval`.

    `variables` holds each dashboard variable's interpolated value: a string for a single-value
    variable, a sequence for a multi-value one (for All, the list Grafana substitutes: every option, or
    the custom all value). `all_selected` names the variables whose current selection is All, which only
    `$__conditionalAll` looks at. Raises ValueError naming the variable, format or macro that Grafana or
    the plugin would not turn into valid SQL.
    """
    span = _check_range(time_from, time_to, interval)
    sql = _apply_conditional_all(sql, variables, all_selected)
    sql = _interpolate_variables(sql, span, variables)
    return _interpolate_macros(sql, span)


def expand_alert_query(sql: str, *, time_from: datetime, time_to: datetime, interval: timedelta) -> str:
    """`sql` as ClickHouse receives it from a Grafana alert rule: the plugin's backend macros only."""
    span = _check_range(time_from, time_to, interval)
    expanded = _interpolate_macros(sql, span)
    leftover = _LEFTOVER_VARIABLE.search(expanded)
    if leftover:
        raise ValueError(f"alert query uses ${leftover.group(1)}: alert rules have no dashboard variables")
    return expanded


def _check_range(time_from: datetime, time_to: datetime, interval: timedelta) -> _Range:
    for name, moment in (("time_from", time_from), ("time_to", time_to)):
        if moment.tzinfo is None:
            raise ValueError(f"{name}={moment!r} is naive: Grafana time ranges are absolute (give a tzinfo)")
    if time_from > time_to:
        raise ValueError(f"time range from {time_from.isoformat()} is after to {time_to.isoformat()}")
    if interval < timedelta(milliseconds=1):
        raise ValueError(f"interval={interval!r}: Grafana intervals are at least 1 ms")
    return _Range(time_from.astimezone(UTC), time_to.astimezone(UTC), interval)


# --- step 1: the plugin frontend's $__conditionalAll ----------------------------------------------------


def _macro_args_js(sql: str, open_index: int) -> list[str]:
    """The plugin's getMacroArgs: split at depth-1 commas from the '(' at open_index; [] if unclosed."""
    args: list[str] = []
    depth = 0
    start = open_index + 1
    for match in re.finditer(r"[(),]", sql[open_index:]):
        token, end = match.group(), open_index + match.end()
        depth += {"(": 1, ")": -1}.get(token, 0)
        if token == "," and depth == 1:
            args.append(sql[start : end - 1])
            start = end
        if depth == 0:
            args.append(sql[start : end - 1])
            return args
    return []


def _apply_conditional_all(sql: str, variables: Mapping[str, VariableValue], all_selected: Collection[str]) -> str:
    index = sql.rfind(_CONDITIONAL_ALL)
    while index != -1:
        args = _macro_args_js(sql, index + len(_CONDITIONAL_ALL) - 1)
        if len(args) != 2:
            # The plugin gives up and leaves the macro for ClickHouse to reject; fail here instead.
            raise ValueError(f"$__conditionalAll at offset {index} needs 2 arguments (condition, $variable), got {args}")
        condition, variable = args
        phrase = condition
        named = _CONDITIONAL_VAR.search(variable.strip())
        if named:
            name = named.group()
            value = variables.get(name)
            # JS value.toString(): a list joins with ',', so an empty multi-selection is '' too.
            text = value if isinstance(value, str) or value is None else ",".join(value)
            if name in all_selected or text == "" or text == "$__all":
                phrase = "1=1"
        sql = sql.replace(f"{_CONDITIONAL_ALL}{condition},{variable})", phrase, 1)
        index = sql.rfind(_CONDITIONAL_ALL)
    return sql


# --- step 2: Grafana's template variables ---------------------------------------------------------------


def _quoted(quote: str, escaped: str) -> Callable[[VariableValue], str]:
    def format_value(value: VariableValue) -> str:
        values = [value] if isinstance(value, str) else list(value)
        return ",".join(f"{quote}{v.replace(quote, escaped)}{quote}" for v in values)

    return format_value


def _joined(separator: str) -> Callable[[VariableValue], str]:
    return lambda value: value if isinstance(value, str) else separator.join(value)


def _clickhouse_default(value: VariableValue) -> str:
    # CHDatasource.format: arrays become '${value.join("','")}', anything else is inserted as is.
    return value if isinstance(value, str) else "'" + "','".join(value) + "'"


_FORMATS: dict[str, Callable[[VariableValue], str]] = {
    "singlequote": _quoted("'", "\\'"),
    "sqlstring": _quoted("'", "''"),
    "doublequote": _quoted('"', '\\"'),
    "csv": _joined(","),
    "raw": _joined(","),  # raw returns the value; a JS array then stringifies with ','
    "pipe": _joined("|"),
    "json": lambda value: json.dumps(value if isinstance(value, str) else list(value), separators=(",", ":")),
}


def _seconds_to_hms(seconds: float) -> str:
    """Grafana's rangeUtil.secondsToHms, which names $__interval (`20s`, `1m`, `1h`, `500ms`).

    Only the largest non-zero unit is kept (90 s is `1m`), as in Grafana.
    """
    whole = int(seconds)
    for unit, count in (("y", whole // 31536000), ("d", whole % 31536000 // 86400), ("h", whole % 86400 // 3600),
                        ("m", whole % 3600 // 60), ("s", whole % 60)):
        if count:
            return f"{count}{unit}"
    milliseconds = int(seconds * 1000)
    return f"{milliseconds}ms" if milliseconds else "less than a millisecond"


def _date_format(name: str, epoch_ms: int, args: list[str]) -> str:
    arg = args[0] if args else "iso"
    if arg == "ms":
        return str(epoch_ms)
    if arg == "seconds":
        return str((epoch_ms + 500) // 1000)  # JS Math.round: halves go up
    if arg == "iso":
        moment = _EPOCH + timedelta(milliseconds=epoch_ms)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"
    raise ValueError(f"${{{name}:date:{arg}}}: only the date formats ms, seconds and iso are supported")


def _interpolate_variables(sql: str, span: _Range, variables: Mapping[str, VariableValue]) -> str:
    built_in_ms = {"__from": span.from_ms, "__to": span.to_ms}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        spec = match.group(3) or match.group(6)
        if match.group(5):
            raise ValueError(f"{match.group()}: variable field paths are not supported")
        format_id: str | None = None
        format_args: list[str] = []
        if spec:
            format_id, *format_args = spec.split(":")
        if name in built_in_ms:
            if format_id == "date":
                return _date_format(name, built_in_ms[name], format_args)
            value: VariableValue = str(built_in_ms[name])
        elif name == "__interval":
            value = _seconds_to_hms(span.interval_ms / 1000)
        elif name == "__interval_ms":
            value = str(span.interval_ms)
        elif name in variables:
            value = variables[name]
            if not isinstance(value, str) and not all(isinstance(v, str) for v in value):
                raise ValueError(f"variable {name}={value!r}: values must be strings")
        elif name.startswith("__"):
            return match.group()  # a plugin macro ($__timeFilter…): Grafana leaves it for the backend
        else:
            raise ValueError(f"{match.group()}: undefined template variable {name!r}")
        if format_id is None:
            return _clickhouse_default(value)
        formatter = _FORMATS.get(format_id)
        if formatter is None or format_args:
            raise ValueError(f"{match.group()}: unsupported variable format {spec!r} (supported: {sorted(_FORMATS)})")
        return formatter(value)

    return _VARIABLE.sub(replace, sql)


# --- step 3: the plugin backend's macros ----------------------------------------------------------------


def _date(moment: datetime) -> str:
    # Not strftime: %Y does not zero-pad years before 1000 on glibc.
    return f"toDate('{moment.year:04d}-{moment.month:02d}-{moment.day:02d}')"


def _rfc3339(moment: datetime) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def _format_interval(interval: timedelta) -> str:
    """grafana-plugin-sdk-go gtime.FormatInterval (sqlutil's default $__interval)."""
    for unit, size in (("y", timedelta(days=365)), ("d", timedelta(days=1)), ("h", timedelta(hours=1)),
                       ("m", timedelta(minutes=1)), ("s", timedelta(seconds=1)), ("ms", timedelta(milliseconds=1))):
        if interval >= size:
            return f"{interval // size}{unit}"
    return "1ms"


def _one(name: str, args: list[str], count: int = 1) -> list[str]:
    if len(args) != count:
        noun = "argument" if count == 1 else "arguments"
        raise ValueError(f"$__{name}: unexpected number of arguments: expected {count} {noun}, received {len(args)}")
    return args


def _backend_macros(span: _Range) -> dict[str, Callable[[list[str]], str]]:
    from_dt, to_dt = f"toDateTime({span.from_s})", f"toDateTime({span.to_s})"
    from_ms, to_ms = f"fromUnixTimestamp64Milli({span.from_ms})", f"fromUnixTimestamp64Milli({span.to_ms})"
    from_date, to_date = _date(span.time_from), _date(span.time_to)
    seconds = int(max(span.interval.total_seconds(), 1))
    milliseconds = max(span.interval_ms, 1)

    def between(name: str, low: str, high: str) -> Callable[[list[str]], str]:
        def expand_one(args: list[str]) -> str:
            (column,) = _one(name, args)
            return f"{column} >= {low} AND {column} <= {high}"

        return expand_one

    def date_time_filter(name: str) -> Callable[[list[str]], str]:
        def expand_two(args: list[str]) -> str:
            date_column, time_column = _one(name, args, 2)
            return (f"({date_column} >= {from_date} AND {date_column} <= {to_date}) AND "
                    f"({time_column} >= {from_dt} AND {time_column} <= {to_dt})")

        return expand_two

    def unsupported(name: str, why: str) -> Callable[[list[str]], str]:
        def refuse(args: list[str]) -> str:
            raise ValueError(f"$__{name}: {why}")

        return refuse

    return {
        # grafana/clickhouse-datasource pkg/macros/macros.go
        "fromTime": lambda args: from_dt,
        "toTime": lambda args: to_dt,
        "fromTime_ms": lambda args: from_ms,
        "toTime_ms": lambda args: to_ms,
        "timeFilter": between("timeFilter", from_dt, to_dt),
        "timeFilter_ms": between("timeFilter_ms", from_ms, to_ms),
        "dateFilter": between("dateFilter", from_date, to_date),
        "dateTimeFilter": date_time_filter("dateTimeFilter"),
        "dt": date_time_filter("dt"),
        "timeInterval": lambda args: (
            f"toStartOfInterval(toDateTime({_one('timeInterval', args)[0]}), INTERVAL {seconds} second)"),
        "timeInterval_ms": lambda args: (
            f"toStartOfInterval(toDateTime64({_one('timeInterval_ms', args)[0]}, 3), INTERVAL {milliseconds} millisecond)"),
        "interval_s": lambda args: str(seconds),
        # grafana-plugin-sdk-go data/sqlutil DefaultMacros the plugin does not override
        "interval": lambda args: _format_interval(span.interval),
        "interval_ms": lambda args: str(span.interval_ms),
        "timeFrom": lambda args: f"{_one('timeFrom', args)[0]} >= '{_rfc3339(span.time_from)}'",
        "timeTo": lambda args: f"{_one('timeTo', args)[0]} <= '{_rfc3339(span.time_to)}'",
        "timeGroup": unsupported("timeGroup", "sqlutil's default emits SQL Server datepart(...); use $__timeInterval"),
        "table": unsupported("table", "expands to the query model's table field, empty for ClickHouse SQL queries"),
        "column": unsupported("column", "expands to the query model's column field, empty for ClickHouse SQL queries"),
    }


def _parse_args(text: str) -> tuple[list[str] | None, int]:
    """sqlutil parseArgs: (trimmed args, length) of a bracket list at text's start; (None, 0) if none."""
    if not text.startswith("("):
        return None, 0
    args: list[str] = []
    depth = 0
    current: list[str] = []
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth == 1:
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args, index + 1
        elif char == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    return None, -1


def _interpolate_macros(sql: str, span: _Range) -> str:
    macros = _backend_macros(span)
    for name in sorted(macros, key=len, reverse=True):
        found: list[tuple[str, list[str]]] = []
        for match in re.finditer(rf"\$__{re.escape(name)}\b", sql, re.ASCII):
            args, length = _parse_args(sql[match.end():])
            if length < 0:
                raise ValueError(f"$__{name} at offset {match.start()}: failed to parse macro arguments "
                                 f"(missing close bracket?)")
            found.append((sql[match.start() : match.end() + length], args or []))
        for full, args in found:
            sql = sql.replace(full, macros[name](args))
    leftover = _LEFTOVER_MACRO.search(sql)
    if leftover:
        raise ValueError(f"unknown macro or unsupported Grafana built-in $__{leftover.group(1)}")
    return sql
