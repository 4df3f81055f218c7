"""No message may stop or stall the pipeline (issue 12): huge telemetry, bounded dead letters, and Kafka
records that cannot be delivered.

What the bundled tansu does with `max.message.bytes` (measured 2026-11-26): it accepts the config when the
topic is created and returns it from DescribeConfigs, but it does not enforce it - a 60 MB record was
accepted on a topic created with `max.message.bytes=1000`, and 5 MB on a topic created without configs.
`tansu broker` (0.6.0) has no option about message sizes either. So here the limit that bites is the producer's own
`message.max.bytes` (librdkafka, 1,000,000 by default): `produce()` raises MSG_SIZE_TOO_LARGE before the
record is even queued, which is what made `plantpulse run` exit. The tests still create the topics with
the configs a real Kafka would need (telemetry 8 MiB, dead letters 512 KiB); rejections that only a real
broker sends in a delivery report (MSG_SIZE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_RECORD) are
injected into the delivery callback of a real producer in the unit tests below.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.broker import EmbeddedBroker, free_port
from connectors.clickhouse import run_sql
from connectors.kafka import KafkaRecord, KafkaRecordSink, dead_letter_record, read_topic
from connectors.kafka_sink import (
    FATAL,
    PERMANENT,
    RECORDS_UNDELIVERABLE,
    RETRIABLE,
    _KafkaRecordSinkPartition,
    classify_error,
)
from connectors.lake_read import read_quarantine
from connectors.quarantine import UNDELIVERABLE, bounded
from connectors.retry import Backoff
from flows import metrics
from flows.telemetry import build_flow
from plantpulse.schema import QUARANTINE_ARROW_SCHEMA
from plantpulse.settings import Settings
from tests.brokerkit import isolated_settings

pytestmark = pytest.mark.integration

MiB = 2**20
WINDOW_MS = 10_000
BIG_SIZES = (900_000, 1_500_000, 5_000_000)  # 0.9 MB, 1.5 MB, 5 MB


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fast_backoff() -> Backoff:
    return Backoff(initial=0.05, maximum=0.5)


def _undeliverable(topic: str, error: str) -> float:
    return RECORDS_UNDELIVERABLE.labels(topic, error)._value.get()


def _create_topics(settings: Settings, partitions: int) -> None:
    """The three topics, with the size limits a real Kafka would need (tansu stores but ignores them)."""
    admin = AdminClient(settings.kafka_config())
    topics = [
        NewTopic(settings.telemetry_topic, partitions, 1, config={"max.message.bytes": str(8 * MiB)}),
        NewTopic(settings.deadletter_topic, 1, 1, config={"max.message.bytes": str(512 * 1024)}),
        NewTopic(settings.alerts_topic, 1, 1),
    ]
    for future in admin.create_topics(topics).values():
        future.result(10)


def _big_message(size: int, index: int) -> bytes:
    """Valid JSON of exactly `size` bytes (a reading with a huge extra field), unique per index."""
    head = json.dumps({"v": 1, "machine_id": f"BIG{index}", "ts": int(time.time() * 1000), "seq": index,
                       "status": "running", "note": ""})[:-2]
    return (head + "x" * (size - len(head) - 2) + '"}').encode()


def _workload(now_ms: int) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    """(key, value) messages: normal readings of 12 machines over 45 s, 30 duplicates, 2 malformed ones and
    the three big ones spread through the stream; plus what the flow must make of them."""
    start = now_ms - 600_000 - now_ms % WINDOW_MS
    normal = [
        (f"M{m:02d}".encode(), json.dumps({"machine_id": f"M{m:02d}", "ts": start + s * 1000, "seq": s, "status": "running",
                                           "temperature": 60.0 + m, "rpm": 1500.0}).encode())
        for s in range(45) for m in range(12)
    ]
    duplicates = normal[100:130]
    malformed = [(b"M00", b"{not json"), (b"M01", b'{"machine_id": "M01"}')]
    big = [(b"BIG%d" % i, _big_message(size, i)) for i, size in enumerate(BIG_SIZES)]
    messages = normal[:200] + [big[0]] + normal[200:400] + duplicates + [big[1]] + malformed + normal[400:] + [big[2]]
    windows = {(key, json.loads(value)["ts"] // WINDOW_MS) for key, value in normal}
    return messages, {"accepted": len(normal), "duplicates": len(duplicates), "rejected": malformed + big,
                      "big": [value for _, value in big], "windows": len(windows)}


def _produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({**settings.kafka_config(), "message.max.bytes": 8 * MiB, "linger.ms": 5})
    for key, value in messages:
        producer.produce(settings.telemetry_topic, value, key)
        producer.poll(0)
    assert producer.flush(30) == 0


def _counters() -> dict[str, float]:
    return {
        "received": metrics.READINGS_RECEIVED._value.get(),
        "accepted": metrics.READINGS_ACCEPTED._value.get(),
        "duplicates": metrics.DUPLICATES._value.get(),
        "dead": sum(child._value.get() for child in metrics.DEAD_LETTERS._metrics.values()),
        "windows": metrics.WINDOWS_EMITTED._value.get(),
    }


@pytest.mark.parametrize(
    "case",
    [
        # Defaults: dead letters are cut to 256 KiB and all reach their topic.
        {"name": "bounded"},
        # A dead-letter bound above what the producer may send (1,000,000 bytes): the 1.5 MB dead letter
        # (kept whole) and the 5 MB one (cut to 2 MiB) cannot be produced; they go to the quarantine as
        # `undeliverable` and the flow goes on. The quarantine cap (2 MiB) also cuts the 5 MB original.
        {"name": "misconfigured", "deadletter_max_value_bytes": 2 * MiB, "quarantine_max_value_bytes": 2 * MiB},
    ],
    ids=lambda case: case["name"],
)
def test_huge_messages_neither_stop_nor_stall_the_flow(broker: EmbeddedBroker, chdb_dir: Path, tmp_path: Path,
                                                      case: dict[str, Any]) -> None:
    limits = {k: v for k, v in case.items() if k != "name"}
    settings = isolated_settings(
        broker.bootstrap, tmp_path, label="poison",
        clickhouse_url=f"chdb://{chdb_dir}", clickhouse_database=f"poison_{uuid.uuid4().hex[:8]}",
        clickhouse_flush_seconds=0.2, idle_close_seconds=3600, metrics_port=0, **limits,
    )
    _create_topics(settings, partitions=2)
    messages, expected = _workload(int(time.time() * 1000))
    _produce(settings, messages)
    before = _counters()
    undeliverable_before = _undeliverable(settings.deadletter_topic, "MSG_SIZE_TOO_LARGE")

    run_main(build_flow(settings, tail=False))  # before issue 12: KafkaException MSG_SIZE_TOO_LARGE

    delta = {name: value - before[name] for name, value in _counters().items()}
    letters = read_topic(settings, settings.deadletter_topic)
    quarantine = read_quarantine(settings.lake_url).to_pylist()
    rejected = [row for row in quarantine if row["reason"] != UNDELIVERABLE]
    undeliverable = [row for row in quarantine if row["reason"] == UNDELIVERABLE]

    # The account, from the topic and the lake: every message received is accepted, a duplicate or
    # dead-lettered, and every dead letter reached its topic or the quarantine as undeliverable.
    provenance = {(int(dict(r.headers)["source_partition"]), int(dict(r.headers)["source_offset"])) for r in letters}
    provenance |= {(row["source_partition"], row["source_offset"]) for row in undeliverable}
    assert len(provenance) == len(letters) + len(undeliverable) == len(expected["rejected"])
    assert delta["received"] == len(messages)
    assert delta["accepted"] == expected["accepted"]
    assert delta["duplicates"] == expected["duplicates"]
    assert delta["dead"] == len(provenance)
    assert delta["received"] == delta["accepted"] + delta["duplicates"] + len(provenance)
    assert delta["windows"] == expected["windows"]
    _, ((stored_windows,),) = run_sql(settings, "SELECT count() FROM window_stats FINAL")
    assert stored_windows == expected["windows"]

    # The quarantine keeps every rejected original, whole up to its cap, with its size and hash.
    cap = settings.quarantine_max_value_bytes
    originals = sorted(value for _, value in expected["rejected"])
    assert sorted(row["original_sha256"] for row in rejected) == sorted(_sha(v) for v in originals)
    for row in rejected:
        original = next(v for v in originals if _sha(v) == row["original_sha256"])
        assert row["original_bytes"] == len(original)
        assert row["value"] == original[:cap]

    # Dead-letter records are bounded, with the original's size and hash in headers when cut.
    limit = settings.deadletter_max_value_bytes
    for record in letters:
        headers = dict(record.headers)
        original = next(v for v in originals if v.startswith(record.value))
        assert len(record.value) == min(len(original), limit)
        if len(original) > limit:
            assert (headers["truncated"], headers["original_bytes"]) == (b"1", str(len(original)).encode())
            assert headers["original_sha256"] == _sha(original).encode()
        else:
            assert "truncated" not in headers and record.value == original

    if case["name"] == "bounded":
        assert undeliverable == [] and len(letters) == len(expected["rejected"])
    else:
        assert sorted(row["original_bytes"] for row in undeliverable) == [1_500_000, 5_000_000]
        for row in undeliverable:
            assert settings.deadletter_topic in row["detail"] and "MSG_SIZE_TOO_LARGE" in row["detail"]
            assert row["source_topic"] == settings.telemetry_topic
        assert _undeliverable(settings.deadletter_topic, "MSG_SIZE_TOO_LARGE") - undeliverable_before == 2


# ------------------------------------------------------------------------------------- the sink itself


def _sink(settings: Settings, topic: str, **options: Any):  # type: ignore[no-untyped-def]
    return KafkaRecordSink(settings, topic, backoff_factory=_fast_backoff, **options).build("dl_out", 0, 1)


def test_a_record_too_large_for_the_producer_is_quarantined_and_the_rest_delivered(
    kafka_settings: Callable[..., Settings],
) -> None:
    settings = kafka_settings(create_topics=True, partitions=1)
    topic = settings.deadletter_topic
    records = [KafkaRecord(b"k", b"first"), KafkaRecord(b"k", b"x" * 50_000, [("reason", b"oversized")]),
               KafkaRecord(b"k", b"second"), KafkaRecord(b"k", b"third")]
    before = _undeliverable(topic, "MSG_SIZE_TOO_LARGE")
    part = _sink(settings, topic, add_config={"message.max.bytes": 10_000})

    part.write_batch(records)  # before issue 12: KafkaException MSG_SIZE_TOO_LARGE from produce()
    part.write_batch([KafkaRecord(b"k", b"fourth")])
    part.close()

    assert [r.value for r in read_topic(settings, topic)] == [b"first", b"second", b"third", b"fourth"]
    (row,) = read_quarantine(settings.lake_url).to_pylist()
    assert row["reason"] == UNDELIVERABLE and row["value"] == b"x" * 50_000 and row["key"] == b"k"
    assert topic in row["detail"] and "MSG_SIZE_TOO_LARGE" in row["detail"] and "oversized" in row["detail"]
    assert (row["original_bytes"], row["original_sha256"]) == (50_000, _sha(b"x" * 50_000))
    assert _undeliverable(topic, "MSG_SIZE_TOO_LARGE") - before == 1


class _RejectingProducer(Producer):
    """A real producer whose delivery reports say the broker refused records with value b"reject-<code>"
    (tansu never refuses one): the broker-side permanent errors, reported after the record was sent."""

    def __init__(self, config: dict[str, Any]) -> None:
        report = config["on_delivery"]

        def intercept(error: KafkaError | None, msg: Any) -> None:
            value = msg.value() or b""
            if error is None and value.startswith(b"reject-"):
                error = KafkaError(getattr(KafkaError, value.decode().removeprefix("reject-")), "injected rejection")
            if error is not None:
                report(error, msg)

        # Successes must reach `intercept` too, to be turned into rejections.
        super().__init__({**config, "delivery.report.only.error": False, "on_delivery": intercept})


def test_broker_rejections_are_quarantined_and_the_rest_delivered(kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings(create_topics=True, partitions=1)
    topic = settings.alerts_topic
    codes = ["MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD"]
    records = [KafkaRecord(b"M1", b"ok-%d" % i) for i in range(5)]
    records[1:1] = [KafkaRecord(b"M1", f"reject-{code}".encode()) for code in codes]
    part = _sink(settings, topic, producer_factory=_RejectingProducer)
    part.write_batch(records)
    part.close()

    assert sorted(r.value for r in read_topic(settings, topic)) == sorted(r.value for r in records)  # tansu got them
    rows = read_quarantine(settings.lake_url).to_pylist()
    assert sorted(row["value"] for row in rows) == sorted(f"reject-{code}".encode() for code in codes)
    for row in rows:
        assert row["reason"] == UNDELIVERABLE and topic in row["detail"]
        assert row["value"].decode().removeprefix("reject-") in row["detail"]
        assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("", -1, -1)


class _FatalOnceProducer(Producer):
    """Raises a fatal error (as the idempotent producer does when its state is lost) on the first b"boom"."""

    fired = False

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any) -> None:
        if value == b"boom" and not _FatalOnceProducer.fired:
            _FatalOnceProducer.fired = True
            raise KafkaException(KafkaError(KafkaError._FATAL, "injected fatal idempotence error", fatal=True))
        super().produce(topic, value, key, **kwargs)


def test_a_fatal_producer_error_rebuilds_the_producer_and_resends(kafka_settings: Callable[..., Settings]) -> None:
    settings = kafka_settings(create_topics=True, partitions=1)
    topic = settings.alerts_topic
    records = [KafkaRecord(b"k", b"a"), KafkaRecord(b"k", b"b"), KafkaRecord(b"k", b"boom"), KafkaRecord(b"k", b"c")]
    _FatalOnceProducer.fired = False
    part = _sink(settings, topic, producer_factory=_FatalOnceProducer)
    part.write_batch(records)
    part.close()
    assert part.producers_built == 2
    # The records acknowledged before the fatal error are not sent twice.
    assert sorted(r.value for r in read_topic(settings, topic)) == [b"a", b"b", b"boom", b"c"]
    assert read_quarantine(settings.lake_url).num_rows == 0


def _write_through_an_outage(tmp_path: Path, delivery_timeout_s: float) -> tuple[Any, set[bytes], Settings]:
    """Write 50 records while the broker is away for 4 s; it comes back empty (tansu keeps nothing).

    Returns the sink partition, the values that reached the topic and the settings; asserts that the writer
    was held back (not failed) during the outage and finished after it."""
    port = free_port()
    first = EmbeddedBroker(port=port).start()
    settings = Settings(kafka_bootstrap_servers=first.bootstrap, data_dir=tmp_path, alerts_topic="alerts-outage")
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic("alerts-outage", 1, 1)])["alerts-outage"].result(10)
    part = _sink(settings, settings.alerts_topic, delivery_timeout_s=delivery_timeout_s)
    part.write_batch([KafkaRecord(b"k", b"before")])
    first.stop()

    records = [KafkaRecord(b"k", b"during-%d" % i) for i in range(50)]
    failure: list[BaseException] = []

    def write() -> None:
        try:
            part.write_batch(records)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            failure.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(4.0)
    # Before issue 12 write_batch raised KafkaDeliveryError after delivery_timeout_s (and the flow died).
    assert writer.is_alive() and not failure, failure  # held back, retrying
    with EmbeddedBroker(port=port):  # a new, empty broker on the same address (tansu auto-creates the topic)
        writer.join(60)
        assert not writer.is_alive() and not failure, failure
        part.close()
        delivered = {r.value for r in read_topic(settings, settings.alerts_topic)}
    assert delivered == {r.value for r in records}  # all of them; a few twice would be allowed (at-least-once)
    assert read_quarantine(settings.lake_url).num_rows == 0
    return part, delivered, settings


@pytest.mark.parametrize("delivery_timeout_s", [1.0, 8.0], ids=["records-time-out", "producer-outlives-outage"])
def test_an_unreachable_broker_is_retried_and_holds_the_flow(tmp_path: Path, delivery_timeout_s: float) -> None:
    """With a 1 s delivery timeout the records time out round after round and are produced again, each
    round by a new producer; with 8 s the first producer is still waiting when the broker returns, which
    does not know its producer id: measured, that producer never recovers by itself (UNKNOWN_PRODUCER_ID
    and local epoch bumps until the timeout), and a new producer delivers the records."""
    part, _, _ = _write_through_an_outage(tmp_path, delivery_timeout_s)
    assert part.retries >= 1 and part.producers_built >= 2


def test_a_fatal_error_raised_by_librdkafka_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real fatal error rather than an injected one. The sink normally replaces its producer after every
    failed round; kept across the timed-out rounds of the outage, the producer has used sequence numbers
    that the returning (empty) broker never saw, and librdkafka fails it for good: UNKNOWN_PRODUCER_ID,
    "unable to retry without risking duplication", raised from flush() (as a KafkaException, a SystemError
    chained to it, or a bare KafkaError), with delivery reports lost on the way. Every record must still
    arrive, sent again by a new producer."""
    rebuild = _KafkaRecordSinkPartition._rebuild

    def only_when_fatal(self: _KafkaRecordSinkPartition, error: KafkaError | None) -> None:
        if error is not None and classify_error(error) == FATAL:
            rebuild(self, error)

    monkeypatch.setattr(_KafkaRecordSinkPartition, "_rebuild", only_when_fatal)
    part, _, _ = _write_through_an_outage(tmp_path, 1.0)
    assert part.producers_built == 2  # the first one failed fatally, the second delivered


