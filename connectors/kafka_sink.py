"""Kafka record sink: alerts and dead letters, produced with acknowledgement, never dropped, never stuck.

`KafkaRecordSink` produces `KafkaRecord`s (key, value, headers) with acks=all and idempotence. Each batch is
flushed and every record's delivery report checked before the flow moves on, and each failure is
classified (`classify_error`):

- retriable (broker down, timeouts, leader changes, a full local queue, ...): the record is produced again
  after a `Backoff` pause; `write_batch` does not return meanwhile, which holds the flow back;
- permanent for that record (too large for the producer or the topic, invalid record, refused by a topic
  config or policy): the record goes to the lake quarantine as `undeliverable` (`connectors.quarantine`),
  is counted in `plantpulse_kafka_records_undeliverable_total{topic,error}`, and the other records go on;
- fatal (the idempotent producer lost its state): the producer is rebuilt and the records it had not
  acknowledged are produced again by the new one.

Dead letters keep the original bytes up to a bound and carry why and where in headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import cast

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

from connectors.kafka_errors import FATAL, PERMANENT, RETRIABLE, classify_error, producer_call
from connectors.quarantine import UndeliverableQuarantine, UndeliverableRecord, bounded
from connectors.retry import Backoff
from plantpulse.settings import Settings

__all__ = [
    "DEADLETTER_HEADERS", "FATAL", "MESSAGES_PRODUCED", "PERMANENT", "PRODUCE_RETRIES", "RECORDS_UNDELIVERABLE",
    "RETRIABLE", "TRUNCATION_HEADERS", "KafkaDeliveryError", "KafkaRecord", "KafkaRecordSink", "classify_error",
    "dead_letter_record",
]

logger = logging.getLogger("connectors.kafka")

MESSAGES_PRODUCED = Counter(
    "plantpulse_kafka_messages_produced", "Kafka records acknowledged by the broker for KafkaRecordSink.", ["topic"]
)
RECORDS_UNDELIVERABLE = Counter(
    "plantpulse_kafka_records_undeliverable_total",
    "Kafka records refused for good (kept in the lake quarantine as 'undeliverable').", ["topic", "error"],
)
PRODUCE_RETRIES = Counter(
    "plantpulse_kafka_produce_retries_total", "Rounds of KafkaRecordSink records produced again after an error.",
    ["topic"],
)
_DETAIL_MAX_CHARS = 1024
DEADLETTER_HEADERS = ("reason", "detail", "source_topic", "source_partition", "source_offset")
TRUNCATION_HEADERS = ("original_bytes", "original_sha256", "truncated")  # only on dead letters that were cut

class KafkaDeliveryError(RuntimeError):
    """Records could not be delivered. No longer raised by `KafkaRecordSink` (it retries or quarantines);
    kept because callers catch it."""


class KafkaRecord(msgspec.Struct, frozen=True):
    """One record for `KafkaRecordSink`. Header values are bytes, as on the wire."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


def dead_letter_record(
    value: bytes,
    *,
    reason: str,
    detail: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    key: bytes | None = None,
    max_value_bytes: int | None = None,
) -> KafkaRecord:
    """A dead letter: the original bytes, and why/where in headers (`DEADLETTER_HEADERS`).

    `detail` is cut to 1024 characters so a detail quoting the payload cannot multiply its size. A value
    longer than `max_value_bytes` is cut to that many bytes, and headers `original_bytes`,
    `original_sha256` and `truncated=1` describe the whole original (whose full copy is in the lake
    quarantine): a dead letter must never be too large to produce.
    """
    headers = [
        ("reason", reason.encode()),
        ("detail", detail[:_DETAIL_MAX_CHARS].encode()),
        ("source_topic", source_topic.encode()),
        ("source_partition", str(source_partition).encode()),
        ("source_offset", str(source_offset).encode()),
    ]
    if max_value_bytes is not None and len(value) > max_value_bytes:
        kept = bounded(value, max_value_bytes)
        value = kept.value
        headers += [("original_bytes", str(kept.original_bytes).encode()),
                    ("original_sha256", kept.sha256.encode()), ("truncated", b"1")]
    return KafkaRecord(key, value, headers)


