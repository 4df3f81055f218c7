"""What every PlantPulse dashboard shares: datasource refs, template variables, targets from QUERIES, the grid."""

from __future__ import annotations

import typing
from typing import TypeVar

from grafana_foundation_sdk.builders import barchart, heatmap, piechart, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as model

from grafana.dataquery import ClickHouseQuery
from grafana.names import CLICKHOUSE_TYPE, CLICKHOUSE_UID, MACHINE_UID, PROMETHEUS_TYPE, PROMETHEUS_UID, TAG
from grafana.queries import PROM_QUERIES, QUERIES

CLICKHOUSE = model.DataSourceRef(type_val=CLICKHOUSE_TYPE, uid=CLICKHOUSE_UID)
PROMETHEUS = model.DataSourceRef(type_val=PROMETHEUS_TYPE, uid=PROMETHEUS_UID)
GRID_WIDTH = 24

P = TypeVar("P", timeseries.Panel, stat.Panel, table.Panel, heatmap.Panel, piechart.Panel, barchart.Panel)


def ch_target(key: str, ref_id: str = "A") -> ClickHouseQuery:
    """A ClickHouse target whose SQL is QUERIES[key] verbatim (a test checks every target against QUERIES)."""
    query = QUERIES[key]
    return ClickHouseQuery().ref_id(ref_id).datasource(CLICKHOUSE_UID).raw_sql(query.sql).format(query.format)


def prom_target(key: str, ref_id: str = "A") -> prometheus.Dataquery:
    query = PROM_QUERIES[key]
    return prometheus.Dataquery().ref_id(ref_id).datasource(PROMETHEUS).expr(query.expr).legend_format(query.legend).range()


def _variable(key: str, label: str, *, multi: bool) -> dash.QueryVariable:
    name = key.removeprefix("var.")
    variable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(CLICKHOUSE)
        .query(QUERIES[key].sql)
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        variable = variable.current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return variable


def variables(*, single_machine: bool) -> list[dash.QueryVariable]:
    """site, line, machine_type (multi, All) and machine_id (searchable; one machine on Machine detail)."""
    return [
        _variable("var.site", "Site", multi=True),
        _variable("var.line", "Line", multi=True),
        _variable("var.machine_type", "Machine type", multi=True),
        _variable("var.machine_id", "Machine", multi=not single_machine),
    ]


class _Annotation(model.AnnotationQuery):
    """An annotation with fields the SDK's model lacks: `extra` is merged into its JSON.

    Used for Grafana's built-in "Annotations & Alerts" (`builtIn`, `type`) and for datasource annotations, whose
    query Grafana's standard annotation support keeps in `target` (the SDK types `target` as the built-in
    datasource's tag filter).
    """

    def __init__(self, extra: dict[str, object], **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        self.extra = extra

    def to_json(self) -> dict[str, object]:
        return super().to_json() | self.extra


class Annotation(cogbuilder.Builder[model.AnnotationQuery]):
    def __init__(self, name: str, datasource: model.DataSourceRef, icon_color: str, *, hide: bool = False,
                 extra: dict[str, object] | None = None) -> None:
        self._internal = _Annotation(extra or {}, name=name, datasource=datasource, enable=True, hide=hide,
                                     icon_color=icon_color)

    def build(self) -> model.AnnotationQuery:
        return self._internal


def builtin_annotation() -> Annotation:
    """Grafana's own annotations and alert state changes, as every exported dashboard lists them."""
    return Annotation("Annotations & Alerts", model.DataSourceRef(type_val="grafana", uid="-- Grafana --"),
                      "rgba(0, 211, 255, 1)", hide=True, extra={"builtIn": 1, "type": "dashboard"})


def ch_annotation(key: str, icon_color: str) -> Annotation:
    """A ClickHouse annotation: QUERIES[key] returns time, timeEnd, text, tags (Grafana maps them by name)."""
    return Annotation(QUERIES[key].title, CLICKHOUSE, icon_color, extra={"target": ch_target(key, "Anno").build()})


class Board:
    """A dashboard under construction: panels get consecutive ids and flow left to right, top to bottom."""

    def __init__(self, uid: str, title: str, description: str, *, time_from: str, single_machine: bool = False) -> None:
        self.dashboard = (
            dash.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .time(time_from, "now")
            .refresh("1m")
            .timezone("browser")
            .link(
                dash.DashboardLink("PlantPulse")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        self.dashboard = self.dashboard.annotation(builtin_annotation())
        for variable in variables(single_machine=single_machine):
            self.dashboard = self.dashboard.with_variable(variable)
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_height = 0

    def _place(self, width: int, height: int) -> model.GridPos:
        if width > GRID_WIDTH:
            raise ValueError(f"panel width {width} exceeds the grid's {GRID_WIDTH} columns")
        if self._x + width > GRID_WIDTH:
            self._x, self._y, self._row_height = 0, self._y + self._row_height, 0
        pos = model.GridPos(h=height, w=width, x=self._x, y=self._y)
        self._x += width
        self._row_height = max(self._row_height, height)
        return pos

    def add(self, panel: P, width: int, height: int, *keys: str, title: str = "", description: str = "") -> P:
        """Add `panel` with a target per key: ClickHouse keys from QUERIES, or `prom.*` keys from PROM_QUERIES.

        A panel's targets all use one datasource (no "-- Mixed --" panels), and the title defaults to the first
        query's title (or `title`).
        """
        if not keys:
            raise ValueError("Board.add: a panel needs at least one query key")
        prom = [k.startswith("prom.") for k in keys]
        if any(prom) and not all(prom):
            raise ValueError(f"Board.add: keys {keys} mix ClickHouse and Prometheus queries")
        targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
        for index, key in enumerate(keys):
            ref_id = chr(ord("A") + index)
            targets.append(prom_target(key, ref_id) if prom[0] else ch_target(key, ref_id))
        first = PROM_QUERIES[keys[0]].title if prom[0] else QUERIES[keys[0]].title
        panel = (
            panel.id(self._next_id)
            .title(title or first)
            .description(description)
            .datasource(PROMETHEUS if prom[0] else CLICKHOUSE)
            .targets(targets)
            .grid_pos(self._place(width, height))
        )
        self._next_id += 1
        self.dashboard = self.dashboard.with_panel(panel)
        return panel

    def build(self) -> model.Dashboard:
        return self.dashboard.build()


def fixed_color(color: str) -> list[model.DynamicConfigValue]:
    """Override properties giving a field one colour."""
    return [model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]


def steps(*pairs: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds from (value, colour) pairs; the first value is None (the base)."""
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in pairs])
    )


def machine_link() -> list[model.DynamicConfigValue]:
    """Override properties turning a machine_id cell into a link to Machine detail, keeping the time range."""
    url = f"/d/{MACHINE_UID}?var-machine_id=${{__value.raw}}&${{__url_time_range}}"
    return [model.DynamicConfigValue(id_val="links", value=[{"title": "Machine detail", "url": url}])]
