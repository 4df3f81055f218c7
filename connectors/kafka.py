"""Kafka connectors for the PlantPulse flow: a batch-per-poll telemetry source and a record sink.

`TelemetrySource` differs from Bytewax's own `KafkaSource` in one deliberate way: each poll of a
Kafka partition becomes ONE dataflow item, a `plantpulse.schema.RawBatch`, instead of one item per
message. Downstream decodes a whole poll at once with Arrow, which is what makes millions of
readings per minute affordable in Python; per-message work here is limited to a few list
comprehensions over the consumed messages.

Consumers use `assign` and never join a consumer group: Bytewax recovery stores the offsets
(`snapshot` is the next offset to read), and group joins are slow or hang on the embedded broker.

Both connectors build their clients from `Settings.kafka_config()`, so TLS/SASL settings apply.
The sink lives in `connectors.kafka_sink` and `read_topic` (dump a topic, for tests and tools) in
`connectors.topics`; both are re-exported here.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import Counter, Gauge

from connectors import readiness
from connectors.kafka_sink import (
    DEADLETTER_HEADERS,
    KafkaDeliveryError,
    KafkaRecord,
    KafkaRecordSink,
    dead_letter_record,
)
from connectors.topics import (
    KafkaConsumeError,
    TopicNotFoundError,
    TopicRecord,
    partition_ids,
    read_topic,
)
from plantpulse.schema import RawBatch
from plantpulse.settings import Settings
from plantpulse.stopping import stop_requested

__all__ = [
    "DEADLETTER_HEADERS",
    "KafkaConsumeError",
    "KafkaDeliveryError",
    "KafkaRecord",
    "KafkaRecordSink",
    "TelemetrySource",
    "TopicNotFoundError",
    "TopicRecord",
    "dead_letter_record",
    "read_topic",
]

logger = logging.getLogger(__name__)

# Prometheus metrics are process-global, like the registry they live in.
MESSAGES_CONSUMED = Counter(
    "plantpulse_kafka_messages_consumed", "Kafka messages emitted into the flow by TelemetrySource.", ["topic"]
)
CONSUMER_LAG = Gauge(
    "plantpulse_kafka_lag", "High watermark minus next offset to read (refreshed every few seconds).",
    ["topic", "partition"],
)

_LAG_REFRESH_S = 5.0
_EOF = KafkaError._PARTITION_EOF
_OFFSET_RESET = KafkaError._AUTO_OFFSET_RESET


def _consumer_config(settings: Settings, client_id: str, add_config: dict[str, str | int | bool] | None) -> dict:
    return {
        **settings.kafka_config(),
        # librdkafka insists on a group id even though `assign` never joins the group.
        "group.id": "plantpulse-assign-only",
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        # A snapshot offset that is no longer on the broker (retention) re-reads from the start rather
        # than silently skipping to the end: duplicates are handled downstream, lost readings are not.
        "auto.offset.reset": "earliest",
        # The broker answers a fetch at most this late when there is nothing new: bounds idle latency.
        "fetch.wait.max.ms": 100,
        # One consumer per partition: keep the prefetch queue of each one modest...
        "queued.max.messages.kbytes": 32768,
        # ...but refill it promptly: librdkafka's default pauses a full queue's fetching for 1 s, which
        # measured as a 3-4x throughput loss when catching up (275k vs 1M+ msg/s on 4 partitions).
        "fetch.queue.backoff.ms": 10,
        **(add_config or {}),
    }


class _TelemetryPartition(StatefulSourcePartition[RawBatch, int]):
    """One Kafka partition, read with `assign`; emits at most one RawBatch per `next_batch`."""

    def __init__(
        self,
        step_id: str,
        consumer: Consumer,
        topic: str,
        partition: int,
        next_offset: int,
        batch_size: int,
        poll_timeout_s: float,
        linger: timedelta,
        tail: bool,
    ) -> None:
        self._step_id = step_id
        self._consumer = consumer
        self._topic = topic
        self._partition = partition
        self._tp = TopicPartition(topic, partition)
        # Next offset to read; may be logical (OFFSET_BEGINNING) until the first message or EOF.
        self._next_offset = next_offset
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._linger = linger
        self._tail = tail
        self._eof = False
        self._awake: datetime | None = None
        self._consumed = MESSAGES_CONSUMED.labels(topic)
        self._lag = CONSUMER_LAG.labels(topic, str(partition))
        self._lag_due = time.monotonic() + _LAG_REFRESH_S
        consumer.assign([TopicPartition(topic, partition, next_offset)])
        readiness.partition_assigned(topic, partition)

    def next_batch(self) -> list[RawBatch]:
        if self._eof or stop_requested():
            # A clean stop ends the input; the offset snapshot still says where to go on (see plantpulse.stopping).
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, self._poll_timeout_s)
        readiness.partition_polled(self._topic, self._partition)
        if time.monotonic() >= self._lag_due:
            self._refresh_lag()
        # Per-message Python work is this scan plus the comprehensions below. Errors are rare; EOF is the
        # common one (every time the partition is caught up).
        if msgs and any([m.error() is not None for m in msgs]):
            msgs = self._drop_eof(msgs)
        if not msgs:
            # Nothing ready: let the worker serve other steps instead of spinning on this partition.
            self._awake = datetime.now(UTC) + self._linger
            return []
        # Data messages always carry an offset; the stubs type every accessor as Optional.
        offsets: list[int] = [m.offset() for m in msgs]  # type: ignore[misc]
        values: list[bytes | None] = [m.value() for m in msgs]
        if None in values:
            # A null value (tombstone) is no reading: hand the decoder empty bytes, which it rejects as
            # malformed (dead letter) instead of tripping over None. The scan is C-speed and rarely hits.
            values = [b"" if v is None else v for v in values]
        keys: list[bytes | None] = [m.key() for m in msgs]
        # Headers are not read: the device signature travels in the value (plantpulse.device_signing).
        batch = RawBatch(self._topic, self._partition, offsets, cast("list[bytes]", values), keys)
        self._next_offset = offsets[-1] + 1
        self._consumed.inc(len(offsets))
        # A short poll means the local queue is drained: wait a moment so the next batch is a useful size
        # rather than a trickle of tiny ones. A full poll means we are behind: come back immediately.
        self._awake = None if len(offsets) >= self._batch_size else datetime.now(UTC) + self._linger
        return [batch]

    def _drop_eof(self, msgs: list[Message]) -> list[Message]:
        """Remove end-of-partition markers (recording the end), raise on any other error."""
        data = []
        for m in msgs:
            error = m.error()
            if error is None:
                data.append(m)
            elif error.code() == _EOF:
                # The EOF offset is the high watermark: it also resolves a logical start offset.
                self._next_offset = max(self._next_offset, cast(int, m.offset()))
                self._lag.set(0)
                if not self._tail:
                    self._eof = True
            elif error.code() == _OFFSET_RESET:
                # Our offset was gone (retention); auto.offset.reset=earliest already moved us: say so.
                logger.warning("step %r: %s[%d]: %s", self._step_id, self._topic, self._partition, error.str())
            else:
                raise KafkaConsumeError(
                    f"step {self._step_id!r}: error consuming Kafka topic {self._topic!r} partition "
                    f"{self._partition} near offset {self._next_offset}: {error.name()}: {error.str()}"
                )
        return data

    def _refresh_lag(self) -> None:
        # Cached watermarks come from fetch responses: no broker round trip (and correct on tansu,
        # whose ListOffsets answer is not).
        self._lag_due = time.monotonic() + _LAG_REFRESH_S
        _low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if high >= 0 and self._next_offset >= 0:
            self._lag.set(max(0, high - self._next_offset))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        readiness.partition_closed(self._topic, self._partition)
        self._consumer.close()


class TelemetrySource(FixedPartitionedSource[RawBatch, int]):
    """Read a Kafka topic as `RawBatch`es: one Bytewax partition per Kafka partition ("<topic>-<n>").

    Supports recovery: the snapshot of each partition is the next offset to read, and a resumed flow
    continues from there (at-least-once from the last snapshot).

    >>> flow = Dataflow("telemetry")  # doctest: +SKIP
    >>> batches = op.input("kafka", flow, TelemetrySource(settings))  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        topic: str | None = None,
        starting_offset: int = OFFSET_BEGINNING,
        tail: bool = True,
        *,
        batch_size: int | None = None,
        poll_timeout_s: float = 0.0,
        linger_s: float = 0.005,
        add_config: dict[str, str | int | bool] | None = None,
    ) -> None:
        """Init.

        :arg settings: Connection settings; `kafka_batch_size` caps messages per RawBatch.
        :arg topic: Topic to read; defaults to `settings.telemetry_topic`.
        :arg starting_offset: Where to start without a snapshot: an offset, `OFFSET_BEGINNING` or
            `OFFSET_END` (note: `OFFSET_END` is resolved by ListOffsets, which tansu answers wrongly).
        :arg tail: Keep waiting for new messages at the end (streaming); when False each partition
            completes at the end that it sees first (batch jobs, tests).
        :arg batch_size: Overrides `settings.kafka_batch_size`.
        :arg poll_timeout_s: How long one poll may block the worker waiting for messages. 0 takes only
            what librdkafka has already prefetched in the background, which is the fastest.
        :arg linger_s: Pause before polling a partition again after an empty or short poll.
        :arg add_config: Extra librdkafka consumer properties (override ours).
        """
        self._settings = settings
        self._topic = topic or settings.telemetry_topic
        self._starting_offset = starting_offset
        self._tail = tail
        self._batch_size = settings.kafka_batch_size if batch_size is None else batch_size
        if self._batch_size < 1:
            raise ValueError(f"TelemetrySource: batch_size must be >= 1, got {self._batch_size!r}")
        if poll_timeout_s < 0 or linger_s < 0:
            raise ValueError(
                f"TelemetrySource: poll_timeout_s and linger_s must be >= 0, got {poll_timeout_s!r}, {linger_s!r}"
            )
        self._poll_timeout_s = poll_timeout_s
        self._linger = timedelta(seconds=linger_s)
        self._add_config = dict(add_config or {})

    @property
    def topic(self) -> str:
        return self._topic

    def list_parts(self) -> list[str]:
        """Every partition of the topic, from cluster metadata (all workers list all of them)."""
        readiness.source_listed(self._settings, self._topic)
        return [f"{self._topic}-{i}" for i in partition_ids(self._settings, self._topic)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TelemetryPartition:
        topic, _, index = for_part.rpartition("-")
        if topic != self._topic or not index.isdigit():
            # Typically a recovery store written by a flow that read a different topic.
            raise ValueError(
                f"step {step_id!r}: input partition {for_part!r} is not a partition of topic {self._topic!r}"
            )
        partition = int(index)
        start = self._starting_offset if resume_state is None else resume_state
        if start == OFFSET_BEGINNING:
            # Offset 0 means the same thing (auto.offset.reset=earliest moves it to the log start if
            # retention deleted it) but skips the offset lookup, measured at ~0.5 s per partition on tansu.
            start = 0
        config = _consumer_config(self._settings, f"plantpulse-{step_id}-{for_part}", self._add_config)
        consumer = Consumer(config)
        if resume_state is not None:
            start = _resume_offset(consumer, step_id, self._topic, partition, start)
        return _TelemetryPartition(
            step_id, consumer, self._topic, partition, start,
            self._batch_size, self._poll_timeout_s, self._linger, self._tail,
        )


def _resume_offset(consumer: Consumer, step_id: str, topic: str, partition: int, offset: int) -> int:
    """The snapshot offset, unless the partition is empty although the snapshot says we read from it.

    That happens when a memory-only broker (tansu) restarted under a kept recovery store. Kafka would
    answer OFFSET_OUT_OF_RANGE and auto.offset.reset would restart at the beginning; tansu answers
    nothing at all, so the source would silently skip the first `offset` new messages (or, with
    tail=False, wait forever). Only the empty case is checked: tansu under-reports the high watermark
    of a non-empty partition, so a smaller one is not proof of a reset.
    """
    if offset <= 0:
        return offset
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    except KafkaException as exc:
        raise KafkaConsumeError(
            f"step {step_id!r}: cannot query offsets of Kafka topic {topic!r} partition {partition}: {exc}"
        ) from exc
    if high == 0:
        logger.warning(
            "step %r: %s[%d] is empty but the snapshot resumes at offset %d (broker data lost?); "
            "reading from the beginning", step_id, topic, partition, offset,
        )
        return 0
    logger.info("step %r: resuming %s[%d] at offset %d", step_id, topic, partition, offset)
    return offset


# ---------------------------------------------------------------------------------------------- sink
