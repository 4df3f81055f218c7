"""Anomaly models in the flows: injected drifts raise `anomaly` alerts through the live flow, steady machines
stay quiet, and the scores do not depend on workers or shards (one worker, a cluster, the replay).

The scenario is a healthy simulator fleet (`faults="none"`) with drifts injected here, after warm-up, into
machines that run throughout: the simulator's own faults begin within 45 s of the stream's start, before
any model has a baseline, so they cannot tell whether a drift is *detected*. Expectations (which machines
drift and when, which machines are steady) come from the recording, not from the flow.

The drifts are clear ones (+0.15 degC/s; vibration x3 within 20 s): how early subtler and slower drifts
are caught is measured by `python -m bench.model_quality` on the simulator's labelled faults. "Steady"
means running for the whole stream without an injected drift. Machines that stop and restart are
not asserted on: restart transients are what the model-quality benchmark (`bench.model_quality`, false
alarms per machine-day) measures, not a property of the wiring tested here.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from connectors.clickhouse import run_sql
from connectors.kafka import read_topic
from connectors.replay_sources import open_input
from connectors.topics import ensure_topics
from flows.pipeline import PipelineConfig
from flows.replay import replay
from flows.telemetry import build_flow
from models.spec import load_model_specs
from plantpulse.schema import SENSORS, RawBatch
from plantpulse.settings import PACKAGED_MODELS_FILE, Settings
from sim import Simulator, build_fleet, record_only
from tests import flowkit
from tests.brokerkit import isolated_settings

pytestmark = pytest.mark.integration

WINDOW_MS = 10_000
MACHINES, SECONDS, SEED = 60, 600, 11

ONSET_S = 300  # drift onset, seconds after each machine's first reading (after the models' warm-up)
DRIFTS = ("overheating", "overheating", "bearing_wear", "bearing_wear")
MAX_DELAY_WINDOWS = 8  # first alert at most this many windows after the onset window
SCORE_COLUMNS = ["machine_id", "window_start", "model", "detector", "score", "threshold", "warming_up", "is_anomaly",
                 "alert_raised", "top_features"]


def last_wednesday_8am_ms() -> int:
    """Start of the scenario: the simulated shift (day/weekday) is the same on every run, so is the
    scenario; recent enough for the tables' TTL. Not on a window boundary (+437 ms), like real clocks."""
    day = int(time.time()) // 86_400 - 1
    while (day + 3) % 7 != 2:  # 1970-01-01 was a Thursday (3); Wednesday is 2
        day -= 1
    return (day * 86_400 + 8 * 3_600) * 1000 + 437


@dataclass
class Scenario:
    messages: list[tuple[bytes, bytes]]  # (key, value) in send order
    machine_types: dict[str, str]
    machines_csv: Path
    labels: pd.DataFrame  # machine_id, fault, start_ts, end_ts (epoch ms)
    steady: list[str]


