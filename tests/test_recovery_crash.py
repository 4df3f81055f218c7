"""Crash test: the flow runs with recovery and is SIGKILLed at random moments, three times, then catches up.

Afterwards the raw lake holds every reading exactly once, `window_stats FINAL` equals the reference
computed from the simulator's recording, and alerts are not duplicated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.broker import free_port
from connectors.lake import read_lake
from sim import Simulator, build_fleet, produce
from tests.processes import (
    PLANTPULSE,
    assert_exactly_once,
    flow_env,
    scrape,
    sql,
    stop,
    wait_until_caught_up,
)

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
            wait_until_caught_up(port, process, tmp_path / f"run-{attempt}.log")
        finally:
            stop(process)

    readings = pq.read_table(recording).to_pandas()
    lake = read_lake(f"file://{tmp_path / 'lake'}").to_pandas()
    assert_exactly_once(readings, lake, env)
    assert sql(env, "SELECT count() AS n FROM alerts FINAL")["n"][0] > 0
