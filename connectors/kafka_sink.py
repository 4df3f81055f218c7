"""Kafka record sink: alerts and dead letters, produced with acknowledgement and never dropped.

`KafkaRecordSink` produces `KafkaRecord`s (key, value, headers) with acks=all and idempotence; a full
local queue is waited out (backpressure), and each batch is flushed and its delivery checked before the
flow moves on. Dead letters keep the original bytes and carry why and where in headers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter

from plantpulse.settings import Settings

logger = logging.getLogger("connectors.kafka")

MESSAGES_PRODUCED = Counter(
    "plantpulse_kafka_messages_produced", "Kafka records acknowledged by the broker for KafkaRecordSink.", ["topic"]
)
_DETAIL_MAX_CHARS = 1024
DEADLETTER_HEADERS = ("reason", "detail", "source_topic", "source_partition", "source_offset")


class KafkaDeliveryError(RuntimeError):
    """Records could not be delivered even after librdkafka's own retries."""


# ---------------------------------------------------------------------------------------------- source



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
) -> KafkaRecord:
    """A dead letter: the original bytes untouched, and why/where in headers (`DEADLETTER_HEADERS`).

    `detail` is cut to 1024 characters so a detail quoting the payload cannot multiply its size.
    """
    return KafkaRecord(
        key,
        value,
        [
            ("reason", reason.encode()),
            ("detail", detail[:_DETAIL_MAX_CHARS].encode()),
            ("source_topic", source_topic.encode()),
            ("source_partition", str(source_partition).encode()),
            ("source_offset", str(source_offset).encode()),
        ],
    )


class _DeliveryFailures:
    """Delivery-report callback that counts failures.

    A separate object rather than a bound method so the Producer does not reference the partition
    that owns it: without that cycle the producer (threads, sockets) is freed as soon as the flow is.
    """

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        if error is None:  # pragma: no cover - only errors are reported
            return
        self.count += 1
        if self.first is None:
            self.first = f"{error.name()}: {error.str()} (key {msg.key()!r})"


def _client_error_callback(step_id: str) -> Callable[[KafkaError], None]:
    def on_error(error: KafkaError) -> None:
        # Connection trouble is retried by librdkafka and surfaces as delivery failures if it lasts;
        # a fatal error (e.g. idempotence state lost) cannot be recovered by this producer.
        if error.fatal():
            raise KafkaDeliveryError(f"step {step_id!r}: fatal Kafka producer error: {error.str()}")
        logger.warning("step %r: Kafka producer: %s", step_id, error.str())

    return on_error


class _KafkaRecordSinkPartition(StatelessSinkPartition[KafkaRecord]):
    def __init__(self, step_id: str, topic: str, client_id: str, producer_config: dict) -> None:
        self._step_id = step_id
        self._topic = topic
        self._produced = MESSAGES_PRODUCED.labels(topic)
        self._failures = _DeliveryFailures()
        self._producer = Producer(
            {
                **producer_config,
                "client.id": client_id,
                # Only failures call back into Python: no per-record callback cost on success.
                "delivery.report.only.error": True,
                "on_delivery": self._failures,
                "error_cb": _client_error_callback(step_id),
            }
        )

    def write_batch(self, items: list[KafkaRecord]) -> None:
        produce = self._producer.produce
        topic = self._topic
        for record in items:
            try:
                produce(topic, record.value, record.key, headers=record.headers)  # type: ignore[arg-type]
            except BufferError:
                self._produce_blocking(record)
        # Waiting for acknowledgements per batch is what makes this at-least-once: Bytewax only snapshots
        # the epoch after write_batch returned. Bounded by message.timeout.ms.
        remaining = self._producer.flush()
        self._raise_on_failures(len(items), remaining)
        self._produced.inc(len(items))

    def _produce_blocking(self, record: KafkaRecord) -> None:
        """Backpressure: the local queue is full, so serve deliveries until there is room. Never drop."""
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(
                    self._topic, record.value, record.key, headers=record.headers  # type: ignore[arg-type]
                )
                return
            except BufferError:
                continue

    def _raise_on_failures(self, attempted: int, remaining: int) -> None:
        if self._failures.count == 0 and remaining == 0:
            return
        failed, first = self._failures.count, self._failures.first
        self._failures.count, self._failures.first = 0, None  # the producer keeps this same object
        raise KafkaDeliveryError(
            f"step {self._step_id!r}: {failed + remaining} of {attempted} records to Kafka topic {self._topic!r} "
            f"were not delivered ({remaining} still queued); first error: {first}"
        )

    def close(self) -> None:
        remaining = self._producer.flush()
        self._raise_on_failures(0, remaining)


class KafkaRecordSink(DynamicSink[KafkaRecord]):
    """Write `KafkaRecord`s to one topic; one idempotent, lz4-compressing producer per worker.

    Each `write_batch` waits until the broker acknowledged every record (acks=all), so a record is
    never lost; after a crash, records of the last incomplete epoch are written again (at-least-once).
    Used for dead letters (see `dead_letter_record`) and alerts (JSON values).
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
    ) -> None:
        """Init.

        :arg settings: Connection settings.
        :arg topic: Topic to write to (e.g. `settings.deadletter_topic`).
        :arg idempotent: Enable the idempotent producer (no duplicates from librdkafka's retries).
        :arg delivery_timeout_s: How long librdkafka retries a record before `write_batch` raises.
        :arg linger_ms: How long the producer waits to fill a request.
        :arg add_config: Extra librdkafka producer properties (override ours).
        """
        if not topic:
            raise ValueError("KafkaRecordSink: topic must be a non-empty string")
        if delivery_timeout_s <= 0:
            raise ValueError(f"KafkaRecordSink: delivery_timeout_s must be > 0, got {delivery_timeout_s!r}")
        self._settings = settings
        self._topic = topic
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
        return _KafkaRecordSinkPartition(step_id, self._topic, client_id, self._config)
