"""KafkaRecordSink, read_topic and topic administration against the embedded broker."""

from __future__ import annotations

import json
from collections.abc import Callable

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka.admin import AdminClient, ConfigResource

from connectors.kafka import (
    KafkaRecord,
    KafkaRecordSink,
    TelemetrySource,
    dead_letter_record,
    read_topic,
)
from connectors.kafka_sink import MESSAGES_PRODUCED
from connectors.topics import TopicNotFoundError, ensure_topics, partition_count
from plantpulse.schema import RawBatch
from plantpulse.settings import Settings

pytestmark = pytest.mark.integration

SettingsFactory = Callable[..., Settings]


def _run_sink(settings: Settings, topic: str, records: list[KafkaRecord], **sink_args: object) -> None:
    flow = Dataflow("sink")
    op.output("kafka", op.input("records", flow, TestingSource(records, batch_size=97)),
              KafkaRecordSink(settings, topic, **sink_args))
    run_main(flow)


def test_sink_roundtrip_with_headers(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=3)
    topic = settings.alerts_topic
    records = [
        KafkaRecord(b"M%d" % (i % 7), json.dumps({"alert": i}).encode(), [("rule", b"r%d" % i), ("bin", bytes([0, i]))])
        for i in range(256)
    ]
    records += [KafkaRecord(None, b"no-key-no-headers"), KafkaRecord(b"k", b"empty-headers", [])]
    before = MESSAGES_PRODUCED.labels(topic)._value.get()

    _run_sink(settings, topic, records)

    got = read_topic(settings, topic)
    assert len(got) == len(records)
    assert {r.value: (r.key, r.headers) for r in got} == {r.value: (r.key, r.headers or []) for r in records}
    # Same key -> same partition, in production order.
    for key in {r.key for r in records if r.key is not None}:
        mine = [r for r in got if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in mine] == [r.value for r in records if r.key == key]
    assert MESSAGES_PRODUCED.labels(topic)._value.get() - before == len(records)


def test_dead_letters_keep_original_bytes_and_provenance(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=1)
    original = b'{"machine_id": "M1", "ts": \xff\xfe broken'
    record = dead_letter_record(
        original, reason="invalid_json", detail="x" * 5000, source_topic=settings.telemetry_topic,
        source_partition=3, source_offset=123456, key=b"M1",
    )
    _run_sink(settings, settings.deadletter_topic, [record])

    (got,) = read_topic(settings, settings.deadletter_topic)
    assert got.value == original and got.key == b"M1"
    headers = dict(got.headers)
    assert list(headers) == ["reason", "detail", "source_topic", "source_partition", "source_offset"]
    assert headers["reason"] == b"invalid_json"
    assert headers["detail"] == b"x" * 1024  # capped
    assert headers["source_topic"] == settings.telemetry_topic.encode()
    assert (headers["source_partition"], headers["source_offset"]) == (b"3", b"123456")


def test_sink_backpressure_never_drops(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=2)
    records = [KafkaRecord(None, b"%06d" % i) for i in range(20_000)]
    part = KafkaRecordSink(settings, settings.alerts_topic, add_config={"queue.buffering.max.messages": 500}).build(
        "bp", 0, 1
    )
    part.write_batch(records)  # 40x the local queue: must block on BufferError, not drop
    part.close()
    assert sorted(r.value for r in read_topic(settings, settings.alerts_topic)) == [r.value for r in records]


def test_sink_output_feeds_the_source(kafka_settings: SettingsFactory) -> None:
    """Round trip through both connectors: what the sink writes, the source reads as RawBatches."""
    settings = kafka_settings(create_topics=True, partitions=2)
    records = [KafkaRecord(b"M%d" % (i % 5), b"v%d" % i) for i in range(3_000)]
    _run_sink(settings, settings.telemetry_topic, records)
    out: list[RawBatch] = []
    flow = Dataflow("loop")
    op.output("out", op.input("kafka", flow, TelemetrySource(settings, tail=False)), TestingSink(out))
    run_main(flow)
    assert sorted(v for b in out for v in b.values) == sorted(r.value for r in records)


def test_read_topic_incrementally_with_start_offsets(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=3)
    topic = settings.alerts_topic
    part = KafkaRecordSink(settings, topic).build("alerts_out", 0, 1)
    part.write_batch([KafkaRecord(b"M%d" % i, b"first-%d" % i) for i in range(30)])
    positions: dict[int, int] = {}
    first = read_topic(settings, topic, start_offsets=positions, timeout_s=2)
    assert sorted(r.value for r in first) == sorted(b"first-%d" % i for i in range(30))
    # Every partition's end offset: here, the count of records it holds.
    assert positions == {p: sum(1 for r in first if r.partition == p) for p in range(3)}
    assert read_topic(settings, topic, start_offsets=positions, timeout_s=2) == []  # nothing new
    part.write_batch([KafkaRecord(b"M%d" % i, b"second-%d" % i) for i in range(10)])
    part.close()
    second = read_topic(settings, topic, start_offsets=positions, timeout_s=2)
    assert sorted(r.value for r in second) == sorted(b"second-%d" % i for i in range(10))


def test_read_topic_empty_and_missing(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(create_topics=True, partitions=4)
    assert read_topic(settings, settings.alerts_topic, timeout_s=10) == []
    with pytest.raises(TopicNotFoundError):
        read_topic(settings, "no-such-topic-" + settings.alerts_topic)


def test_ensure_topics_creates_configures_and_is_idempotent(kafka_settings: SettingsFactory) -> None:
    settings = kafka_settings(topic_partitions=3)
    names = [settings.telemetry_topic, settings.alerts_topic, settings.deadletter_topic]
    with pytest.raises(TopicNotFoundError, match=settings.telemetry_topic):
        partition_count(settings, settings.telemetry_topic)

    ensure_topics(settings)
    ensure_topics(settings)  # already there: no error
    ensure_topics(settings, partitions=5)  # existing topics are left alone
    assert [partition_count(settings, name) for name in names] == [3, 3, 3]

    admin = AdminClient(settings.kafka_config())
    futures = admin.describe_configs([ConfigResource("topic", name) for name in names])
    retention = {res.name: int(f.result()["retention.ms"].value) for res, f in futures.items()}
    assert retention[settings.telemetry_topic] == 7 * 86_400_000
    assert retention[settings.alerts_topic] == 30 * 86_400_000
    assert retention[settings.deadletter_topic] == 14 * 86_400_000


def test_ensure_topics_rejects_bad_names(kafka_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="invalid Kafka topic name 'bad topic'"):
        ensure_topics(kafka_settings(alerts_topic="bad topic"))
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        ensure_topics(kafka_settings(), partitions=0)
