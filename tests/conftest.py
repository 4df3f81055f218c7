"""Shared pytest fixtures.

- `broker`: one embedded tansu broker for the whole session (memory-only, starts in milliseconds).
- `kafka_settings`: a factory of `Settings` pointing at that broker, with topic names unique to each
  call, so tests never see each other's messages even though they share the broker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.broker import EmbeddedBroker
from plantpulse.settings import Settings
from tests.brokerkit import isolated_settings
from tests.dashboard_seed import DashboardSeed, close_clients, seed_dashboard_db

# The test session's one embedded ClickHouse holds dozens of databases; each one's rollup views would recompute
# every minute in the background and slow every query of the session. Tests force the rollups when they read
# them (connectors.clickhouse_schema.refresh_rollups), so the background refresh runs hourly here.
os.environ.setdefault("CLICKHOUSE_REFRESH_SECONDS", "3600")
# Tests about windows, models, sinks... send unsigned readings, so they switch device verification off here,
# explicitly; tests/test_device_auth.py turns it on (DEVICE_AUTH=required, the default outside tests) and the
# demo runs with it on.
os.environ.setdefault("DEVICE_AUTH", "off")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running embedded broker shared by the session; its log is kept in the session's tmp dir."""
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one embedded ClickHouse directory of the session: chDB opens one path per process, so every
    test shares it and isolates itself with a database of its own."""
    return tmp_path_factory.mktemp("chdb") / "engine"


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Factory: `kafka_settings(create_topics=False, partitions=None, **overrides) -> Settings`.

    Each call gets fresh telemetry/alerts/dead-letter topic names and `data_dir=tmp_path`; keyword
    overrides are passed to `Settings`. With `create_topics=True` the three topics are created with
    `partitions` (default `Settings.topic_partitions`) before the settings are returned.
    """

    def make(*, create_topics: bool = False, partitions: int | None = None, **overrides: Any) -> Settings:
        return isolated_settings(broker.bootstrap, tmp_path, create_topics=create_topics, partitions=partitions,
                                 **overrides)

    return make


@pytest.fixture(scope="session")
def dashboard_db(broker: EmbeddedBroker, chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[DashboardSeed]:
    """A chDB database seeded by a short simulator run through the real flow (faults, imperfections, incidents);
    see tests/dashboard_seed.py. Shared by the dashboard query and snapshot tests: they only read it."""
    yield seed_dashboard_db(broker.bootstrap, chdb_dir, tmp_path_factory.mktemp("dashboards"))
    close_clients()
