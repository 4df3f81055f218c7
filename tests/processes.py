"""Helpers for tests that run PlantPulse commands as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.pods import scrape
from plantpulse.settings import Settings
from tests.reference import window_stats_reference

PLANTPULSE = [sys.executable, "-m", "plantpulse.cli"]


def flow_env(settings: Settings, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a `plantpulse` process on the test's broker and topics, plus `extra`."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TELEMETRY_TOPIC": settings.telemetry_topic,
        "ALERTS_TOPIC": settings.alerts_topic,
        "DEADLETTER_TOPIC": settings.deadletter_topic,
        "INCIDENTS_TOPIC": settings.incidents_topic,
        "INCIDENT_COMMANDS_TOPIC": settings.incident_commands_topic,
        "DATA_DIR": str(data_dir),
        **extra,
    }


def stop(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a process started with `start_new_session=True`: SIGINT to its group, SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sql(env: dict[str, str], query: str) -> pd.DataFrame:
    """Run `plantpulse sql` in a process with `env` (the embedded database is free only then)."""
    out = subprocess.run(PLANTPULSE + ["sql", query, "--format", "json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return pd.DataFrame([json.loads(line) for line in out.splitlines()])


def wait_until_caught_up(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    """Until the flow has consumed its topic and its window rows stopped changing for 8 s."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the flow exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
        metrics = scrape(port) or {}
        lag = sum(v for k, v in metrics.items() if k.startswith("plantpulse_kafka_lag{"))
        state = (metrics.get("plantpulse_windows_emitted_total"),
                 metrics.get('plantpulse_clickhouse_rows_inserted_total{table="window_stats"}'), lag)
        if state != last:
            last, stable_since = state, time.monotonic()
        elif lag == 0 and time.monotonic() - stable_since > 8:  # idle close and snapshots are done
            return
    raise AssertionError(f"the flow did not catch up: {last}")


def assert_exactly_once(readings: pd.DataFrame, lake: pd.DataFrame, env: dict[str, str]) -> None:
    """The lake holds every recorded reading once (count, checksum over (machine_id, seq)); window_stats
    FINAL equals the reference computed from the recording; alerts are unique."""
    assert len(lake) == len(readings)
    assert not lake.duplicated(["machine_id", "seq"]).any()
    assert (pd.util.hash_pandas_object(lake[["machine_id", "seq"]], index=False).sum()
            == pd.util.hash_pandas_object(readings[["machine_id", "seq"]], index=False).sum())
    expected = window_stats_reference(readings, 10_000)
    actual = sql(env, "SELECT machine_id, toUnixTimestamp64Milli(window_start) AS window_start, readings, "
                      "temperature_mean, pressure_min, vibration_max, secs_running FROM window_stats FINAL "
                      "ORDER BY machine_id, window_start")
    assert len(actual) == len(expected)
    assert actual["readings"].tolist() == expected["readings"].tolist()
    assert actual["window_start"].astype("int64").tolist() == expected["window_start"].tolist()
    for column in ("temperature_mean", "pressure_min", "vibration_max", "secs_running"):
        np.testing.assert_allclose(actual[column].astype(float), expected[column].astype(float), rtol=1e-9)
    alerts = sql(env, "SELECT count() AS n, uniqExact(alert_id) AS unique_ids FROM alerts FINAL")
    assert alerts["n"][0] == alerts["unique_ids"][0]
