"""Rescaling, proven: the live flow stopped mid-stream and resumed from its recovery store as 1, 2, 3, then 1 process.

Each process is `plantpulse run` with a StatefulSet pod's environment: BYTEWAX_POD_NAME=plantpulse-flow-<ordinal>
(the process id), BYTEWAX_STATEFULSET_NAME, BYTEWAX_SERVICE_NAME, BYTEWAX_REPLICAS=<M>, and its own RECOVERY_DIR
(the pod's volume). On loopback every "pod" is 127.0.0.1, so BYTEWAX_ADDRESSES gives the M addresses with a port
each, where Kubernetes resolves plantpulse-flow-<i>.plantpulse-flow:2101. A scale step is what `kubectl scale` does:
SIGTERM to every process (each drains and snapshots its final epoch, exit 0), then M new ones.

The raw lake, `window_stats FINAL`, incidents and alerts must equal a single uninterrupted run of the live flow on
the same topic: nothing lost, nothing duplicated. What does not run here: a Kubernetes cluster (the README's
"Scaling" gives the kubectl steps these process steps mirror).
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from bench.pods import Pods
from connectors.clickhouse import run_sql
from connectors.lake import read_lake
from connectors.topics import ensure_topics
from flows.telemetry import build_flow
from sim import Simulator, build_fleet, produce
from tests.brokerkit import isolated_settings
from tests.processes import assert_exactly_once, flow_env, sql, wait_until_caught_up
from tests.test_recovery_crash import _assert_same_incidents, committed_epoch

pytestmark = pytest.mark.integration

ALERTS = ("SELECT alert_id, machine_id, rule_id, kind, severity, toUnixTimestamp64Milli(window_start) AS window_start "
          "FROM alerts FINAL ORDER BY alert_id")


def resume_offsets(store: Path) -> dict[str, int]:
    """Where the telemetry source resumes: each Kafka partition's next offset in the last committed snapshot of the
    store (read from its SQLite partitions, independently of the flow)."""
    epoch = committed_epoch(store)
    offsets: dict[str, tuple[int, int]] = {}
    for part in sorted(store.glob("part-*.sqlite3")):
        with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%telemetry_in' "
                              "AND snap_epoch <= ?", (epoch,)).fetchall()
        for key, snap_epoch, change in rows:
            if change is not None and snap_epoch >= offsets.get(key, (-1, 0))[0]:
                offsets[key] = (snap_epoch, pickle.loads(change))
    return {key: offset for key, (_epoch, offset) in offsets.items()}


def test_rescale_1_2_3_1_equals_an_uninterrupted_run(broker, chdb_dir: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = isolated_settings(broker.bootstrap, tmp_path, label="rescale", create_topics=True, partitions=4)
    recording = tmp_path / "rescale.parquet"
    summary = produce(settings, Simulator(build_fleet(40, seed=21), seed=21, faults="all", fault_rate=0.3),
                      count=40_000, record_path=recording)
    total = summary.messages
    env = flow_env(
        settings, tmp_path,
        MACHINES_FILE=str(tmp_path / "rescale.machines.csv"),
        CLICKHOUSE_URL=f"chdb://{tmp_path / 'chdb'}",  # ClickHouse and the lake: shared services in Kubernetes
        RECOVERY_PARTITIONS="2",  # fewer than the 3 processes of the widest step: they still resume from it
        SNAPSHOT_INTERVAL_SECONDS="0.5",
        CLICKHOUSE_FLUSH_SECONDS="0.2",
        KAFKA_BATCH_SIZE="300",  # small polls: the stops land in the middle of the stream
    )
    store = tmp_path / "pod-0" / "recovery"
    resumed_at = [0]
    started_pods: list[Pods] = []
    try:
        for step, replicas in enumerate((1, 2, 3)):
            pods = Pods(env, tmp_path, replicas, log_prefix=f"step{step}-")
            started_pods.append(pods)
            epoch_before = committed_epoch(store) if store.exists() else 0
            deadline = time.monotonic() + 90
            # Stop once this step has committed a snapshot of its own (state moved on) while the topic still holds more.
            while not (store.exists() and committed_epoch(store) >= epoch_before + 2 and pods.received() > 0):
                pods.check_running()
                assert time.monotonic() < deadline, f"step {step} ({replicas} pods) committed no snapshot"
                time.sleep(0.05)
            assert pods.stop(30) == [0] * replicas, f"step {step}: every pod drains and exits 0 on SIGTERM"
            resumed_at.append(sum(resume_offsets(store).values()))
            assert resumed_at[-2] < resumed_at[-1] < total, (
                f"step {step} must stop mid-stream: resume offsets {resumed_at} of {total} messages")
            # Only process 0's volume holds recovery partitions (the others keep only the lake's small markers).
            assert len(list(store.glob("part-*.sqlite3"))) == 2
            assert [list((tmp_path / f"pod-{i}" / "recovery").glob("part-*")) for i in range(1, replicas)] == [
                [] for _ in range(1, replicas)]

        # The last step reads the rest of the stream in full-size polls, and the stream's end closes its last
        # windows by idleness sooner than the default 15 s (settings that may change at any restart). Idle-closing
        # counts wall-clock silence from the resume on: the resumed processes must read on within that time, which a
        # cluster starting on this loaded 2-core machine does not always do within a few seconds.
        final = Pods({**env, "KAFKA_BATCH_SIZE": "10000", "IDLE_CLOSE_SECONDS": "6"}, tmp_path, 1, log_prefix="step3-")
        started_pods.append(final)
        wait_until_caught_up(final.metrics[0], final.processes[0], final.logs[0])
        assert final.stop(30) == [0]
    finally:
        for pods in started_pods:  # a failed step leaves nothing running
            for process in pods.processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    elapsed = time.monotonic() - started
    print(f"rescaling 1 -> 2 -> 3 -> 1 processes over {total:,} messages: {elapsed:.1f} s; the steps resumed at "
          f"offsets {resumed_at[1:]}")

    readings = pq.read_table(recording).to_pandas()
    lake = read_lake(f"file://{tmp_path / 'lake'}").to_pandas()
    assert_exactly_once(readings, lake, env)  # lake once each, window_stats FINAL = reference, alerts unique

    # The same input through the live flow once, uninterrupted, in this process.
    suffix = uuid.uuid4().hex[:8]
    reference = settings.model_copy(update={
        "alerts_topic": f"alerts-unscaled-{suffix}", "deadletter_topic": f"deadletter-unscaled-{suffix}",
        "incidents_topic": f"incidents-unscaled-{suffix}", "incident_commands_topic": f"commands-unscaled-{suffix}",
        "data_dir": tmp_path / "unscaled", "lake_url": f"file://{tmp_path / 'unscaled' / 'lake'}",
        "clickhouse_url": f"chdb://{chdb_dir}",
        "clickhouse_database": f"unscaled_{suffix}", "machines_file": tmp_path / "rescale.machines.csv",
        "idle_close_seconds": 3600, "metrics_port": 0,
    })
    ensure_topics(reference)
    run_main(build_flow(reference, tail=False))
    unscaled_lake = read_lake(f"file://{tmp_path / 'unscaled' / 'lake'}").to_pandas()
    key = ["machine_id", "seq"]
    assert (lake.sort_values(key)[key].values.tolist() == unscaled_lake.sort_values(key)[key].values.tolist())
    columns, rows = run_sql(reference, ALERTS)
    expected_alerts = pd.DataFrame(rows, columns=columns)
    actual_alerts = sql(env, ALERTS)
    assert len(expected_alerts) > 0
    assert actual_alerts.values.tolist() == expected_alerts.values.tolist()
    _assert_same_incidents(reference, env)
    print(f"rescaling test: {time.monotonic() - started:.1f} s in all, {elapsed:.1f} s of it the four steps")
