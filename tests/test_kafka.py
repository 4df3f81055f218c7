"""TelemetrySource against the embedded broker: completeness, batching, offsets, resume, tailing."""

from __future__ import annotations

import pickle
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from connectors.kafka import (
    CONSUMER_LAG,
    MESSAGES_CONSUMED,
    KafkaConsumeError,
    TelemetrySource,
    TopicNotFoundError,
)
from plantpulse.schema import RawBatch
from plantpulse.settings import Settings

pytestmark = pytest.mark.integration

SettingsFactory = Callable[..., Settings]
Delivered = dict[bytes, tuple[int, int]]  # value -> (partition, offset)


def produce(settings: Settings, values: list[bytes], topic: str | None = None) -> Delivered:
    """Produce with a plain confluent Producer; return where each value landed."""
    delivered: Delivered = {}
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            delivered[msg.value()] = (msg.partition(), msg.offset())

    producer = Producer({**settings.kafka_config(), "linger.ms": 20, "compression.type": "lz4"})
    for i, value in enumerate(values):
        while True:
            try:
                key = b"M%04d" % (i % 997)
                producer.produce(topic or settings.telemetry_topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0 and not errors, errors[:3]
    assert len(delivered) == len(values)
    return delivered


def reading(i: int) -> bytes:
    return b'{"v":1,"machine_id":"M%04d","ts":%d,"seq":%d,"status":"running","temperature":70.5}' % (
        i % 997, 1_764_000_000_000 + i, i
    )


def explode(batch: RawBatch) -> list[tuple[int, int, bytes]]:
    return [(batch.partition, offset, value) for offset, value in zip(batch.offsets, batch.values, strict=True)]


def test_source_delivers_every_message_once_in_batches(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=4, kafka_batch_size=5_000)
    expected = produce(settings, [reading(i) for i in range(50_000)])
    assert {p for p, _ in expected.values()} == {0, 1, 2, 3}

    consumed_before = MESSAGES_CONSUMED.labels(settings.telemetry_topic)._value.get()
    batches: list[RawBatch] = []
    rows: list[tuple[int, int, bytes]] = []
    flow = Dataflow("source_once")
    raw = op.input("kafka", flow, TelemetrySource(settings, tail=False))
    op.output("batches", raw, TestingSink(batches))
    op.output("rows", op.flat_map("explode", raw, explode), TestingSink(rows))
    run_main(flow)

    assert len(rows) == 50_000
    assert {value: (p, o) for p, o, value in rows} == expected  # every message, right place, no duplicates
    assert len(batches) < len(rows) / 1000  # items are whole polls, not messages
    for batch in batches:
        assert isinstance(batch, RawBatch) and batch.topic == settings.telemetry_topic
        assert 0 < len(batch.offsets) <= 5_000
        assert len(batch.values) == len(batch.offsets) == len(batch.keys or [])
        assert batch.offsets == sorted(batch.offsets)
        assert all(key is not None and key.startswith(b"M") for key in batch.keys or [])
    per_partition: dict[int, list[int]] = defaultdict(list)
    for p, offset, _ in rows:
        per_partition[p].append(offset)
    for p, offsets in per_partition.items():
        assert offsets == list(range(len(offsets))), f"partition {p} offsets not contiguous from 0"
    assert MESSAGES_CONSUMED.labels(settings.telemetry_topic)._value.get() - consumed_before == 50_000
    for p in range(4):  # every partition reached its end: nothing left to read
        assert CONSUMER_LAG.labels(settings.telemetry_topic, str(p))._value.get() == 0


def _committed_snapshots(db_dir: Path, step_id: str) -> dict[str, int]:
    """Source snapshots of the last committed epoch, read from Bytewax 0.21's SQLite recovery store."""
    snapshots: dict[str, int] = {}
    with sqlite3.connect(db_dir / "part-0.sqlite3") as db:
        (commit_epoch,) = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        rows = db.execute(
            "SELECT state_key, ser_change FROM snaps WHERE step_id = ? AND snap_epoch <= ? ORDER BY snap_epoch",
            (step_id, commit_epoch),
        )
        for key, blob in rows:
            snapshots[key] = pickle.loads(blob)
    return snapshots


def test_source_resumes_from_snapshot_offsets(kafka_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = kafka_settings(create_topics=True, partitions=4, kafka_batch_size=400)
    expected = produce(settings, [reading(i) for i in range(20_000)])
    db_dir = tmp_path / "recovery"
    db_dir.mkdir()
    init_db_dir(db_dir, 1)

    def build(out: list[tuple[int, int, bytes]], fail_after_batches: int | None) -> Dataflow:
        seen = [0]

        def crash_midway(batch: RawBatch) -> RawBatch:
            seen[0] += 1
            if fail_after_batches is not None and seen[0] > fail_after_batches:
                raise RuntimeError("simulated crash")
            return batch

        flow = Dataflow("resume")
        raw = op.input("kafka", flow, TelemetrySource(settings, tail=False))
        checked = op.map("crash_midway", raw, crash_midway)
        op.output("rows", op.flat_map("explode", checked, explode), TestingSink(out))
        return flow

    first: list[tuple[int, int, bytes]] = []
    # epoch_interval=0: every activation closes an epoch, so there are snapshots to resume from.
    with pytest.raises(Exception, match="crash_midway"):
        run_main(build(first, 12), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db_dir))
    assert 0 < len(first) < len(expected)
    snapshots = _committed_snapshots(db_dir, "resume.kafka")
    assert set(snapshots) == {f"{settings.telemetry_topic}-{p}" for p in range(4)}

    second: list[tuple[int, int, bytes]] = []
    run_main(build(second, None), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db_dir))

    assert {v: (p, o) for p, o, v in first + second} == expected  # union has everything
    last_first: dict[int, int] = defaultdict(lambda: -1)
    for p, offset, _ in first:
        last_first[p] = max(last_first[p], offset)
    resumed: dict[int, list[int]] = defaultdict(list)
    for p, offset, _ in second:
        resumed[p].append(offset)
    total = {p: sum(1 for q, _ in expected.values() if q == p) for p in range(4)}
    for p in range(4):
        snapshot = snapshots[f"{settings.telemetry_topic}-{p}"]
        assert 0 <= snapshot <= last_first[p] + 1, "snapshot ahead of what was delivered: a gap"
        # The resumed run starts exactly at the snapshot and reads on without gaps.
        assert resumed[p] == list(range(snapshot, total[p])), f"partition {p}"
    assert len(second) < len(expected), "the second run must resume, not start over"


