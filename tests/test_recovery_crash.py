"""Crash test: the flow runs with recovery and is SIGKILLed at random moments, three times, then catches up.

Afterwards the raw lake holds every reading exactly once, `window_stats FINAL` equals the reference
computed from the simulator's recording, alerts are not duplicated, and the anomaly models (part of the
snapshots) scored every window exactly as an uninterrupted run of the live flow on the same topic does, and
the incidents (also in the snapshots) are those of the uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from connectors.broker import free_port
from connectors.clickhouse import run_sql
from connectors.lake import read_lake
from connectors.topics import ensure_topics
from flows.telemetry import build_flow
from plantpulse.settings import Settings
from sim import Simulator, build_fleet, produce
from tests.brokerkit import isolated_settings
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

SCORES = ("SELECT machine_id, toUnixTimestamp64Milli(window_start) AS window_start, model, detector, score, threshold, "
          "warming_up, is_anomaly, alert_raised, top_features FROM anomaly_scores FINAL ORDER BY machine_id, window_start")


@dataclass
class CrashedRun:
    settings: Settings
    env: dict[str, str]
    recording: Path
    work: Path


@pytest.fixture(scope="module")
def crashed(broker, tmp_path_factory: pytest.TempPathFactory) -> CrashedRun:
    """100,000 readings (100 machines, 1,000 each: every model gets past its warm-up) through `plantpulse run` with
    recovery, killed three times, the fourth run catching up."""
    tmp_path = tmp_path_factory.mktemp("crash")
    settings = isolated_settings(broker.bootstrap, tmp_path, label="crash", create_topics=True, partitions=4)
    recording = tmp_path / "crash.parquet"
    summary = produce(settings, Simulator(build_fleet(100, seed=9), seed=9, faults="all", fault_rate=0.2),
                      count=100_000, record_path=recording)
    assert summary.messages >= 100_000
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
    recovery = tmp_path / "recovery"
    for attempt in range(4):
        resumed_from = committed_epoch(recovery)
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
                # The first kill lands before the store's first commit (a restart from scratch); the others
                # after this run committed a snapshot of its own, so the next run resumes mid-stream.
                while attempt > 0 and committed_epoch(recovery) <= resumed_from:
                    assert process.poll() is None and time.monotonic() - started < 60, f"run {attempt} never committed"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.2, 1.5) if attempt == 0 else rng.uniform(0.05, 0.5))
                assert process.poll() is None, (tmp_path / f"run-{attempt}.log").read_text()[-2000:]
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                continue
            wait_until_caught_up(port, process, tmp_path / f"run-{attempt}.log")
        finally:
            stop(process)
    assert committed_epoch(recovery) > 0
    return CrashedRun(settings, env, recording, tmp_path)


def committed_epoch(recovery_dir: Path) -> int:
    """The epoch a run would resume from: the lowest epoch committed by all partitions of the Bytewax
    recovery store (read from its SQLite files; 0 while a partition has not committed yet)."""
    parts = sorted(recovery_dir.glob("part-*.sqlite3"))
    epochs = []
    for part in parts:
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1)) as db:
                rows = db.execute("SELECT commit_epoch FROM commits").fetchall()
        except sqlite3.OperationalError:  # being written or not created yet: ask again later
            return 0
        epochs.append(max((r[0] for r in rows), default=0))
    return min(epochs, default=0)


def test_sigkill_three_times_then_exactly_once(crashed: CrashedRun) -> None:
    readings = pq.read_table(crashed.recording).to_pandas()
    lake = read_lake(f"file://{crashed.work / 'lake'}").to_pandas()
    assert_exactly_once(readings, lake, crashed.env)
    assert sql(crashed.env, "SELECT count() AS n FROM alerts FINAL")["n"][0] > 0


def test_killed_and_resumed_models_score_like_an_uninterrupted_run(
    crashed: CrashedRun, chdb_dir: Path, tmp_path: Path
) -> None:
    """The live flow run once, without recovery or kills, on the same topic: same anomaly_scores FINAL."""
    suffix = uuid.uuid4().hex[:8]
    reference = crashed.settings.model_copy(update={
        "alerts_topic": f"alerts-reference-{suffix}", "deadletter_topic": f"deadletter-reference-{suffix}",
        "incidents_topic": f"incidents-reference-{suffix}", "incident_commands_topic": f"commands-reference-{suffix}",
        "data_dir": tmp_path, "clickhouse_url": f"chdb://{chdb_dir}", "clickhouse_database": f"reference_{suffix}",
        "machines_file": crashed.work / "crash.machines.csv", "idle_close_seconds": 3600, "metrics_port": 0,
    })
    ensure_topics(reference)
    run_main(build_flow(reference, tail=False))
    columns, rows = run_sql(reference, SCORES)
    expected = pd.DataFrame(rows, columns=columns)
    actual = sql(crashed.env, SCORES)
    print(f"scores past warm-up: {(~expected['warming_up'].astype(bool)).sum()} of {len(expected)}")
    assert (~expected["warming_up"].astype(bool)).sum() > 1_000, "models past warm-up take part"
    assert len(actual) == len(expected)
    for column in ("machine_id", "model", "detector", "top_features"):
        assert actual[column].tolist() == expected[column].tolist(), column
    for column in ("window_start", "warming_up", "is_anomaly", "alert_raised"):
        assert actual[column].astype("int64").tolist() == expected[column].astype("int64").tolist(), column
    for column in ("score", "threshold"):
        np.testing.assert_allclose(actual[column].astype(float), expected[column].astype(float), rtol=1e-12,
                                   equal_nan=True, err_msg=column)
    anomaly_alerts = sql(crashed.env, "SELECT count() AS n FROM alerts FINAL WHERE kind = 'anomaly'")["n"][0]
    assert anomaly_alerts == int(expected["alert_raised"].astype(bool).sum())
    _assert_same_incidents(reference, crashed.env)


INCIDENTS = ("SELECT incident_id, kind, rule_id, severity, toUnixTimestamp64Milli(opened_window_start) AS opened, "
             "toUnixTimestamp64Milli(first_seen_ts) AS first_seen, toUnixTimestamp64Milli(last_seen_ts) AS last_seen, "
             "detections, peak_value, status, resolved_reason FROM incidents FINAL ORDER BY incident_id")
EVENTS = "SELECT incident_id, version, transition FROM incident_events FINAL ORDER BY incident_id, version"


def _assert_same_incidents(reference: Settings, crashed_env: dict[str, str]) -> None:
    """Incidents (part of the snapshots) after three SIGKILLs equal those of the uninterrupted run: the same ids,
    detections, peaks and resolutions, and the same transitions (a replayed one replaced its twin)."""
    expected = pd.DataFrame(run_sql(reference, INCIDENTS)[1], columns=run_sql(reference, INCIDENTS)[0])
    actual = sql(crashed_env, INCIDENTS)
    print(f"incidents of the uninterrupted run: {expected['kind'].value_counts().to_dict()}")
    assert len(expected) >= 10, "the faults open incidents of both kinds"
    # the simulator's instrument faults may add sensor incidents; they must survive the kills the same way
    assert {"threshold", "anomaly"} <= set(expected["kind"]) <= {"threshold", "anomaly", "sensor"}
    # The killed run's last process outlives the stream: machines silent for STALE_AFTER_SECONDS resolve their
    # open incidents (reason stale); the bounded reference run ends before that. Everything else is equal.
    extra = sorted(set(actual["incident_id"]) - set(expected["incident_id"]))
    missing = sorted(set(expected["incident_id"]) - set(actual["incident_id"]))
    assert not extra and not missing, f"incidents only after the kills {extra[:5]}, only without them {missing[:5]}"
    stale = actual["resolved_reason"] == "stale"
    assert (expected.loc[stale.values, "status"] != "resolved").all()
    for column in ("incident_id", "kind", "rule_id", "severity", "opened", "first_seen", "last_seen", "detections"):
        assert actual[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(actual["peak_value"].astype(float), expected["peak_value"].astype(float), rtol=1e-12)
    for column in ("status", "resolved_reason"):
        assert actual.loc[~stale, column].tolist() == expected.loc[~stale.values, column].tolist(), column
    expected_events = pd.DataFrame(run_sql(reference, EVENTS)[1], columns=run_sql(reference, EVENTS)[0])
    actual_events = sql(crashed_env, EVENTS)
    actual_events = actual_events[~actual_events["incident_id"].isin(actual.loc[stale, "incident_id"]) |
                                  (actual_events["transition"] != "resolved")]
    assert actual_events.values.tolist() == expected_events.values.tolist()
