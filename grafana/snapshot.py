"""Pictures of the dashboards without Grafana: Fleet now and Machine detail as PNG, from the dashboards' own SQL.

Every panel runs the query Grafana would send (`grafana.queries.QUERIES`, expanded by `grafana.macros.expand`
for the time range, an interval chosen like a panel's and the template variables at All: every site, line and
machine type of `machines FINAL`; `machine_id` is the machine shown). All queries go through one client that
is closed before any drawing starts: with embedded chDB the database is held only while querying.

Drawing uses matplotlib's object API (`Figure`, no pyplot): nothing global changes in the caller's process, and
the Agg canvas renders PNGs without a display. A panel whose query returns no rows says "no data"; a panel
whose query fails or returns other columns than the contract's says so in the picture and in the log, and the
other panels are still drawn.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.dates import AutoDateLocator, DateFormatter, date2num
from matplotlib.figure import Figure

from connectors.clickhouse_client import connect
from connectors.clickhouse_schema import quote_database
from grafana.macros import expand
from plantpulse.schema import SENSORS
from plantpulse.settings import Settings

logger = logging.getLogger(__name__)

FLEET_KEYS: tuple[str, ...] = (
    "fleet.machine_states", "fleet.open_incidents_by_severity", "fleet.risk_heatmap", "fleet.top_risk",
    "fleet.readings_rate",
)
MACHINE_KEYS: tuple[str, ...] = (*(f"machine.sensor.{s}" for s in SENSORS), "machine.anomaly_score",
                                 "machine.incident_spans")
OPTIONAL_KEYS: tuple[str, ...] = ("machine.state",)
FLEET_VARIABLES: tuple[str, ...] = ("site", "line", "machine_type")
SENSOR_UNITS: dict[str, str] = {"temperature": "°C", "pressure": "bar", "vibration": "mm/s", "rpm": "rpm",
                                "power": "kW"}
# Panel pixels per data point, as Grafana's maxDataPoints ~ panel width: ~200 points across a half-width panel.
MAX_POINTS = 200
NICE_INTERVALS_S = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
DPI = 100
FLEET_SIZE_IN = (16.0, 10.0)  # 1600 x 1000 px
MACHINE_SIZE_IN = (16.0, 12.0)  # 1600 x 1200 px
STATE_COLORS = {"ok": "#3b9c4a", "stale": "#8c8c8c", "in_incident": "#d62728"}
SEVERITY_COLORS = {"critical": "#d62728", "warning": "#ff9f1c", "info": "#1f77b4"}
RISK_MAX = 2.0  # risk = score / threshold: the heat map's scale is 0..2, 1 (the threshold) in the middle


class PanelQueryLike(Protocol):
    """What snapshot needs of `grafana.queries.PanelQuery`."""

    @property
    def title(self) -> str: ...
    @property
    def sql(self) -> str: ...
    @property
    def columns(self) -> tuple[str, ...]: ...


@dataclass
class PanelResult:
    """One panel's rows (columns as the contract names them), or why there are none."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None

    def column(self, name: str) -> list[Any]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


@dataclass
class SnapshotData:
    """Everything the pictures show; the database is no longer needed once this exists."""

    time_from: datetime
    time_to: datetime
    interval: timedelta
    machine_id: str | None  # None: no machine to show (an empty database)
    panels: dict[str, PanelResult]
    notes: list[str] = field(default_factory=list)  # said under the title (e.g. an empty machines table)


def panel_interval(time_from: datetime, time_to: datetime, minimum_s: int = 10) -> timedelta:
    """The $__interval a panel of ~MAX_POINTS points gets: range / MAX_POINTS, up to a round step, >= `minimum_s`
    (the flow's window: nothing finer exists)."""
    wanted = max((time_to - time_from).total_seconds() / MAX_POINTS, minimum_s)
    return timedelta(seconds=next((s for s in NICE_INTERVALS_S if s >= wanted), math.ceil(wanted / 86400) * 86400))


def render_snapshot(
    settings: Settings, out_dir: Path, *, time_from: datetime, time_to: datetime, machine_id: str | None = None,
    queries: Mapping[str, PanelQueryLike] | None = None,
) -> list[Path]:
    """Write `fleet-now.png` and `machine-<id>.png` under `out_dir`; returns their paths.

    `machine_id` None: the machine with the most incidents in the range (ties: the latest), else the machine
    with the most recent reading. `queries` defaults to the dashboards' `grafana.queries.QUERIES`.
    """
    data = collect_snapshot(settings, time_from=time_from, time_to=time_to, machine_id=machine_id, queries=queries)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine_name = re.sub(r"[^A-Za-z0-9_.-]", "_", data.machine_id or "none")
    paths = [out_dir / "fleet-now.png", out_dir / f"machine-{machine_name}.png"]
    for figure, path in zip((fleet_figure(data), machine_figure(data)), paths):
        figure.savefig(path, dpi=DPI, format="png")
    return paths


