"""A grafana-foundation-sdk dataquery type for the official ClickHouse plugin (`grafana-clickhouse-datasource`).

The SDK ships dataquery models for Grafana's core datasources only; this module adds the ClickHouse one in the
SDK's own shape (a `cog.variants.Dataquery` model with `to_json`/`from_json`, a `cog.builder.Builder` for it,
and a `DataqueryConfig` registered with the SDK runtime so `Dashboard.from_json` decodes ClickHouse targets
back into it).

The JSON shape is the plugin's query model (grafana/clickhouse-datasource):
- `src/types/sql.ts` `CHSqlQuery`: `refId`, `datasource`, `editorType: "sql"`, `rawSql`, `queryType`
  (`src/types/queryBuilder.ts` `QueryType`: `table`, `logs`, `timeseries`, `traces`; the frontend uses it to
  pick the editor and visualisation).
- `format`: what the backend reads. The plugin runs queries through grafana/sqlds, which unmarshals the
  target into grafana-plugin-sdk-go `data/sqlutil/query.go` `Query{RawSQL "rawSql", Format "format"}` where
  `FormatQueryOption` is numeric: 0 time series (long frames are pivoted to wide, one series per label
  combination), 1 table, 2 logs, 3 traces, 4 multi. Macros (`$__timeFilter` ...) are expanded by the backend
  (`pkg/macros/macros.go`); template variables by Grafana before the request leaves the browser.
"""

from __future__ import annotations

import enum
import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

PLUGIN_ID = "grafana-clickhouse-datasource"


class ClickHouseFormat(enum.IntEnum):
    """sqlutil.FormatQueryOption (grafana-plugin-sdk-go data/sqlutil/query.go)."""

    TIME_SERIES = 0
    TABLE = 1
    LOGS = 2
    TRACES = 3


class ClickHouseQueryType(enum.StrEnum):
    """The plugin's QueryType (src/types/queryBuilder.ts)."""

    TABLE = "table"
    LOGS = "logs"
    TIME_SERIES = "timeseries"
    TRACES = "traces"


# PanelQuery.format names (grafana/queries.py) -> (format, queryType).
FORMATS: dict[str, tuple[ClickHouseFormat, ClickHouseQueryType]] = {
    "time_series": (ClickHouseFormat.TIME_SERIES, ClickHouseQueryType.TIME_SERIES),
    "table": (ClickHouseFormat.TABLE, ClickHouseQueryType.TABLE),
    "logs": (ClickHouseFormat.LOGS, ClickHouseQueryType.LOGS),
    "traces": (ClickHouseFormat.TRACES, ClickHouseQueryType.TRACES),
}


class ClickHouseDataquery(cogvariants.Dataquery):
    """One ClickHouse SQL target (editorType "sql")."""

    def __init__(
        self,
        ref_id: str = "",
        raw_sql: str = "",
        format_val: ClickHouseFormat = ClickHouseFormat.TABLE,
        query_type: ClickHouseQueryType = ClickHouseQueryType.TABLE,
        datasource: dashboard.DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.query_type = query_type
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "editorType": "sql",
            "format": int(self.format_val),
            "queryType": str(self.query_type),
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> typing.Self:
        return cls(
            ref_id=str(data.get("refId", "")),
            raw_sql=str(data.get("rawSql", "")),
            format_val=ClickHouseFormat(int(data.get("format", ClickHouseFormat.TABLE))),
            query_type=ClickHouseQueryType(str(data.get("queryType", ClickHouseQueryType.TABLE))),
            datasource=dashboard.DataSourceRef.from_json(data["datasource"]) if "datasource" in data else None,
            hide=data.get("hide"),
        )


class ClickHouseQuery(cogbuilder.Builder[ClickHouseDataquery]):
    """Builder for `ClickHouseDataquery`, usable wherever the SDK takes a dataquery builder (`with_target`)."""

    def __init__(self) -> None:
        self._internal = ClickHouseDataquery()

    def build(self) -> ClickHouseDataquery:
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def raw_sql(self, raw_sql: str) -> typing.Self:
        self._internal.raw_sql = raw_sql
        return self

    def format(self, name: str) -> typing.Self:
        """Set `format` and `queryType` together from a PanelQuery format name ("table", "time_series", ...)."""
        if name not in FORMATS:
            raise ValueError(f"ClickHouse query format {name!r}: expected one of {sorted(FORMATS)}")
        self._internal.format_val, self._internal.query_type = FORMATS[name]
        return self

    def datasource(self, uid: str) -> typing.Self:
        self._internal.datasource = dashboard.DataSourceRef(type_val=PLUGIN_ID, uid=uid)
        return self

    def hide(self, hide: bool) -> typing.Self:
        self._internal.hide = hide
        return self


def variant_config() -> cogruntime.DataqueryConfig:
    return cogruntime.DataqueryConfig(identifier=PLUGIN_ID, from_json_hook=ClickHouseDataquery.from_json)


cogruntime.register_dataquery_variant(variant_config())