# ------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, PERMANENT),
        (KafkaError.RECORD_LIST_TOO_LARGE, PERMANENT),
        (KafkaError.INVALID_RECORD, PERMANENT),
        (KafkaError.INVALID_MSG, PERMANENT),
        (KafkaError.INVALID_MSG_SIZE, PERMANENT),
        (KafkaError.INVALID_TIMESTAMP, PERMANENT),
        (KafkaError.INVALID_CONFIG, PERMANENT),
        (KafkaError.POLICY_VIOLATION, PERMANENT),
        (KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT, PERMANENT),
        (KafkaError._BAD_MSG, PERMANENT),
        (KafkaError._INVALID_ARG, PERMANENT),
        (KafkaError._MSG_TIMED_OUT, RETRIABLE),
        (KafkaError._TRANSPORT, RETRIABLE),
        (KafkaError._ALL_BROKERS_DOWN, RETRIABLE),
        (KafkaError._QUEUE_FULL, RETRIABLE),
        (KafkaError.LEADER_NOT_AVAILABLE, RETRIABLE),
        (KafkaError.NOT_LEADER_FOR_PARTITION, RETRIABLE),
        (KafkaError.REQUEST_TIMED_OUT, RETRIABLE),
        (KafkaError.NOT_ENOUGH_REPLICAS, RETRIABLE),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, RETRIABLE),  # cluster trouble, not the record's: hold, don't divert
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, RETRIABLE),
        (KafkaError._PURGE_QUEUE, RETRIABLE),
        (KafkaError._FATAL, FATAL),
        (KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, FATAL),
    ],
)
def test_producer_errors_are_classified(code: int, expected: str) -> None:
    assert classify_error(KafkaError(code)) == expected


