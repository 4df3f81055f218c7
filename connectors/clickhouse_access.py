"""ClickHouse users, roles, profiles and quotas for a server deployment (`connectors/sql/access_control.sql`).

`apply_access(client, database, passwords)` runs the file after the schema, as an administrator (a user with
access_management). The passwords travel as query parameters (`{ingest_password:String}`), so they are
never part of the statement text; they come from the environment at apply time (`passwords_from_env`:
CLICKHOUSE_INGEST_PASSWORD, CLICKHOUSE_GRAFANA_PASSWORD, CLICKHOUSE_ANALYST_PASSWORD,
CLICKHOUSE_OPERATOR_PASSWORD, e.g. from the Kubernetes Secret `plantpulse-clickhouse-users`).

The embedded chDB is skipped: it has a single built-in user and no writable user directory (measured with
chDB 4.4 / engine 26.9: CREATE ROLE fails with ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND even with
access_management on). Its protection is the file system: only the flow's process opens the directory.

Run it with `python -m connectors.clickhouse_access` (CLICKHOUSE_URL/USER/PASSWORD of the administrator).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from importlib import resources

from clickhouse_connect.driver.client import Client

from connectors.clickhouse_client import redacted_url
from connectors.clickhouse_schema import DATABASE_PLACEHOLDER, load_migrations, quote_database, split_statements
from plantpulse.settings import Settings

logger = logging.getLogger("plantpulse.clickhouse")

ACCESS_SQL = "access_control.sql"
# ClickHouse user -> the environment variable its password comes from at apply time.
USERS: dict[str, str] = {
    "ingest": "CLICKHOUSE_INGEST_PASSWORD",
    "grafana": "CLICKHOUSE_GRAFANA_PASSWORD",
    "analyst": "CLICKHOUSE_ANALYST_PASSWORD",
    "operator": "CLICKHOUSE_OPERATOR_PASSWORD",
}
MIN_PASSWORD_LENGTH = 16
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):String\}")


class AccessError(RuntimeError):
    """The access-control SQL could not be applied, or the server's configuration defeats it."""


def access_sql() -> str:
    """The packaged access-control script."""
    return resources.files("connectors").joinpath("sql", ACCESS_SQL).read_text(encoding="utf-8")


def render_access(database: str) -> list[str]:
    """The script's statements with `{database}` replaced by the quoted database name (parameters left in)."""
    quoted = quote_database(database)
    return [s.replace(DATABASE_PLACEHOLDER, quoted) for s in split_statements(access_sql())]


def statement_parameters(statement: str) -> list[str]:
    """The query parameters a statement uses, e.g. ['ingest_password']."""
    return _PARAMETER.findall(statement)


def passwords_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each user's password from its environment variable; raises naming every one missing or too short."""
    env = os.environ if environ is None else environ
    passwords: dict[str, str] = {}
    problems: list[str] = []
    for user, variable in USERS.items():
        value = env.get(variable, "")
        if len(value) < MIN_PASSWORD_LENGTH:
            problems.append(f"{variable} ({'unset' if not value else f'{len(value)} characters'})")
        else:
            passwords[user] = value
    if problems:
        raise AccessError(
            f"ClickHouse user passwords: need at least {MIN_PASSWORD_LENGTH} characters each; missing or short: "
            + ", ".join(problems)
        )
    return passwords


def is_embedded(client: Client) -> bool:
    """Whether `client` talks to the embedded chDB (which has no user directories)."""
    # clickhouse_connect's embedded client is clickhouse_connect.driver._chdbclient.ChdbClient.
    return type(client).__name__ == "ChdbClient"


def apply_access(client: Client, database: str, passwords: Mapping[str, str]) -> bool:
    """Create/refresh the roles, users, profiles and quotas; returns False (nothing done) on embedded chDB.

    `passwords` maps each of USERS to its password. Raises AccessError naming the statement that failed, or
    when the server still has a passwordless `default` user (see `check_default_user`).
    """
    if is_embedded(client):
        logger.info("embedded ClickHouse: no users or roles to apply (chDB has one built-in user)")
        return False
    missing = sorted(set(USERS) - set(passwords))
    if missing:
        raise AccessError(f"apply_access: no password for ClickHouse user(s) {missing}")
    check_default_user(client)
    for statement in render_access(database):
        names = statement_parameters(statement)
        parameters = {name: passwords[name.removesuffix("_password")] for name in names}
        try:
            client.command(statement, parameters=parameters or None)
        except Exception as exc:
            # The first line names the object; parameters are never echoed (they are passwords).
            first_line = statement.splitlines()[0]
            raise AccessError(f"access control on database {database!r} failed at {first_line!r}: {exc}") from exc
    logger.info("applied ClickHouse access control (users %s) to database %s", ", ".join(USERS), database)
    return True