def _poll(part: object, want: int, timeout_s: float = 10.0) -> list[RawBatch]:
    """Call next_batch (honouring next_awake) until `want` messages arrived."""
    got: list[RawBatch] = []
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    while sum(len(b.offsets) for b in got) < want:
        assert datetime.now(UTC) < deadline, f"only {got} after {timeout_s} s"
        awake = part.next_awake()  # type: ignore[attr-defined]
        if awake is not None and awake > datetime.now(UTC):
            continue
        batch = part.next_batch()  # type: ignore[attr-defined]
        assert len(batch) <= 1, "at most one RawBatch per next_batch"
        got.extend(batch)
    return got


def test_partition_tails_snapshots_and_resumes(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=1)
    topic = settings.telemetry_topic
    produce(settings, [b"a%d" % i for i in range(10)])
    source = TelemetrySource(settings, tail=True)
    assert source.list_parts() == [f"{topic}-0"]

    part = source.build_part("step", f"{topic}-0", None)
    assert part.snapshot() == 0  # OFFSET_BEGINNING is read as offset 0
    assert [o for b in _poll(part, 10) for o in b.offsets] == list(range(10))
    assert part.snapshot() == 10
    # Caught up: empty polls, and the worker is told to come back a bit later instead of spinning.
    for _ in range(20):
        assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None and awake > datetime.now(UTC) - timedelta(seconds=1)
    produce(settings, [b"b%d" % i for i in range(5)])
    tail = _poll(part, 5)
    assert [o for b in tail for o in b.offsets] == list(range(10, 15))
    assert [v for b in tail for v in b.values] == [b"b%d" % i for i in range(5)]
    assert part.snapshot() == 15
    part.close()

    resumed = source.build_part("step", f"{topic}-0", 12)
    assert [o for b in _poll(resumed, 3) for o in b.offsets] == [12, 13, 14]
    resumed.close()

    batch_mode = TelemetrySource(settings, starting_offset=7, tail=False).build_part("step", f"{topic}-0", None)
    assert [o for b in _poll(batch_mode, 8) for o in b.offsets] == list(range(7, 15))
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    with pytest.raises(StopIteration):
        while datetime.now(UTC) < deadline:
            assert batch_mode.next_batch() == []
    batch_mode.close()