def test_any_error_flagged_fatal_is_fatal() -> None:
    assert classify_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True)) == FATAL


def test_dead_letter_records_are_bounded() -> None:
    original = bytes(range(256)) * 4096  # 1 MiB
    record = dead_letter_record(original, reason="oversized", detail="1048576 bytes", source_topic="telemetry",
                                source_partition=2, source_offset=7, key=b"M1", max_value_bytes=1000)
    assert record.value == original[:1000]
    headers = dict(record.headers or [])
    assert headers["original_bytes"] == b"1048576"
    assert headers["original_sha256"] == _sha(original).encode()
    assert headers["truncated"] == b"1"
    assert headers["reason"] == b"oversized" and headers["source_offset"] == b"7"
    small = dead_letter_record(b"tiny", reason="not_json", detail="", source_topic="t", source_partition=0,
                               source_offset=0, max_value_bytes=1000)
    assert small.value == b"tiny" and "truncated" not in dict(small.headers or [])


def test_bounded_keeps_a_prefix_size_and_hash() -> None:
    whole = bounded(b"abcdef", 10)
    assert (whole.value, whole.original_bytes, whole.truncated) == (b"abcdef", 6, False)
    cut = bounded(b"abcdef", 4)
    assert (cut.value, cut.original_bytes, cut.truncated, cut.sha256) == (b"abcd", 6, True, _sha(b"abcdef"))


