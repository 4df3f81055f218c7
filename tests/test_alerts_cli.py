"""`plantpulse alerts list/ack/comment/resolve` while `plantpulse run` owns the embedded database.

Real parts: the embedded broker, the flow as a process with embedded chDB, the CLI as processes. The CLI
publishes commands to the incident-commands topic and reads incidents from the incidents topic; afterwards
the flow's ClickHouse tables hold the audit trail.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.broker import free_port
from connectors.topics import read_topic
from tests.processes import PLANTPULSE, flow_env, scrape, sql, stop

pytestmark = pytest.mark.integration


def _readings(base_ms: int) -> list[tuple[bytes, bytes]]:
    """Two machines, 1 reading/s for 120 s; H1 runs above 95 degC from second 30 to the end (an open incident)."""
    messages = []
    for machine in ("H1", "H2"):
        for i in range(120):
            hot = machine == "H1" and i >= 30
            reading = {"v": 1, "machine_id": machine, "ts": base_ms + i * 1000, "seq": i,
                       "temperature": 101.0 if hot else 60.0, "pressure": 5.0, "vibration": 2.0, "rpm": 1500.0,
                       "power": 30.0, "status": "running"}
            messages.append((machine.encode(), orjson.dumps(reading)))
    return messages


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(PLANTPULSE + ["alerts", *args], env=env, capture_output=True, text=True, timeout=120)


def test_operators_ack_comment_and_resolve_while_the_flow_runs(kafka_settings, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=2)
    port = free_port()
    env = flow_env(settings, tmp_path, METRICS_PORT=str(port), CLICKHOUSE_FLUSH_SECONDS="0.2")
    cli_env = {**env, "METRICS_PORT": "0"}
    log = tmp_path / "run.log"
    flow = subprocess.Popen(PLANTPULSE + ["run"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while scrape(port) is None:
            assert flow.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        base_ms = (int(time.time() * 1000) // 10_000) * 10_000 - 200_000
        producer = Producer(settings.kafka_config())
        for key, value in _readings(base_ms):
            producer.produce(settings.telemetry_topic, value, key)
        # A malformed command goes to the dead-letter topic with its reason; the flow goes on.
        producer.produce(settings.incident_commands_topic, b'{"action": "explode", "incident_id": "H1/x/1", "by": "x"}')
        assert producer.flush(30) == 0

        expected_id = f"H1/overheat_critical/{base_ms + 40_000}"  # 20 s from second 30: window [40 s, 50 s)
        deadline = time.monotonic() + 60
        while True:
            listed = _cli(cli_env, "list", "--open", "--format", "json")
            assert listed.returncode == 0, listed.stderr
            rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
            if rows:
                break
            assert flow.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        assert [(r["incident_id"], r["status"], r["severity"]) for r in rows] == [(expected_id, "open", "critical")]

        acked = _cli(cli_env, "ack", expected_id, "--by", "ana", "--note", "on my way")
        assert acked.returncode == 0, acked.stderr
        assert "acknowledged" in acked.stdout
        twice = _cli(cli_env, "ack", expected_id, "--by", "bo")
        assert twice.returncode == 2 and "already acknowledged by ana" in twice.stderr
        unknown = _cli(cli_env, "ack", "H2/overheat_critical/0", "--by", "bo")
        assert unknown.returncode == 2 and "no incident" in unknown.stderr
        assert _cli(cli_env, "comment", expected_id, "--by", "bo", "--note", "fan blocked").returncode == 0
        listed = _cli(cli_env, "list", "--machine", "H1", "--format", "json")
        assert [orjson.loads(line)["acknowledged_by"] for line in listed.stdout.splitlines()] == ["ana"]
        resolved = _cli(cli_env, "resolve", expected_id, "--by", "ana", "--note", "fan cleaned")
        assert resolved.returncode == 0, resolved.stderr
        assert _cli(cli_env, "list", "--open", "--format", "json").stdout.strip() == ""
        letters = read_topic(settings, settings.deadletter_topic)
        reasons = [dict(r.headers).get("reason") for r in letters]
        assert reasons == [b"invalid_command"]
    finally:
        stop(flow)
    trail = sql(env, "SELECT version, transition, status, actor, note, toUnixTimestamp64Milli(acknowledged_at) - "
                     "toUnixTimestamp64Milli(opened_at) AS to_ack FROM incident_events FINAL "
                     f"WHERE incident_id = '{expected_id}' ORDER BY version")
    assert trail["transition"].tolist() == ["opened", "acknowledged", "commented", "resolved"]
    assert trail["status"].tolist() == ["open", "acknowledged", "acknowledged", "resolved"]
    assert trail["actor"].tolist() == ["plantpulse", "ana", "bo", "ana"]
    assert trail["note"].tolist()[1:] == ["on my way", "fan blocked", "fan cleaned"]
    assert trail["to_ack"].iloc[-1] >= 0  # time to acknowledge, by SQL
    current = sql(env, "SELECT status, resolved_reason, resolved_by FROM incidents FINAL")
    assert current.values.tolist() == [["resolved", "manual", "ana"]]
    listed = subprocess.run(PLANTPULSE + ["alerts", "list", "--source", "clickhouse", "--format", "json"],
                            env={**env, "METRICS_PORT": "0"}, capture_output=True, text=True, timeout=60)
    assert [orjson.loads(line)["status"] for line in listed.stdout.splitlines()] == ["resolved"], listed.stderr
