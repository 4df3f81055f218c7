"""Versioned ClickHouse DDL: `connectors/sql/NNN_name.sql`, applied once each, recorded in `schema_migrations`.

Every statement in the files is idempotent (IF NOT EXISTS), so a start that crashed half-way through a
file, or two sink partitions starting at the same moment, just run it again; the version is recorded
after its last statement succeeded.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa
from clickhouse_connect.driver.client import Client

logger = logging.getLogger("plantpulse.clickhouse")

_MIGRATION_NAME = re.compile(r"^(\d{3,})_([A-Za-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DATABASE_PLACEHOLDER = "{database}"

# Views refreshed on a schedule by the server; tests and `plantpulse sql` users can force a refresh.
REFRESHABLE_VIEWS: tuple[str, ...] = (
    "window_stats_hourly_refresh", "data_quality_refresh", "anomaly_scores_hourly_refresh",
)


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def quote_database(database: str) -> str:
    """Backtick-quote a database name after checking it is a plain identifier (it is spliced into DDL)."""
    if not _IDENTIFIER.match(database):
        raise ValueError(f"CLICKHOUSE_DATABASE={database!r}: expected letters, digits and '_' (not starting with a digit)")
    return f"`{database}`"


def load_migrations() -> list[Migration]:
    """The packaged `sql/NNN_name.sql` files, ordered by version."""
    found: dict[int, Migration] = {}
    for entry in resources.files("connectors").joinpath("sql").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"connectors/sql: version {version} is used by {found[version].name!r} and {entry.name!r}")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def split_statements(sql: str) -> list[str]:
    """Split a SQL script on top-level `;`, ignoring those inside quotes and comments; drops comments."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise ValueError(f"unterminated /* comment at offset {i}")
            i = end + 2
            current.append(" ")
            continue
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            if j >= n:
                raise ValueError(f"unterminated {ch} quote at offset {i}")
            current.append(sql[i : j + 1])
            i = j + 1
            continue
        if ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def render(migration: Migration, database: str) -> list[str]:
    """The migration's statements with `{database}` replaced by the quoted database name."""
    quoted = quote_database(database)
    return [s.replace(DATABASE_PLACEHOLDER, quoted) for s in split_statements(migration.sql)]


def apply_schema(client: Client, database: str) -> list[int]:
    """Create `database` and apply the migrations not yet recorded in it; returns the versions applied now."""
    quoted = quote_database(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {quoted}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ("
        " version UInt32, name String, checksum String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
    )
    applied = {
        int(version): checksum
        for version, checksum in client.query(f"SELECT version, checksum FROM {quoted}.schema_migrations FINAL").result_rows
    }
    done: list[int] = []
    for migration in load_migrations():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                # Editing a released migration does not change a database that already ran it; say so loudly
                # but keep going, since the running schema is still the one the flow was written against.
                logger.warning(
                    "schema migration %s changed after it was applied to database %s; the change is NOT applied "
                    "there - put schema changes in a new numbered file",
                    migration.name,
                    database,
                )
            continue
        for statement in render(migration, database):
            try:
                client.command(statement)
            except Exception as exc:
                first_line = statement.splitlines()[0]
                raise RuntimeError(
                    f"schema migration {migration.name} failed on database {database!r} at {first_line!r}: {exc}"
                ) from exc
        client.command(
            f"INSERT INTO {quoted}.schema_migrations (version, name, checksum) VALUES "
            "({v:UInt32}, {n:String}, {c:String})",
            parameters={"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        logger.info("applied schema migration %s to database %s", migration.name, database)
        done.append(migration.version)
    return done


def refresh_rollups(client: Client, database: str) -> None:
    """Run the refreshable rollup views now and wait for them (they also refresh every minute by themselves)."""
    quoted = quote_database(database)
    for view in REFRESHABLE_VIEWS:
        # Wait out a refresh already running (e.g. the one CREATE starts) first, so that the refresh
        # requested next certainly starts after the caller's inserts.
        client.command(f"SYSTEM WAIT VIEW {quoted}.{view}")
        client.command(f"SYSTEM REFRESH VIEW {quoted}.{view}")
        client.command(f"SYSTEM WAIT VIEW {quoted}.{view}")


def set_refresh_interval(client: Client, database: str, seconds: int) -> None:
    """Make the refreshable rollup views recompute every `seconds` (CLICKHOUSE_REFRESH_SECONDS; the DDL says
    one minute). Applied at every start, so the setting, not the database, decides."""
    if seconds < 1:
        raise ValueError(f"CLICKHOUSE_REFRESH_SECONDS must be >= 1, got {seconds!r}")
    quoted = quote_database(database)
    for view in REFRESHABLE_VIEWS:
        client.command(f"ALTER TABLE {quoted}.{view} MODIFY REFRESH EVERY {int(seconds)} SECOND APPEND")


MACHINE_COLUMNS: tuple[str, ...] = ("machine_id", "site", "line", "machine_type")


def load_machines(client: Client, database: str, csv_path: Path | str | None) -> int:
    """Insert fleet metadata from a CSV with header machine_id,site,line,machine_type; returns the row count.

    A missing file is not an error (the fleet table is optional enrichment): nothing is loaded and 0 is
    returned. Reloading replaces rows of the same machine_id.
    """
    if csv_path is None:
        return 0
    path = Path(csv_path)
    if not path.is_file():
        return 0
    columns: dict[str, list[str]] = {name: [] for name in MACHINE_COLUMNS}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in MACHINE_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the header must be {','.join(MACHINE_COLUMNS)}")
        for line_no, row in enumerate(reader, start=2):
            machine_id = (row["machine_id"] or "").strip()
            if not machine_id:
                raise ValueError(f"{path}:{line_no}: empty machine_id")
            for name in MACHINE_COLUMNS:
                columns[name].append((row[name] or "").strip())
    count = len(columns["machine_id"])
    if count:
        table = pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})
        client.insert_arrow("machines", table, database=database)
    return count
