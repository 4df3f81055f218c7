"""Every output becomes visible within its stated bound on a stream that goes quiet, and a clean stop
(SIGTERM) writes what is due.

The flow runs as `plantpulse run` with the default timing settings (SNAPSHOT_INTERVAL_SECONDS=10,
IDLE_CLOSE_SECONDS=15, STALE_AFTER_SECONDS=30, CLICKHOUSE_FLUSH_SECONDS=1) and recovery on. One burst of
readings (and three invalid messages) is produced, then nothing more: whatever still waits in a buffer
must come out on a timer, not because later data pushed it. The bounds asserted here are the ones in
the README's "Delivery guarantees" table, plus a slack for a loaded 2-core machine; the measured times
are printed (`pytest -s`) for the closing notes.

The embedded ClickHouse cannot be queried while the flow owns it, so ClickHouse visibility is read from
each row's `ingested_at` (stamped by the server when the insert was made) after the flow stopped, and the
rows must predate the stop: a stop writes what is buffered, so a row first written by the stop would show
up, but with an `ingested_at` after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.broker import free_port
from connectors.lake import read_lake, read_quarantine
from connectors.topics import read_topic
from plantpulse.settings import Settings
from tests.processes import PLANTPULSE, flow_env, scrape, sql

pytestmark = pytest.mark.integration

MACHINES = [f"Q{i:05d}" for i in range(5)]
STEP_MS = 500
PER_MACHINE = 80  # 40 s of event time: four 10 s windows per machine
INVALID = [b"{not json", b'{"v": 1, "machine_id": "Q00001"}', b'{"v": 1, "machine_id": "Q00002", "ts": 1, "seq": 1,'
           b' "temperature": 1, "pressure": 1, "vibration": 1, "rpm": 1, "power": 1, "status": "exploded"}']
# Slack over each bound for reading the burst and for a loaded machine; the bounds themselves are the
# settings' sums stated in the README.
SLACK_S = 5.0


def burst(base_ms: int) -> list[tuple[bytes, bytes]]:
    """(key, value) readings: 5 machines x 80 readings, 0.5 s apart. Q00000 runs above 95 degC from
    base + 19 s, so its 20 s overheat breach completes in the last window, the one only idleness closes."""
    messages = []
    for machine in MACHINES:
        for i in range(PER_MACHINE):
            ts = base_ms + i * STEP_MS
            hot = machine == MACHINES[0] and ts >= base_ms + 19_000
            reading = {"v": 1, "machine_id": machine, "ts": ts, "seq": i, "temperature": 100.0 if hot else 60.0 + i % 3,
                       "pressure": 5.0, "vibration": 2.0, "rpm": 1500.0, "power": 30.0, "status": "running"}
            messages.append((machine.encode(), orjson.dumps(reading)))
    return messages


def produce(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> float:
    producer = Producer(settings.kafka_config())
    for key, value in messages:
        producer.produce(settings.telemetry_topic, value, key)
    if producer.flush(30) != 0:
        raise RuntimeError("test producer: messages still queued after 30 s")
    return time.time()


def test_every_output_is_visible_within_its_bound_on_a_quiet_stream(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=2)
    defaults = Settings(data_dir=tmp_path)
    port = free_port()
    env = flow_env(settings, tmp_path, RECOVERY_DIR=str(tmp_path / "recovery"), METRICS_PORT=str(port))
    for name in ("SNAPSHOT_INTERVAL_SECONDS", "IDLE_CLOSE_SECONDS", "STALE_AFTER_SECONDS", "CLICKHOUSE_FLUSH_SECONDS",
                 "LAKE_FILE_MAX_AGE_SECONDS"):
        env.pop(name, None)  # the defaults are what is under test
    log = tmp_path / "run.log"
    process = subprocess.Popen(PLANTPULSE + ["run"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while scrape(port) is None:  # the flow is up and polling before the burst
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the flow did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(1.0)
        base_ms = (int(time.time() * 1000) // 10_000) * 10_000 - 30_000
        readings = burst(base_ms)
        produced_at = produce(settings, readings + [(None, value) for value in INVALID])

        seen: dict[str, float] = {}
        lake_url = f"file://{tmp_path / 'lake'}"
        stop_at = produced_at + defaults.stale_after_seconds + 1 + defaults.clickhouse_flush_seconds + SLACK_S
        stale_at = None  # when the flow counted every machine stale
        while time.time() < stop_at:
            if process.poll() is not None:
                raise AssertionError(f"the flow exited: {log.read_text()[-2000:]}")
            now = time.time() - produced_at
            metrics = scrape(port) or {}
            if stale_at is None and metrics.get("plantpulse_stale_transitions_total", 0) >= len(MACHINES):
                stale_at = now
            # Stop early once nothing is left to come: the polled outputs are all seen, every machine turned stale
            # and the ClickHouse buffers are empty a flush interval later (the last rows, the stale states, were
            # inserted). Whether they really were is checked below from `ingested_at`, as without the early stop.
            if (len(seen) == 4 and stale_at is not None and now - stale_at > defaults.clickhouse_flush_seconds + 1
                    and metrics.get("plantpulse_clickhouse_buffered_rows") == 0):
                break
            if "lake" not in seen and read_lake(lake_url).num_rows == len(readings):
                seen["lake"] = now
            if "quarantine" not in seen and read_quarantine(lake_url).num_rows == len(INVALID):
                seen["quarantine"] = now
            if "deadletter_topic" not in seen and len(read_topic(settings, settings.deadletter_topic, 5)) == len(INVALID):
                seen["deadletter_topic"] = now
            if "alerts_topic" not in seen and read_topic(settings, settings.alerts_topic, 5):
                seen["alerts_topic"] = now
            time.sleep(0.25)
        stopped_at = time.time()
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    snapshot_bound = defaults.snapshot_interval_seconds + SLACK_S
    window_bound = defaults.idle_close_seconds + 1 + defaults.clickhouse_flush_seconds + SLACK_S
    stale_bound = defaults.stale_after_seconds + 1 + defaults.clickhouse_flush_seconds + SLACK_S
    query_env = {k: v for k, v in env.items() if k != "RECOVERY_DIR"}

    # Rows and newest `ingested_at` of each table, in one `plantpulse sql` process (each one opens the database).
    outputs = {"window_stats": ("window_stats", "1"), "anomaly_scores": ("anomaly_scores", "1"),
               "alerts_table": ("alerts", "rule_id = 'overheat_critical'"),
               "machine_state": ("machine_state", "state = 'stale'")}
    frame = sql(query_env, " UNION ALL ".join(
        f"SELECT '{name}' AS output, count() AS n, toUnixTimestamp64Milli(max(ingested_at)) AS newest "
        f"FROM {table} FINAL WHERE {where}" for name, (table, where) in outputs.items())).set_index("output")
    assert sorted(frame.index) == sorted(outputs)
    for name in outputs:
        seen[name] = int(frame.loc[name, "newest"]) / 1000.0 - produced_at
    windows, scores, alerts, states = (int(frame.loc[name, "n"]) for name in outputs)
    print("\nseconds from the burst to visibility:", json.dumps({k: round(v, 2) for k, v in sorted(seen.items())}))

    assert (windows, scores, alerts, states) == (len(MACHINES) * 4, len(MACHINES) * 4, 1, len(MACHINES))
    assert seen["lake"] <= snapshot_bound and seen["quarantine"] <= snapshot_bound
    assert seen["deadletter_topic"] <= SLACK_S
    for output in ("alerts_topic", "window_stats", "anomaly_scores", "alerts_table"):
        assert seen[output] <= window_bound, f"{output}: {seen[output]:.1f} s > {window_bound} s"
    assert seen["machine_state"] <= stale_bound
    assert max(seen.values()) < stopped_at - produced_at, "every output was visible before the stop wrote anything"


def test_a_clean_stop_writes_what_is_due_and_a_resume_stays_exactly_once(kafka_settings, tmp_path: Path) -> None:
    """With a snapshot interval far longer than the run, nothing reaches the lake while the flow runs (the
    positive control: the rows really were waiting); SIGTERM must write them before the process exits.
    The stop also committed a final snapshot: the restart resumes from the same recovery store and reads
    only the second burst, and the lake then holds both bursts once. The first run created the recovery store
    with RECOVERY_PARTITIONS files (tests/test_cli.py runs the same sequence as `python -m bytewax.run`)."""
    settings = kafka_settings(create_topics=True, partitions=2)
    port = free_port()
    env = flow_env(settings, tmp_path, RECOVERY_DIR=str(tmp_path / "recovery"), METRICS_PORT=str(port),
                   SNAPSHOT_INTERVAL_SECONDS="600", RECOVERY_PARTITIONS="3")
    lake_url = f"file://{tmp_path / 'lake'}"
    base_ms = (int(time.time() * 1000) // 10_000) * 10_000 - 60_000
    first, second = burst(base_ms), burst(base_ms + PER_MACHINE * STEP_MS)
    second = [(k, v.replace(b'"seq":', b'"seq":1000')) for k, v in second]  # seq 1000.. continues each machine
    produce(settings, first)
    for attempt, (stop_signal, expected) in enumerate(((signal.SIGTERM, len(first)), (signal.SIGINT, len(first) * 2))):
        received = 0
        log = tmp_path / f"run-{attempt}.log"
        process = subprocess.Popen(PLANTPULSE + ["run"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            if attempt == 1:
                produce(settings, second)
            deadline = time.monotonic() + 90
            # The clean stop committed a final snapshot: the restart reads the second burst only.
            while received < len(first):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the flow did not read its input: {log.read_text()[-2000:]}")
                time.sleep(0.2)
                received = (scrape(port) or {}).get("plantpulse_readings_received_total", 0)
            time.sleep(0.5)
            assert (scrape(port) or {}).get("plantpulse_readings_received_total", 0) == len(first)
            if attempt == 0:
                assert read_lake(lake_url).num_rows == 0, "control: rows wait for the snapshot, 10 min away"
            os.killpg(process.pid, stop_signal)
            assert process.wait(60) == 0, log.read_text()[-2000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        lake = read_lake(lake_url)
        keys = sorted(zip(lake["machine_id"].to_pylist(), lake["seq"].to_pylist()))
        assert len(keys) == expected and len(set(keys)) == expected, f"stop {attempt}: {len(keys)} rows"
        assert len(list((tmp_path / "recovery").glob("part-*.sqlite3"))) == 3
