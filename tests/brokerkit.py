"""Settings on the session's broker with topics of their own, for fixtures of any scope."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

from connectors.topics import ensure_topics
from plantpulse.settings import Settings

_topic_counter = itertools.count(1)


def isolated_settings(
    bootstrap: str, data_dir: Path, *, label: str = "", create_topics: bool = False, partitions: int | None = None,
    **overrides: Any,
) -> Settings:
    """`Settings` on `bootstrap` with fresh telemetry/alerts/dead-letter/incident topic names (`label` names the test
    in them) and `data_dir`; keyword overrides go to `Settings`. With `create_topics` the topics are
    created with `partitions` (default `Settings.topic_partitions`) first."""
    suffix = f"{label}{'-' if label else ''}{next(_topic_counter)}-{uuid.uuid4().hex[:8]}"
    fields: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "telemetry_topic": f"telemetry-{suffix}",
        "alerts_topic": f"alerts-{suffix}",
        "deadletter_topic": f"deadletter-{suffix}",
        "incidents_topic": f"incidents-{suffix}",
        "incident_commands_topic": f"incident-commands-{suffix}",
        "data_dir": data_dir,
        **overrides,
    }
    settings = Settings(**fields)
    if create_topics:
        ensure_topics(settings, partitions)
    return settings
