"""Two real `plantpulse run` processes forming one Bytewax cluster on loopback (`-i/-a`), as k8s runs it.

Keyed window state is spread over both processes by shard; the ClickHouse sink has one partition, so
exactly one process opens the embedded database. The window rows must equal the reference computed from
the simulator's recording, whichever process held which machines.
"""

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
import pyarrow.parquet as pq
import pytest

from connectors.broker import free_port
from sim import Simulator, build_fleet, produce
from tests.processes import flow_env, scrape
from tests.reference import window_stats_reference

pytestmark = pytest.mark.integration


def _metric(port: int, name: str) -> float:
    return (scrape(port) or {}).get(name, 0.0)


def test_two_process_cluster_equals_reference(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=4)
    fleet = build_fleet(40, seed=5)
    recording = tmp_path / "cluster.parquet"
    summary = produce(settings, Simulator(fleet, seed=5, faults="all", fault_rate=0.2), duration_s=300,
                      record_path=recording)
    ports = [free_port(), free_port()]
    metrics_ports = [free_port(), free_port()]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    env = flow_env(
        settings,
        tmp_path,
        MACHINES_FILE=str(tmp_path / "cluster.machines.csv"),
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'chdb'}",
        CLICKHOUSE_FLUSH_SECONDS="0.2",
        IDLE_CLOSE_SECONDS="3",  # the stream ends: its last windows close by idleness
        STATE_SHARDS="16",
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "plantpulse.cli", "run", "-i", str(i), "-a", addresses, "-p", "2"],
            env={**env, "METRICS_PORT": str(metrics_ports[i])},
            stdout=(tmp_path / f"flow-{i}.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        stable_since, last = time.monotonic(), None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            for i, process in enumerate(processes):
                if process.poll() is not None:
                    pytest.fail(f"process {i} exited: {(tmp_path / f'flow-{i}.log').read_text()[-2000:]}")
            received = sum(_metric(p, "plantpulse_readings_received_total") for p in metrics_ports)
            emitted = sum(_metric(p, "plantpulse_windows_emitted_total") for p in metrics_ports)
            written = sum(
                _metric(p, 'plantpulse_clickhouse_rows_inserted_total{table="window_stats"}') for p in metrics_ports
            )
            state = (received, emitted, written)
            if state != last:
                stable_since, last = time.monotonic(), state
            elif received >= summary.messages and emitted == written > 0 and time.monotonic() - stable_since > 5:
                break
        else:
            pytest.fail(f"cluster did not settle: received/emitted/written = {last}")
        # Both processes did window work: the shards really are spread over the cluster.
        assert all(_metric(p, "plantpulse_readings_accepted_total") > 0 for p in metrics_ports)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGINT)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    query = "SELECT * EXCEPT (ingested_at) FROM window_stats FINAL ORDER BY machine_id, window_start"
    out = subprocess.run(
        [sys.executable, "-m", "plantpulse.cli", "sql", query, "--format", "json"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    actual = pd.DataFrame([json.loads(line) for line in out.splitlines()])
    readings = pq.read_table(recording).to_pandas()
    expected = window_stats_reference(readings, 10_000)
    assert len(actual) == len(expected)
    for column in ("window_start", "last_ts"):
        got = pd.to_datetime(actual[column], utc=True).dt.as_unit("ms").astype("int64")
        assert got.tolist() == expected[column].tolist()
    for column in ("readings", "temperature_count", "rpm_count"):
        assert actual[column].tolist() == expected[column].tolist()
    for column in ("temperature_mean", "pressure_max", "vibration_std", "secs_running"):
        np.testing.assert_allclose(actual[column].astype(float), expected[column].astype(float), rtol=1e-9, err_msg=column)