def drifted(
    kind: str, elapsed_s: np.ndarray, temperature: np.ndarray, vibration: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values after an injected drift `elapsed_s` seconds past its onset (negative: before it, unchanged)."""
    after = elapsed_s >= 0
    if kind == "overheating":  # +0.15 degC/s, capped at +30 degC
        return temperature + after * np.minimum(0.15 * np.maximum(elapsed_s, 0), 30.0), vibration
    # bearing wear: vibration up to 3x within 20 s (slower wear is the quality benchmark's subject)
    return temperature, vibration * (1 + after * 2.0 * np.minimum(np.maximum(elapsed_s, 0) / 20.0, 1.0))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    work = tmp_path_factory.mktemp("anomaly-scenario")
    path = work / "steady.parquet"
    simulator = Simulator(build_fleet(MACHINES, SEED), seed=SEED, faults="none", imperfections={},
                          start_ts_ms=last_wednesday_8am_ms())
    record_only(simulator, duration_s=SECONDS, path=path)
    recording = pq.read_table(path).to_pandas()
    always_running = recording.groupby("machine_id")["status"].agg(lambda s: bool((s == "running").all()))
    candidates = sorted(always_running[always_running].index)
    assert len(candidates) >= len(DRIFTS) + 10, "the seed must leave enough machines running throughout"
    drifting = dict(zip(candidates[:: max(1, len(candidates) // len(DRIFTS))][: len(DRIFTS)], DRIFTS))
    first_ts = recording.groupby("machine_id")["ts"].min()
    labels = []
    values = recording["raw"].tolist()
    for machine, kind in drifting.items():
        onset = int(first_ts[machine]) + ONSET_S * 1000
        rows = recording.index[recording["machine_id"] == machine]
        mine = recording.loc[rows]
        temperature, vibration = drifted(kind, (mine["ts"].to_numpy() - onset) / 1000.0,
                                         mine["temperature"].to_numpy(), mine["vibration"].to_numpy())
        for i, row, t, v in zip(rows, mine.itertuples(), temperature, vibration):
            reading = {"v": 1, "machine_id": machine, "ts": int(row.ts), "seq": int(row.seq), "status": row.status,
                       **{s: (None if pd.isna(getattr(row, s)) else float(getattr(row, s))) for s in SENSORS}}
            reading["temperature"], reading["vibration"] = round(float(t), 2), round(float(v), 3)
            values[i] = orjson.dumps(reading)
        labels.append({"machine_id": machine, "fault": kind, "start_ts": onset, "end_ts": int(mine["ts"].max())})
    types = pd.read_csv(work / "steady.machines.csv")
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    warmup = max(specs.for_type(t).warmup_windows for t in set(types["machine_type"]))
    assert (warmup + 3) * WINDOW_MS <= ONSET_S * 1000, "the drifts must begin after the models' warm-up"
    return Scenario(
        messages=list(zip(recording["key"].tolist(), values)),
        machine_types=dict(zip(types["machine_id"], types["machine_type"])),
        machines_csv=work / "steady.machines.csv",
        labels=pd.DataFrame(labels),
        steady=[m for m in candidates if m not in drifting],
    )


def produce_messages(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    for key, value in messages:
        while True:
            try:
                producer.produce(settings.telemetry_topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def live(broker, chdb_dir: Path, scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The live flow (`build_flow`) over the scenario produced to the broker; returns its settings."""
    work = tmp_path_factory.mktemp("anomaly-live")
    suffix = uuid.uuid4().hex[:8]
    settings = isolated_settings(
        broker.bootstrap,
        work,
        label="anomaly",
        topic_partitions=4,
        clickhouse_url=f"chdb://{chdb_dir}",
        clickhouse_database=f"anomaly_{suffix}",
        clickhouse_flush_seconds=0.2,
        machines_file=scenario.machines_csv,
        idle_close_seconds=3600,  # windows close by event time and at the end of the topic only
        max_event_age_seconds=0,  # the scenario may start up to 8 days ago
        metrics_port=0,
    )
    ensure_topics(settings)
    produce_messages(settings, scenario.messages)
    run_main(build_flow(settings, tail=False))
    return settings


def _query(settings: Settings, query: str) -> pd.DataFrame:
    columns, rows = run_sql(settings, query)
    return pd.DataFrame(rows, columns=columns)


def test_injected_drifts_raise_anomaly_alerts_and_steady_machines_stay_quiet(live: Settings, scenario: Scenario) -> None:
    alerts = _query(live, "SELECT alert_id, machine_id, sensor, toUnixTimestamp64Milli(window_start) AS ws, value, "
                          "threshold FROM alerts FINAL WHERE kind = 'anomaly'")
    assert len(alerts) > 0
    for label in scenario.labels.itertuples():
        mine = alerts[alerts["machine_id"] == label.machine_id].sort_values("ws")
        assert len(mine) > 0, f"drift on {label.machine_id} ({label.fault}) raised no anomaly alert"
        assert (mine["ws"] + WINDOW_MS > label.start_ts).all(), f"{label.machine_id}: alert before the drift began"
        onset_window = label.start_ts // WINDOW_MS * WINDOW_MS
        delay = (int(mine["ws"].iloc[0]) - onset_window) // WINDOW_MS
        assert delay <= MAX_DELAY_WINDOWS, (label.machine_id, label.fault, delay)
        expected_sensor = "temperature" if label.fault == "overheating" else "vibration"
        assert mine["sensor"].iloc[0] == expected_sensor, (label.machine_id, mine["sensor"].tolist())
        assert (mine["value"] > mine["threshold"]).all()
    quiet = alerts[alerts["machine_id"].isin(scenario.steady)]
    assert quiet.empty, f"anomaly alerts on steady machines: {quiet.to_dict('records')}"


def test_every_window_is_scored_and_anomaly_alerts_reach_table_and_topic(live: Settings) -> None:
    windows = _query(live, "SELECT machine_id, toUnixTimestamp64Milli(window_start) AS ws FROM window_stats FINAL")
    scores = _query(live, "SELECT machine_id, toUnixTimestamp64Milli(window_start) AS ws, alert_raised, warming_up, "
                          "threshold FROM anomaly_scores FINAL")
    assert len(scores) == len(windows) > 0
    assert set(zip(scores["machine_id"], scores["ws"])) == set(zip(windows["machine_id"], windows["ws"]))
    assert scores["threshold"].isna().equals(scores["warming_up"].astype(bool)), "a threshold exactly after warm-up"
    alerts = _query(live, "SELECT alert_id, machine_id, toUnixTimestamp64Milli(window_start) AS ws FROM alerts FINAL "
                          "WHERE kind = 'anomaly'")
    raised = scores[scores["alert_raised"].astype(bool)]
    assert set(zip(alerts["machine_id"], alerts["ws"])) == set(zip(raised["machine_id"], raised["ws"]))
    assert sorted(alerts["alert_id"]) == sorted(f"{m}/anomaly/{ws}" for m, ws in zip(raised["machine_id"], raised["ws"]))
    on_kafka = [orjson.loads(r.value) for r in read_topic(live, live.alerts_topic)]
    assert sorted(a["alert_id"] for a in on_kafka if a["kind"] == "anomaly") == sorted(alerts["alert_id"])


def test_replaying_the_live_flows_lake_scores_like_the_live_flow(live: Settings) -> None:
    """`plantpulse replay` on the raw lake the live flow wrote gives the scores the live flow stored."""
    data = open_input(live.lake_url)
    assert not data.raw and data.readings == MACHINES * SECONDS
    replayed = flowkit._frame([replay(data.items, PipelineConfig.from_settings(live), raw=False).scores])
    stored = _query(live, f"SELECT {', '.join(SCORE_COLUMNS)} FROM anomaly_scores FINAL")
    stored["window_start"] = stored["window_start"].map(lambda t: int(t.timestamp() * 1000))
    stored["threshold"] = stored["threshold"].astype(float)
    for frame in (stored, replayed):
        for column in ("warming_up", "is_anomaly", "alert_raised"):
            frame[column] = frame[column].astype(bool)
    pd.testing.assert_frame_equal(_canonical(replayed), _canonical(stored), check_dtype=False)


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[SCORE_COLUMNS].sort_values(["machine_id", "window_start"]).reset_index(drop=True)


def test_scores_do_not_depend_on_workers_or_shards(scenario: Scenario) -> None:
    """The same input on one worker (8 shards), a 3-worker cluster (8 shards) and the replay (1 shard)."""
    values = [value for _, value in scenario.messages]
    batches = flowkit.batches_of(values, 3_000)
    cfg = flowkit.config(lateness_ms=1_000, shards=8, machine_types=scenario.machine_types,
                         models=load_model_specs(PACKAGED_MODELS_FILE))
    one = flowkit.run_pipeline(batches, cfg, workers=1).anomaly_scores
    cluster = flowkit.run_pipeline(batches, cfg, workers=3).anomaly_scores
    replayed = replay([RawBatch("replay", -1, b.offsets, b.values) for b in batches], cfg, raw=True).scores
    replayed = flowkit._frame([replayed])
    assert len(one) > 0 and (~one["warming_up"]).sum() > 0 and one["alert_raised"].sum() >= len(DRIFTS)
    pd.testing.assert_frame_equal(_canonical(one), _canonical(cluster))
    pd.testing.assert_frame_equal(_canonical(one), _canonical(replayed))
    assert set(one[one["alert_raised"]]["machine_id"]) >= set(scenario.labels["machine_id"])


def test_replay_output_tables_are_the_documented_schemas(scenario: Scenario) -> None:
    """The replay returns window rows, scores and alerts in their Arrow schemas (what the report reads)."""
    from plantpulse.schema import (
        ALERT_ARROW_SCHEMA,
        ANOMALY_SCORE_ARROW_SCHEMA,
        WINDOW_STATS_ARROW_SCHEMA,
    )

    batches = flowkit.batches_of([value for _, value in scenario.messages[:20_000]], 5_000)
    cfg = flowkit.config(machine_types=scenario.machine_types, models=load_model_specs(PACKAGED_MODELS_FILE))
    out = replay(batches, cfg, raw=True)
    assert out.window_stats.schema.equals(WINDOW_STATS_ARROW_SCHEMA)
    assert out.scores.schema.equals(ANOMALY_SCORE_ARROW_SCHEMA)
    assert out.alerts.schema.equals(ALERT_ARROW_SCHEMA)
    assert out.scores.num_rows == out.window_stats.num_rows > 0