class _Failures:
    """Delivery-report callback: only failures call back (no Python call per delivered record), and each
    carries its record, rebuilt from the message, to be sent again or quarantined.

    A separate object rather than a bound method of the partition so the Producer does not reference the
    partition that owns it: without that cycle the producer (threads, sockets) is freed with the flow.
    """

    def __init__(self) -> None:
        self.reports: list[tuple[KafkaError, KafkaRecord]] = []

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            headers = cast("list[tuple[str, bytes]] | None", msg.headers())
            self.reports.append((error, KafkaRecord(msg.key(), cast(bytes, msg.value()), headers)))


class _ClientErrors:
    """error_cb target: remembers a fatal error (acted on after the round), logs the rest."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        self.fatal: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = self.fatal or error
            logger.error("step %r: fatal Kafka producer error (the producer will be rebuilt): %s",
                         self.step_id, error.str())
        else:
            # Connection trouble is retried by librdkafka and surfaces in delivery reports if it lasts.
            logger.warning("step %r: Kafka producer: %s", self.step_id, error.str())


class _KafkaRecordSinkPartition(StatelessSinkPartition[KafkaRecord]):
    def __init__(
        self,
        step_id: str,
        topic: str,
        client_id: str,
        producer_config: dict,
        quarantine: UndeliverableQuarantine,
        backoff: Backoff,
        producer_factory: Callable[[dict], Producer],
    ) -> None:
        self._step_id = step_id
        self._topic = topic
        self._produced = MESSAGES_PRODUCED.labels(topic)
        self._retried = PRODUCE_RETRIES.labels(topic)
        self._config = {**producer_config, "client.id": client_id}
        self._factory = producer_factory
        self._quarantine = quarantine
        self._backoff = backoff
        self._backoff.label = "kafka"
        # Counters for tests and operators (the Prometheus metrics aggregate all partitions).
        self.producers_built = 0
        self.retries = 0
        self.undeliverable = 0
        self._client_errors = _ClientErrors(step_id)
        self._failures = _Failures()
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        self._client_errors, self._failures = _ClientErrors(self._step_id), _Failures()
        self.producers_built += 1
        return self._factory({
            **self._config, "error_cb": self._client_errors, "on_delivery": self._failures,
            "delivery.report.only.error": True,
        })

    def write_batch(self, items: list[KafkaRecord]) -> None:
        # Returning only once every record is acknowledged or quarantined is what makes this at-least-once:
        # Bytewax snapshots the epoch only after write_batch returned.
        pending = list(items)
        refused: list[UndeliverableRecord] = []
        while pending:
            pending, failed, fatal, first_error = self._round(pending)
            refused += failed
            if pending:
                self._pause(len(pending), first_error or fatal)
                # A fresh producer for the next round, also after retriable errors: records that timed out
                # may leave the idempotent producer waiting for a sequence the broker no longer knows
                # (measured with tansu restarted: UNKNOWN_PRODUCER_ID until the end of time). A new
                # producer gets a new producer id; librdkafka's own retries already ran for the round.
                self._rebuild(fatal or first_error)
            else:
                self._backoff.reset()
        if refused:
            self._quarantine.write(refused)
            self.undeliverable += len(refused)
        self._produced.inc(len(items) - len(refused))

    def _round(
        self, records: list[KafkaRecord]
    ) -> tuple[list[KafkaRecord], list[UndeliverableRecord], KafkaError | None, KafkaError | None]:
        """Produce `records` once and wait for every report: (to retry, refused for good, fatal, first retriable)."""
        self._failures.reports.clear()
        retry: list[KafkaRecord] = []
        refused: list[UndeliverableRecord] = []
        fatal: KafkaError | None = None
        first_error: KafkaError | None = None
        lost = False  # whether delivery reports may have been lost with a failed producer
        for index, record in enumerate(records):
            # An error here: refused before it was even queued (e.g. MSG_SIZE_TOO_LARGE over
            # message.max.bytes), or the producer failed (fatal) while serving callbacks to make room.
            error, serving_failed = self._produce(record)
            lost = lost or serving_failed
            if error is None:
                continue
            kind = classify_error(error)
            if kind == PERMANENT:
                refused.append(self._refused(record, error))
                continue
            retry.append(record)
            first_error = first_error or (error if kind == RETRIABLE else None)
            if kind == FATAL:
                fatal = error
                retry += records[index + 1 :]  # nothing more goes to a failed producer; a new one sends them
                break
        flush_fatal, complete = self._settle()
        complete = complete and not lost
        fatal = fatal or flush_fatal or self._client_errors.fatal
        for error, record in self._failures.reports:
            kind = classify_error(error)
            if kind == PERMANENT:
                refused.append(self._refused(record, error))
            else:  # retriable, fatal, or purged from a failed producer: sent again
                retry.append(record)
                first_error = first_error or (error if kind == RETRIABLE else None)
        if not complete:
            # Reports were lost with a failed producer, so which records arrived is unknown: send every
            # record again that was not refused (at-least-once; duplicates rather than losses).
            gone = [(u.key, u.value, u.headers) for u in refused]
            retry = [r for r in records if (r.key, r.value, r.headers) not in gone]
            logger.error("step %r: %d record(s) to Kafka topic %r are sent again, some perhaps twice: their "
                         "delivery reports were lost with the failed producer", self._step_id, len(retry), self._topic)
        return retry, refused, fatal, first_error

    def _settle(self) -> tuple[KafkaError | None, bool]:
        """Wait for the report of every queued record (bounded by message.timeout.ms): (the fatal error
        met, whether every report was seen).

        A fatal error surfaces as an exception that interrupts the serving of reports, and reports served
        meanwhile can be dropped on the way to Python (measured: 49 of 50 purged records reported). So after
        one, the reports are never complete; the failed producer is still drained, to release its records.
        """
        remaining, error = producer_call(self._producer.flush)
        if error is None:
            return None, remaining == 0
        logger.error("step %r: Kafka producer for topic %r failed: %s: %s", self._step_id, self._topic,
                     error.name(), error.str())
        producer_call(partial(self._producer.flush, 1.0))
        return error, False

    def _produce(self, record: KafkaRecord) -> tuple[KafkaError | None, bool]:
        """Queue one record: (the error that refused it, whether serving reports failed meanwhile).

        A full local queue is waited out by serving delivery reports (backpressure); produce() itself serves
        none, so only that serving can lose reports.
        """
        while True:
            try:
                self._producer.produce(self._topic, record.value, record.key, headers=record.headers)  # type: ignore[arg-type]
                return None, False
            except KafkaException as exc:  # about this record (or a failed producer): produce() serves no callbacks
                return exc.args[0], False
            except BufferError:
                _, error = producer_call(partial(self._producer.poll, 0.1))
                if error is not None:
                    return error, True

    def _refused(self, record: KafkaRecord, error: KafkaError) -> UndeliverableRecord:
        RECORDS_UNDELIVERABLE.labels(self._topic, error.name()).inc()
        logger.error(
            "step %r: Kafka topic %r refused a record of %d bytes for good (%s: %s); it goes to the lake "
            "quarantine as 'undeliverable'", self._step_id, self._topic, len(record.value), error.name(), error.str(),
        )
        return UndeliverableRecord(self._topic, record.key, record.value, record.headers, error.name(), error.str())

    def _rebuild(self, error: KafkaError | None) -> None:
        level = logging.ERROR if error is not None and classify_error(error) == FATAL else logging.INFO
        logger.log(level, "step %r: new Kafka producer for topic %r after %s", self._step_id, self._topic,
                   f"{error.name()}: {error.str()}" if error is not None else "records were not acknowledged")
        # Not flushed: _round already waited for every report the old producer could give; records it
        # never reported are in the next round.
        self._producer = self._new_producer()

    def _pause(self, count: int, error: KafkaError | None) -> None:
        delay = self._backoff.next_delay()
        self.retries += 1
        self._retried.inc()
        what = f"{error.name()}: {error.str()}" if error is not None else "not acknowledged"
        logger.warning(
            "step %r: %d record(s) to Kafka topic %r not delivered (%s), attempt %d; retrying in %.2fs",
            self._step_id, count, self._topic, what, self._backoff.failures, delay,
        )
        time.sleep(delay)

    def close(self) -> None:
        # write_batch leaves nothing queued; this only waits for librdkafka's own bookkeeping, so a producer
        # that failed meanwhile is worth a log line, not a failed shutdown.
        _, error = producer_call(partial(self._producer.flush, 5.0))
        if error is not None:
            logger.warning("step %r: closing the Kafka producer for topic %r: %s: %s", self._step_id, self._topic,
                           error.name(), error.str())


class KafkaRecordSink(DynamicSink[KafkaRecord]):
    """Write `KafkaRecord`s to one topic; one idempotent, lz4-compressing producer per worker.

    Each `write_batch` returns once every record is acknowledged by the broker (acks=all) or, if the topic
    refuses it for good, stored in the lake quarantine; retriable errors are retried with backoff meanwhile.
    After a crash, records of the last incomplete epoch are written again (at-least-once). Used for dead
    letters (see `dead_letter_record`) and alerts (JSON values).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        idempotent: bool = True,
        delivery_timeout_s: float = 120.0,
        linger_ms: int = 5,
        add_config: dict[str, str | int | bool] | None = None,
        quarantine: UndeliverableQuarantine | None = None,
        backoff_factory: Callable[[], Backoff] = Backoff,
        producer_factory: Callable[[dict], Producer] = Producer,
    ) -> None:
        """Init.

        :arg settings: Connection settings; the lake settings locate the quarantine.
        :arg topic: Topic to write to (e.g. `settings.deadletter_topic`).
        :arg idempotent: Enable the idempotent producer (no duplicates from librdkafka's retries).
        :arg delivery_timeout_s: How long librdkafka retries a record before it is reported as timed out
            (and produced again by this sink after a backoff pause).
        :arg linger_ms: How long the producer waits to fill a request.
        :arg add_config: Extra librdkafka producer properties (override ours).
        :arg quarantine: Where refused records go; by default the lake quarantine of `settings`.
        :arg backoff_factory: Pauses between rounds of retries (tests make them short).
        :arg producer_factory: Builds a producer from its config (tests inject broker errors).
        """
        if not topic:
            raise ValueError("KafkaRecordSink: topic must be a non-empty string")
        if delivery_timeout_s <= 0:
            raise ValueError(f"KafkaRecordSink: delivery_timeout_s must be > 0, got {delivery_timeout_s!r}")
        self._settings = settings
        self._topic = topic
        self._quarantine = quarantine
        self._backoff_factory = backoff_factory
        self._producer_factory = producer_factory
        self._config = {
            **settings.kafka_config(),
            "acks": "all",
            "enable.idempotence": idempotent,
            "compression.type": "lz4",
            "linger.ms": linger_ms,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            **(add_config or {}),
        }

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaRecordSinkPartition:
        client_id = f"plantpulse-{step_id}-{worker_index}"
        quarantine = self._quarantine or UndeliverableQuarantine.from_settings(
            self._settings, backoff_factory=self._backoff_factory
        )
        return _KafkaRecordSinkPartition(
            step_id, self._topic, client_id, self._config, quarantine, self._backoff_factory(), self._producer_factory
        )