def test_snapshot_past_an_emptied_partition_restarts_at_zero(kafka_settings: SettingsFactory) -> None:
    """A memory-only broker restarted under a kept recovery store: don't skip the new messages."""
    settings = kafka_settings(create_topics=True, partitions=1)
    part = TelemetrySource(settings, tail=True).build_part("step", f"{settings.telemetry_topic}-0", 5_000)
    assert part.snapshot() == 0
    produce(settings, [b"new-%d" % i for i in range(3)])
    assert [v for b in _poll(part, 3) for v in b.values] == [b"new-0", b"new-1", b"new-2"]
    part.close()


def test_empty_topic_completes_in_batch_mode(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=3)
    out: list[RawBatch] = []
    flow = Dataflow("empty")
    op.output("out", op.input("kafka", flow, TelemetrySource(settings, tail=False)), TestingSink(out))
    run_main(flow)
    assert out == []


def test_missing_topic_is_an_error_and_not_created(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings()
    with pytest.raises(TopicNotFoundError, match=settings.telemetry_topic):
        TelemetrySource(settings).list_parts()
    topics = AdminClient(settings.kafka_config()).list_topics(timeout=5).topics
    assert settings.telemetry_topic not in topics


def test_build_part_rejects_another_topics_partition(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings()
    with pytest.raises(ValueError, match=r"step 'flow.kafka'.*'other-topic-0'"):
        TelemetrySource(settings).build_part("flow.kafka", "other-topic-0", None)


class _FakeConsumer:
    """Returns canned messages; enough of the Consumer interface for the partition."""

    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = batches

    def assign(self, partitions: list[object]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def get_watermark_offsets(self, tp: object, timeout: float | None = None, cached: bool = False) -> tuple[int, int]:
        return (0, 100)

    def close(self) -> None:
        pass


def test_consumer_errors_raise_naming_topic_and_partition(
    kafka_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = kafka_settings()
    data = [Message(topic="t", partition=2, offset=o, value=b"x", key=None) for o in (40, 41)]
    eof = Message(topic="t", partition=2, offset=42, error=KafkaError(KafkaError._PARTITION_EOF))
    broken = Message(topic="t", partition=2, offset=42, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    fake = _FakeConsumer([[*data, eof], [broken]])
    monkeypatch.setattr("connectors.kafka.Consumer", lambda config: fake)

    part = TelemetrySource(settings, tail=True, starting_offset=OFFSET_BEGINNING).build_part(
        "flow.kafka", f"{settings.telemetry_topic}-2", 40
    )
    (batch,) = part.next_batch()
    assert batch.offsets == [40, 41] and part.snapshot() == 42  # EOF dropped, tailing continues
    expected = rf"'flow.kafka'.*{settings.telemetry_topic}.*partition 2.*UNKNOWN_TOPIC_OR_PART"
    with pytest.raises(KafkaConsumeError, match=expected):
        part.next_batch()
