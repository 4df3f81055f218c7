"""PlantPulse's ClickHouse connector: connection, schema, the flow's sink, ad-hoc SQL and fleet metadata.

The pieces live in `clickhouse_client` (connect), `clickhouse_schema` (versioned DDL) and `clickhouse_sink`
(the Bytewax sink); this module is the one to import from.
"""

from __future__ import annotations

import re

from connectors.clickhouse_client import EmbeddedDatabaseBusy, connect
from connectors.clickhouse_schema import (
    MACHINE_COLUMNS,
    apply_schema,
    load_machines,
    quote_database,
    refresh_rollups,
    split_statements,
)
from connectors.clickhouse_sink import (
    ClickHouseSink,
    ClickHouseSinkPartition,
    SinkFailed,
    is_transient,
)
from plantpulse.settings import Settings

__all__ = [
    "ClickHouseSink",
    "ClickHouseSinkPartition",
    "EmbeddedDatabaseBusy",
    "MACHINE_COLUMNS",
    "SinkFailed",
    "apply_schema",
    "connect",
    "is_transient",
    "load_machines",
    "refresh_rollups",
    "run_sql",
]

# Statements that return a result set (the rest are run as commands).
_ROW_STATEMENT = re.compile(r"^\(*\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS|CHECK)\b", re.IGNORECASE)
_SELECT_STATEMENT = re.compile(r"^\(*\s*(SELECT|WITH)\b", re.IGNORECASE)


def run_sql(settings: Settings, query: str, parameters: dict | None = None) -> tuple[list[str], list[tuple]]:
    """Run one statement for `plantpulse sql`: returns (column names, rows); ([], []) for statements
    that return no result set (DDL, INSERT, OPTIMIZE, SYSTEM ...). Values go in `parameters`, referenced
    as `{name:Type}` in the query, never into its text.

    Unqualified table names resolve in `settings.clickhouse_database` once it exists. With embedded chDB
    this raises `EmbeddedDatabaseBusy` while a flow or demo holds the data directory.
    """
    statements = split_statements(query)
    if len(statements) != 1:
        raise ValueError(f"plantpulse sql: expected exactly one SQL statement, got {len(statements)}")
    statement = statements[0]
    client = connect(settings)
    try:
        database = settings.clickhouse_database
        if client.command(f"EXISTS DATABASE {quote_database(database)}") == 1:
            client.database = database
        if not _ROW_STATEMENT.match(statement):
            client.command(statement, parameters=parameters)
            return [], []
        result = client.query(statement, parameters=parameters)
        columns = list(result.column_names)
        if not columns and _SELECT_STATEMENT.match(statement):
            # chDB reports no columns for an empty result; DESCRIBE names them without running the query.
            columns = [row[0] for row in client.query(f"DESCRIBE TABLE ({statement})", parameters=parameters).result_rows]
        return columns, [tuple(row) for row in result.result_rows]
    finally:
        client.close()
