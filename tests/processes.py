"""Helpers for tests that run PlantPulse commands as real processes."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from plantpulse.settings import Settings

PLANTPULSE = [sys.executable, "-m", "plantpulse.cli"]


def scrape(port: int) -> dict[str, float] | None:
    """A process's Prometheus samples by exposition name (labels included), or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return None
    samples = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def flow_env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `plantpulse` process on the test's broker and topics, plus `extra`."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TELEMETRY_TOPIC": settings.telemetry_topic,
        "ALERTS_TOPIC": settings.alerts_topic,
        "DEADLETTER_TOPIC": settings.deadletter_topic,
        "DATA_DIR": str(data_dir),
        **extra,
    }