def collect_snapshot(
    settings: Settings, *, time_from: datetime, time_to: datetime, machine_id: str | None = None,
    queries: Mapping[str, PanelQueryLike] | None = None,
) -> SnapshotData:
    """Run every panel query of both views (one client, closed on return); see `render_snapshot`."""
    if queries is None:
        from grafana.queries import QUERIES  # the dashboards' module; imported late so tests may pass their own

        queries = QUERIES
    missing = [key for key in FLEET_KEYS + MACHINE_KEYS if key not in queries]
    if missing:
        raise ValueError(f"snapshot: the dashboard queries lack panel(s) {missing}")
    for name, moment in (("time_from", time_from), ("time_to", time_to)):
        if moment.tzinfo is None:
            raise ValueError(f"snapshot: {name}={moment.isoformat()} has no time zone (give UTC)")
    time_from, time_to = time_from.astimezone(UTC), time_to.astimezone(UTC)
    interval = panel_interval(time_from, time_to, settings.window_seconds)
    database = settings.clickhouse_database
    client = connect(settings)
    try:
        if client.command(f"EXISTS DATABASE {quote_database(database)}") != 1:
            raise ValueError(f"snapshot: no database {database!r} at the ClickHouse of CLICKHOUSE_URL; run the flow first")
        client.database = database
        notes: list[str] = []
        variables: dict[str, str | list[str]] = {}
        for name in FLEET_VARIABLES:
            values = sorted(str(v) for (v,) in client.query(f"SELECT DISTINCT {name} FROM machines FINAL").result_rows)
            # An empty list would make `IN ()` invalid SQL; '' matches no machine, as Grafana's empty All would.
            variables[name] = values or [""]
        if variables["site"] == [""]:
            notes.append("the machines table is empty (no MACHINES_FILE loaded): fleet panels filter on it")
        if machine_id is None:
            machine_id = _default_machine(client, time_from, time_to)
        variables["machine_id"] = machine_id or ""

        def run(key: str) -> PanelResult:
            query = queries[key]
            result = PanelResult(query.title, tuple(query.columns))
            try:
                sql = expand(query.sql, time_from=time_from, time_to=time_to, interval=interval, variables=variables,
                             all_selected=FLEET_VARIABLES)
                answer = client.query(sql)
            except Exception as error:  # noqa: BLE001 - one broken panel must not cost the others their picture
                result.error = f"query failed: {str(error).strip().splitlines()[0][:200]}"
                logger.warning("snapshot panel %s: %s", key, error)
                return result
            names = tuple(answer.column_names)
            if answer.result_rows and names != result.columns:
                result.error = f"columns {list(names)}, expected {list(result.columns)}"
                logger.warning("snapshot panel %s: %s", key, result.error)
                return result
            result.rows = [tuple(row) for row in answer.result_rows]
            return result

        # machine.state (the machine's site, line, type and state) is optional: it only adds a line to a heading.
        panels = {key: run(key) for key in FLEET_KEYS + MACHINE_KEYS + OPTIONAL_KEYS if key in queries}
    finally:
        client.close()
    return SnapshotData(time_from, time_to, interval, machine_id, panels, notes)


def _default_machine(client: Any, time_from: datetime, time_to: datetime) -> str | None:
    """The machine with the most incidents seen in the range (ties: the latest, then the id), else the one
    that reported last."""
    low, high = (f"fromUnixTimestamp64Milli({int(moment.timestamp() * 1000)})" for moment in (time_from, time_to))
    rows = client.query(
        f"SELECT machine_id FROM incidents FINAL WHERE first_seen_ts <= {high} AND last_seen_ts >= {low} "
        "GROUP BY machine_id ORDER BY count() DESC, max(first_seen_ts) DESC, machine_id LIMIT 1"
    ).result_rows
    if not rows:
        rows = client.query(
            "SELECT machine_id FROM machine_state FINAL ORDER BY last_ts DESC, machine_id LIMIT 1"
        ).result_rows
    return str(rows[0][0]) if rows else None


# --- drawing ------------------------------------------------------------------------------------------------


def fleet_figure(data: SnapshotData) -> Figure:
    figure = Figure(figsize=FLEET_SIZE_IN, dpi=DPI, layout="constrained")
    _heading(figure, "PlantPulse · Fleet now", data)
    grid = figure.add_gridspec(3, 3, height_ratios=(1.0, 1.2, 1.3))
    _bars(figure.add_subplot(grid[0, 0]), data.panels["fleet.machine_states"], "machines", STATE_COLORS,
          order=("ok", "stale", "in_incident"))
    _bars(figure.add_subplot(grid[0, 1]), data.panels["fleet.open_incidents_by_severity"], "incidents",
          SEVERITY_COLORS, order=("critical", "warning", "info"))
    _readings_rate(figure.add_subplot(grid[0, 2]), data.panels["fleet.readings_rate"], data)
    _heatmap(figure, figure.add_subplot(grid[1, :]), data.panels["fleet.risk_heatmap"], data)
    _top_table(figure.add_subplot(grid[2, :]), data.panels["fleet.top_risk"])
    return figure


