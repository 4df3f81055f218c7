"""`plantpulse sql migrate`: the one-shot ClickHouse migration step of compose and Kubernetes.

Applies the packaged schema (connectors/sql/NNN_*.sql, recorded in `schema_migrations`) and, on a server, the
users, roles, profiles and quotas of `connectors.clickhouse_access` with the passwords from
CLICKHOUSE_{INGEST,GRAFANA,ANALYST,OPERATOR}_PASSWORD. Idempotent: run it at every deployment. Embedded chDB has
no users, so there only the schema is applied (and no password variable is needed).
"""

from __future__ import annotations

from plantpulse.settings import Settings


def migrate(settings: Settings) -> str:
    """Apply schema and access control to CLICKHOUSE_URL as CLICKHOUSE_USER; returns what was done, one line.

    :raises AccessError: (a RuntimeError) passwords missing or short, a passwordless `default` user, a statement
        refused; connection errors as the client raises them.
    """
    from connectors.clickhouse_access import migrate as apply_schema_and_access
    from connectors.clickhouse_access import passwords_from_env

    passwords = {} if settings.clickhouse_is_embedded else passwords_from_env()
    applied = apply_schema_and_access(settings, passwords)
    done = f"schema of database {settings.clickhouse_database} is current"
    return done + ("; users and roles applied" if applied else "; embedded chDB: no users to apply")