def schema_is_current(client: Client, database: str) -> bool:
    """Whether every packaged migration is recorded in `database`, using only what the `ingest` role may do
    (EXISTS, SELECT on schema_migrations): a flow running as `ingest` calls this and skips `apply_schema`,
    whose CREATE ... IF NOT EXISTS statements need CREATE privileges even when nothing is created."""
    quoted = quote_database(database)
    if client.command(f"EXISTS DATABASE {quoted}") != 1 or client.command(f"EXISTS TABLE {quoted}.schema_migrations") != 1:
        return False
    recorded = {int(row[0]) for row in client.query(f"SELECT version FROM {quoted}.schema_migrations FINAL").result_rows}
    return all(migration.version in recorded for migration in load_migrations())


def check_default_user(client: Client) -> None:
    """Refuse a server whose `default` user has no password: anyone reaching the port would be an admin.

    The `default` user lives in the server's users.xml, which SQL cannot change: give it a password (the
    official image: CLICKHOUSE_PASSWORD) or remove it (CLICKHOUSE_SKIP_USER_SETUP with your own users.xml).
    """
    rows = client.query("SELECT name, auth_type FROM system.users WHERE name = 'default'").result_rows
    for _name, auth_types in rows:
        kinds = auth_types if isinstance(auth_types, (list, tuple)) else [auth_types]
        if not kinds or any(str(kind) == "no_password" for kind in kinds):
            raise AccessError(
                "the ClickHouse server has a passwordless `default` user; set its password (official image: "
                "CLICKHOUSE_PASSWORD) or remove it before applying PlantPulse access control"
            )


def default_login_works(settings: Settings) -> bool:
    """Whether CLICKHOUSE_URL accepts `default` with an empty password (the stock users.xml does): system.users
    shows such a user as plaintext_password, like any other, so only a login attempt tells."""
    from pydantic import SecretStr

    from connectors.clickhouse_client import connect

    if settings.clickhouse_is_embedded:
        return False
    probe = settings.model_copy(update={"clickhouse_user": "default", "clickhouse_password": SecretStr("")})
    try:
        client = connect(probe)
    except Exception as exc:
        if "AUTHENTICATION_FAILED" in str(exc) or "Code: 516" in str(exc):
            return False
        raise
    try:
        return client.command("SELECT 1") == 1
    except Exception as exc:
        if "AUTHENTICATION_FAILED" in str(exc) or "Code: 516" in str(exc):
            return False
        raise
    finally:
        client.close()


def migrate(settings: Settings, passwords: dict[str, str]) -> bool:
    """Apply the schema and the access control to CLICKHOUSE_URL as the administrator in CLICKHOUSE_USER (the
    migration step of compose and Kubernetes: `plantpulse sql migrate`); False when the engine has no users."""
    from connectors.clickhouse_client import connect
    from connectors.clickhouse_schema import apply_schema

    if default_login_works(settings):
        raise AccessError(f"{redacted_url(settings.clickhouse_url)} lets `default` log in without a password; set one "
                          "(official image: CLICKHOUSE_PASSWORD) before applying PlantPulse access control")
    client = connect(settings)
    try:
        apply_schema(client, settings.clickhouse_database)
        return apply_access(client, settings.clickhouse_database, passwords)
    finally:
        client.close()


def main() -> int:
    """Apply the schema and the access control to CLICKHOUSE_URL as the administrator in CLICKHOUSE_USER."""
    logging.basicConfig(level=logging.INFO)
    applied = migrate(Settings(), passwords_from_env())
    print("access control applied" if applied else "embedded chDB: no access control to apply")
    return 0


if __name__ == "__main__":
    sys.exit(main())