def machine_figure(data: SnapshotData) -> Figure:
    figure = Figure(figsize=MACHINE_SIZE_IN, dpi=DPI, layout="constrained")
    spans = data.panels["machine.incident_spans"]
    shown = f"{len(spans.rows)} incident(s) shaded: red critical, orange other" if spans.rows else "no incidents"
    _heading(figure, f"PlantPulse · Machine detail · {data.machine_id or '(no machine)'}", data,
             f"{_machine_line(data.panels.get('machine.state'))}{shown}")
    grid = figure.add_gridspec(3, 2)
    for index, sensor in enumerate(SENSORS):
        ax = figure.add_subplot(grid[index // 2, index % 2])
        _sensor(ax, data.panels[f"machine.sensor.{sensor}"], sensor, data)
        _shade_incidents(ax, spans, data)
    ax = figure.add_subplot(grid[2, 1])
    _anomaly(ax, data.panels["machine.anomaly_score"], data)
    _shade_incidents(ax, spans, data)
    return figure


def _heading(figure: Figure, title: str, data: SnapshotData, extra: str = "") -> None:
    when = (f"{data.time_from:%Y-%m-%d %H:%M:%S} – {data.time_to:%Y-%m-%d %H:%M:%S} UTC · "
            f"interval {_seconds_text(data.interval)}")
    lines = [title, when, *([extra] if extra else []), *(f"note: {note}" for note in data.notes)]
    figure.suptitle("\n".join(lines), fontsize=15)


def _machine_line(panel: PanelResult | None) -> str:
    """`site · line · type · state · last reading hh:mm:ss UTC · ` from machine.state, when it has the machine."""
    if panel is None or panel.error or not panel.rows:
        return ""
    row = dict(zip(panel.columns, panel.rows[0]))
    parts = [str(row[name]) for name in ("site", "line", "machine_type") if row.get(name)]
    if row.get("state"):
        parts.append(f"state {row['state']}")
    if isinstance(row.get("last_ts"), datetime):
        parts.append(f"last reading {row['last_ts']:%H:%M:%S} UTC")
    return "".join(f"{part} · " for part in parts)


def _seconds_text(interval: timedelta) -> str:
    seconds = int(interval.total_seconds())
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _empty(ax: Axes, panel: PanelResult) -> bool:
    """Say "no data" (or the error) across the panel when there is nothing to draw; True if so."""
    if panel.rows and panel.error is None:
        return False
    ax.set_title(panel.title, fontsize=13, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])
    text, color = (panel.error, "#d62728") if panel.error else ("no data", "#666666")
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=14, color=color, wrap=True,
            gid="no-data")
    return True


def _utc(values: Sequence[Any]) -> np.ndarray:
    """Times as matplotlib date numbers; naive datetimes are UTC (every PlantPulse column is in UTC)."""
    moments = [v if v.tzinfo is not None else v.replace(tzinfo=UTC) for v in values]
    return np.asarray(date2num(moments), dtype=float)


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _time_axis(ax: Axes, data: SnapshotData) -> None:
    ax.set_xlim(date2num(data.time_from), date2num(data.time_to))
    span = data.time_to - data.time_from
    # Seconds once ticks may fall within a minute, else labels would repeat (16:56, 16:56, ...).
    label = "%m-%d %H:%M" if span > timedelta(days=1) else "%H:%M" if span > timedelta(minutes=10) else "%H:%M:%S"
    ax.xaxis.set_major_locator(AutoDateLocator(tz=UTC, maxticks=8))
    ax.xaxis.set_major_formatter(DateFormatter(label, tz=UTC))
    ax.set_xlabel("time (UTC)")
    ax.grid(True, alpha=0.3)


def _bars(ax: Axes, panel: PanelResult, value: str, colors: Mapping[str, str], order: Sequence[str]) -> None:
    if _empty(ax, panel):
        return
    counts = {str(name): int(count) for name, count in zip(panel.column(panel.columns[0]), panel.column(value))}
    names = [n for n in order if n in counts] + sorted(n for n in counts if n not in order)
    bars = ax.bar(names, [counts[n] for n in names], color=[colors.get(n, "#1f77b4") for n in names])
    for label in ax.bar_label(bars, fontsize=13):
        label.set_gid(f"value:{panel.title}")
    ax.set_title(f"{panel.title} (total {sum(counts.values())})", fontsize=13, loc="left")
    ax.set_ylabel(value)
    ax.margins(y=0.2)


