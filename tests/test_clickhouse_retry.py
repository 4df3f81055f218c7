"""The connector pieces that need no database: backoff policy, routing, error classification."""

from __future__ import annotations

import random
import zlib

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from connectors.clickhouse import ClickHouseSink, is_transient
from connectors.clickhouse_schema import load_migrations, quote_database, split_statements
from connectors.retry import Backoff
from plantpulse.settings import Settings


def test_backoff_grows_exponentially_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=0.2, maximum=10.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next_delay() == 0.2


def test_backoff_jitter_stays_within_bounds_and_survives_long_outages() -> None:
    backoff = Backoff(initial=1.0, maximum=4.0, jitter=0.25, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5000)]  # days of retries must not overflow
    assert delays[0] == pytest.approx(1.0, abs=0.25)
    assert all(0.75 <= d <= 4.0 for d in delays)
    assert backoff.failures == 5000


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}, {"jitter": 1}])
def test_backoff_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)


def test_partitions_and_routing_are_stable_across_processes() -> None:
    sink = ClickHouseSink(Settings(clickhouse_url="chdb:///unused", clickhouse_sink_partitions=3))
    assert sink.list_parts() == ["clickhouse-0", "clickhouse-1", "clickhouse-2"]
    # crc32, not Python's per-process salted hash().
    assert sink.part_fn("window_stats") == zlib.crc32(b"window_stats") == 2_189_858_021


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OperationalError("connection refused"), True),
        (DatabaseError("Code: 252. Too many parts", code=252), True),
        (DatabaseError("HTTP 502 from proxy"), True),
        (OSError("disk full"), True),
        (DatabaseError("Code: 16. No such column", code=16), False),
        (ProgrammingError("unknown table"), False),
        (TypeError("bad value"), False),
    ],
)
def test_insert_errors_are_classified(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_sql_splitter_ignores_semicolons_in_comments_and_strings() -> None:
    script = "-- a; comment\nCREATE TABLE t (a String DEFAULT ';') ENGINE = Memory; /* x; y */ SELECT 'it''s;' ;\n"
    assert split_statements(script) == ["CREATE TABLE t (a String DEFAULT ';') ENGINE = Memory", "SELECT 'it''s;'"]


def test_migrations_are_numbered_and_use_the_database_placeholder() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        for statement in split_statements(migration.sql):
            assert "{database}." in statement or "DATABASE IF NOT EXISTS {database}" in statement, statement[:80]


def test_database_names_are_checked_before_they_reach_ddl() -> None:
    assert quote_database("plantpulse") == "`plantpulse`"
    with pytest.raises(ValueError, match="CLICKHOUSE_DATABASE='x; DROP'"):
        quote_database("x; DROP")