def test_quarantine_files_written_before_issue_12_stay_readable(tmp_path: Path) -> None:
    """Files without `original_bytes`/`original_sha256` read back with those columns filled in."""
    old_schema = pa.schema([f for f in QUARANTINE_ARROW_SCHEMA if not f.name.startswith("original_")])
    old = pa.table({"value": [b"{bad", b"xyz"], "key": [b"M1", None], "reason": ["not_json", "not_json"],
                    "detail": ["", ""], "source_topic": ["telemetry"] * 2, "source_partition": pa.array([0, 1], pa.int32()),
                    "source_offset": pa.array([5, 6], pa.int64()),
                    "quarantined_at": pa.array([1_764_000_000_000] * 2, pa.int64()).cast(pa.timestamp("ms", "UTC"))},
                   schema=old_schema)
    directory = tmp_path / "lake" / "quarantine" / "dt=2025-11-24" / "hour=16"
    directory.mkdir(parents=True)
    pq.write_table(old, directory / "part-000-0000000000.parquet")
    table = read_quarantine(f"file://{tmp_path / 'lake'}")
    assert table.schema.names == QUARANTINE_ARROW_SCHEMA.names
    rows = sorted(table.to_pylist(), key=lambda r: r["source_offset"])
    assert [(r["original_bytes"], r["original_sha256"]) for r in rows] == [(4, _sha(b"{bad")), (3, _sha(b"xyz"))]