def _readings_rate(ax: Axes, panel: PanelResult, data: SnapshotData) -> None:
    if _empty(ax, panel):
        return
    ax.plot(_utc(panel.column("time")), _floats(panel.column("readings_per_s")), color="#1f77b4")
    ax.set_title(panel.title, fontsize=13, loc="left")
    ax.set_ylabel("readings/s")
    ax.set_ylim(bottom=0)
    _time_axis(ax, data)


def _heatmap(figure: Figure, ax: Axes, panel: PanelResult, data: SnapshotData) -> None:
    if _empty(ax, panel):
        return
    times = sorted(set(panel.column("time")))
    lines = sorted({str(line) for line in panel.column("line")}, reverse=True)  # first line at the top
    grid = np.full((len(lines), len(times)), np.nan)
    t_index, l_index = {t: i for i, t in enumerate(times)}, {line: i for i, line in enumerate(lines)}
    for time, line, risk in panel.rows:
        grid[l_index[str(line)], t_index[time]] = np.nan if risk is None else float(risk)
    edges = _utc(times)
    step = data.interval.total_seconds() / 86400
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="#eeeeee")
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap,
                      norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=RISK_MAX),
                      extent=(edges[0], edges[-1] + step, -0.5, len(lines) - 0.5), origin="lower")
    every = max(1, math.ceil(len(lines) / 20))  # at most ~20 readable labels; the rows stay one per line
    ax.set_yticks(range(0, len(lines), every), lines[::every])
    ax.set_title(f"{panel.title}: the line's highest, per interval", fontsize=13, loc="left")
    _time_axis(ax, data)
    ax.grid(False)
    bar = figure.colorbar(image, ax=ax, extend="max", pad=0.01)
    bar.set_label("risk (1 = threshold)")


def _top_table(ax: Axes, panel: PanelResult) -> None:
    if _empty(ax, panel):
        return
    ax.axis("off")
    ax.set_title(panel.title, fontsize=13, loc="left")
    cells = [[_cell(value) for value in row] for row in panel.rows[:10]]
    table = ax.table(cellText=cells, colLabels=list(panel.columns), loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(12)
    table.scale(1.0, 1.5)
    state = panel.columns.index("state")
    for row_number, row in enumerate(panel.rows[:10], start=1):
        color = STATE_COLORS.get(str(row[state]))
        if color:
            table[row_number, state].set_facecolor(color + "40")  # a light tint: the text stays readable


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return "–" if value is None else str(value)


def _sensor(ax: Axes, panel: PanelResult, sensor: str, data: SnapshotData) -> None:
    unit = SENSOR_UNITS.get(sensor, "")
    if _empty(ax, panel):
        return
    times = _utc(panel.column("time"))
    ax.fill_between(times, _floats(panel.column("min")), _floats(panel.column("max")), color="#1f77b4", alpha=0.2,
                    label="min–max", linewidth=0)
    ax.plot(times, _floats(panel.column("mean")), color="#1f77b4", label="mean")
    ax.set_title(f"{sensor} ({unit})", fontsize=13, loc="left")
    ax.set_ylabel(unit)
    ax.legend(loc="best", fontsize=9)
    _time_axis(ax, data)


def _anomaly(ax: Axes, panel: PanelResult, data: SnapshotData) -> None:
    if _empty(ax, panel):
        return
    times = _utc(panel.column("time"))
    ax.plot(times, _floats(panel.column("score")), color="#6a3d9a", label="score")
    ax.plot(times, _floats(panel.column("threshold")), color="#d62728", linestyle="--", label="threshold")
    ax.set_title(panel.title, fontsize=13, loc="left")
    ax.set_ylabel("score")
    ax.legend(loc="best", fontsize=9)
    _time_axis(ax, data)


def _shade_incidents(ax: Axes, panel: PanelResult, data: SnapshotData) -> None:
    """Incidents as spans (opened -> resolved, open ones to the range's end), like Grafana's region annotations."""
    if not panel.rows or panel.error:
        return
    end = data.time_to
    for time, time_end, _text, tags in zip(*(panel.column(name) for name in ("time", "timeEnd", "text", "tags"))):
        tag_text = " ".join(tags) if isinstance(tags, (list, tuple)) else str(tags or "")
        color = SEVERITY_COLORS["critical"] if "critical" in tag_text else SEVERITY_COLORS["warning"]
        start, stop = _utc([time])[0], _utc([time_end or end])[0]
        ax.axvspan(start, max(stop, start + 5 / 86400), color=color, alpha=0.15, linewidth=0, gid="incident")
