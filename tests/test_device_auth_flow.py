"""Device identity through the broker and the live flow (issue 16): the simulator signs, the flow verifies,
and forged readings reach the dead-letter topic with their reasons, never the windows.

The signature travels in the message value, so the broker needs nothing special; the embedded one (tansu)
cannot do TLS (see tests/test_transport_tls.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from connectors.broker import EmbeddedBroker
from connectors.clickhouse import run_sql
from connectors.device_registry import KeyRegistry
from connectors.kafka import read_topic
from flows import metrics
from flows.telemetry import build_flow
from sim import ProduceError, Simulator, build_fleet, produce
from tests.brokerkit import isolated_settings

pytestmark = pytest.mark.integration


def _signed(key_id: str, secret: bytes, body: bytes) -> bytes:
    """`body` as a device sends it (the documented wire format, computed with the standard library)."""
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return body[:-1] + b',"pp_kid":"' + key_id.encode() + b'","pp_sig":"' + mac.encode() + b'"}'


def test_signed_fleet_passes_and_forgeries_are_dead_lettered(broker: EmbeddedBroker, chdb_dir: Path,
                                                              tmp_path: Path) -> None:
    keys_file = tmp_path / "device-keys.json"
    settings = isolated_settings(broker.bootstrap, tmp_path, label="devauth", create_topics=True,
                                 device_auth="required", device_keys_file=keys_file, metrics_port=0,
                                 clickhouse_url=f"chdb://{chdb_dir}",  # the session's one embedded engine
                                 clickhouse_database=f"devauth_{uuid.uuid4().hex[:8]}")
    fleet = build_fleet(6, seed=3)
    start_ms = int(time.time() * 1000) - 120_000
    simulator = Simulator(fleet, seed=3, faults="none", start_ts_ms=start_ms)
    with pytest.raises(ProduceError, match="6 of 6 simulated machines have no active device key"):
        produce(settings, simulator, count=10)
    summary = produce(settings, simulator, count=600, create_missing_keys=True)  # the simulator signs each one
    assert summary.readings == 600

    registry = KeyRegistry.load(keys_file)
    victim, other = fleet[0].machine_id, fleet[1].machine_id
    stolen = registry.signing_key(other)
    revoked = registry.rotate(victim)
    registry.revoke(revoked.key_id)
    registry.save(keys_file)

    def body(machine_id: str, seq: int) -> bytes:
        return json.dumps({"machine_id": machine_id, "ts": start_ms + 500, "seq": 10_000 + seq,
                           "status": "running", "temperature": 150.0}).encode()

    forged = {
        "unsigned": body(victim, 1),
        "bad_signature": _signed(stolen.key_id, b"\0" * 32, body(victim, 2)),
        "unknown_device": _signed(f"{victim}.k99", stolen.secret, body(victim, 3)),
        "revoked_key": _signed(revoked.key_id, revoked.secret, body(victim, 4)),
        "identity_mismatch": _signed(stolen.key_id, stolen.secret, body(victim, 5)),
    }
    producer = Producer(settings.kafka_config())
    for value in forged.values():
        producer.produce(settings.telemetry_topic, value, victim.encode())
    assert producer.flush(30) == 0
    before = {reason: metrics.DEAD_LETTERS.labels(reason)._value.get() for reason in forged}

    run_main(build_flow(settings, tail=False))

    letters = read_topic(settings, settings.deadletter_topic)
    assert sorted((dict(letter.headers)["reason"].decode(), letter.value) for letter in letters) == sorted(
        forged.items())  # each forgery dead-lettered as it was sent, with its own reason
    assert {reason: metrics.DEAD_LETTERS.labels(reason)._value.get() - before[reason] for reason in forged} == {
        reason: 1.0 for reason in forged}
    # Only the simulator's 600 signed readings reached the windows; none of the forged 150 degC readings.
    _, ((readings, hottest),) = run_sql(settings, "SELECT sum(readings), max(temperature_max) FROM window_stats FINAL")
    assert readings == 600 and hottest < 150.0
