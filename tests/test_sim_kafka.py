"""The simulator against a real broker (tansu): keyed partitioning, per-machine order, delivery checks."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from connectors.broker import EmbeddedBroker
from plantpulse.schema import Reading
from plantpulse.settings import Settings
from sim import Simulator, build_fleet, produce
from sim.producer import ensure_topic

pytestmark = pytest.mark.integration
PARTITIONS = 4


@pytest.fixture
def sim_broker(broker: EmbeddedBroker) -> str:
    """The session's shared broker (tests/conftest.py); yields its bootstrap address."""
    return broker.bootstrap


def _settings(bootstrap: str, topic: str) -> Settings:
    return Settings(kafka_bootstrap_servers=bootstrap, telemetry_topic=topic, topic_partitions=PARTITIONS)


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list:
    """Every message of `topic` (all partitions from the beginning, via assign: no consumer group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "sim-test", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages, deadline = [], time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    raise RuntimeError(f"consume error: {message.error()}")
                messages.append(message)
        # A short extra poll would reveal unexpected extra messages.
        messages.extend(m for m in consumer.consume(num_messages=1000, timeout=1.0) if m.error() is None)
        return messages
    finally:
        consumer.close()


def test_produce_is_keyed_ordered_and_complete(sim_broker: str, tmp_path: Path) -> None:
    settings = _settings(sim_broker, "telemetry-sim")
    sim = Simulator(
        build_fleet(500, seed=21),
        seed=21,
        fault_rate=0.1,
        imperfections={"duplicates": 0.01, "out_of_order": 0.01, "late": 0.005, "malformed": 0.01, "clock_skew": 0.02},
    )
    summary = produce(settings, sim, count=20_000, record_path=tmp_path / "run.parquet")
    assert summary.messages == 20_000 and summary.topic == "telemetry-sim"
    assert summary.imperfections.get("duplicate", 0) > 0 and summary.labels_path.exists()

    messages = _consume_all(sim_broker, settings.telemetry_topic, 20_000)
    assert len(messages) == 20_000
    assert {m.partition() for m in messages} == set(range(PARTITIONS))
    partitions_of: dict[bytes, set[int]] = defaultdict(set)
    received: dict[bytes, list[bytes]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        partitions_of[message.key()].add(message.partition())
        received[message.key()].append(message.value())
    assert all(len(parts) == 1 for parts in partitions_of.values())  # a machine stays on one partition

    recording = pq.read_table(tmp_path / "run.parquet").to_pandas().sort_values("send_index")
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    for key, raw in zip(recording.key, recording.raw):
        sent[key].append(raw)
    assert received == sent  # per machine: exactly the recorded bytes, in send order

    decoder = msgspec.json.Decoder(Reading)
    on_time = recording[recording.imperfection == ""]
    for key, group in on_time.groupby("key"):
        seqs = [decoder.decode(raw).seq for raw in group.raw]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), key  # seq order per machine


def test_rate_mode_tracks_wall_clock(sim_broker: str) -> None:
    settings = _settings(sim_broker, "telemetry-paced")
    sim = Simulator(build_fleet(200, seed=3), seed=3, faults="none")
    started_ms = time.time() * 1000
    summary = produce(settings, sim, rate=10_000, duration_s=1.5)
    finished_ms = time.time() * 1000
    assert summary.messages == 15_000 and summary.interval_ms == 20.0
    assert 1.2 <= summary.wall_seconds <= 4.0
    assert started_ms - 1000 <= summary.start_ts_ms <= started_ms + 1000
    assert summary.end_ts_ms <= finished_ms
    messages = _consume_all(sim_broker, settings.telemetry_topic, 15_000)
    assert len(messages) == 15_000


def test_ensure_topic_is_idempotent(sim_broker: str) -> None:
    settings = _settings(sim_broker, "telemetry-twice")
    assert ensure_topic(settings) is True
    assert ensure_topic(settings) is False
