"""Crash test: the flow runs with recovery and is SIGKILLed at random moments, three times, then catches up.

Afterwards the raw lake holds every reading exactly once, `window_stats FINAL` equals the reference
computed from the simulator's recording, and alerts are not duplicated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from connectors.broker import free_port
from connectors.lake import read_lake
from sim import Simulator, build_fleet, produce
from tests.processes import PLANTPULSE, flow_env, scrape
from tests.reference import window_stats_reference

pytestmark = pytest.mark.integration


def test_sigkill_three_times_then_exactly_once(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=4)
    recording = tmp_path / "crash.parquet"
    summary = produce(settings, Simulator(build_fleet(200, seed=9), seed=9, faults="all", fault_rate=0.2),
                      count=200_000, record_path=recording)
    assert summary.messages >= 200_000
    env = flow_env(
        settings,
        tmp_path,
        MACHINES_FILE=str(tmp_path / "crash.machines.csv"),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        SNAPSHOT_INTERVAL_SECONDS="1",
        CLICKHOUSE_FLUSH_SECONDS="0.2",
        IDLE_CLOSE_SECONDS="3",
        KAFKA_BATCH_SIZE="2000",  # smaller polls: the kills land in the middle of the stream
    )
    rng = random.Random(7)
    for attempt in range(4):
        port = free_port()
        process = subprocess.Popen(PLANTPULSE + ["run"], env={**env, "METRICS_PORT": str(port)},
                                   stdout=(tmp_path / f"run-{attempt}.log").open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            if attempt < 3:
                started = time.monotonic()
                while not (scrape(port) or {}).get("plantpulse_readings_received_total"):
                    assert process.poll() is None and time.monotonic() - started < 60, f"run {attempt} did not start"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.2, 1.5))
                assert process.poll() is None, (tmp_path / f"run-{attempt}.log").read_text()[-2000:]
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                continue
            _wait_until_caught_up(port, process, tmp_path / f"run-{attempt}.log")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    readings = pq.read_table(recording).to_pandas()
    lake = read_lake(f"file://{tmp_path / 'lake'}").to_pandas()
    assert len(lake) == len(readings)
    assert not lake.duplicated(["machine_id", "seq"]).any()
    assert (pd.util.hash_pandas_object(lake[["machine_id", "seq"]], index=False).sum()
            == pd.util.hash_pandas_object(readings[["machine_id", "seq"]], index=False).sum())

    expected = window_stats_reference(readings, 10_000)
    actual = _sql(env, "SELECT machine_id, toUnixTimestamp64Milli(window_start) AS window_start, readings, "
                       "temperature_mean, vibration_max, secs_running FROM window_stats FINAL "
                       "ORDER BY machine_id, window_start")
    assert len(actual) == len(expected)
    assert actual["readings"].tolist() == expected["readings"].tolist()
    assert actual["window_start"].astype("int64").tolist() == expected["window_start"].tolist()
    for column in ("temperature_mean", "vibration_max", "secs_running"):
        np.testing.assert_allclose(actual[column].astype(float), expected[column].astype(float), rtol=1e-9)
    alerts = _sql(env, "SELECT count() AS n, uniqExact(alert_id) AS unique_ids FROM alerts FINAL")
    assert alerts["n"][0] == alerts["unique_ids"][0] > 0


def _wait_until_caught_up(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.5)
        metrics = scrape(port) or {}
        lag = sum(v for k, v in metrics.items() if k.startswith("plantpulse_kafka_lag{"))
        state = (metrics.get("plantpulse_windows_emitted_total"),
                 metrics.get('plantpulse_clickhouse_rows_inserted_total{table="window_stats"}'), lag)
        if state != last:
            last, stable_since = state, time.monotonic()
        elif lag == 0 and time.monotonic() - stable_since > 8:  # idle close (3 s) + snapshots (1 s) done
            return
    pytest.fail(f"the flow did not catch up: {last}")


def _sql(env: dict[str, str], query: str) -> pd.DataFrame:
    out = subprocess.run(PLANTPULSE + ["sql", query, "--format", "json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return pd.DataFrame([json.loads(line) for line in out.splitlines()])
