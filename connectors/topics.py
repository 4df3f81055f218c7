"""Topic-level tools: create PlantPulse's topics if missing, look up partitions, dump a topic.

Metadata is always requested for *all* topics and then filtered, because brokers with topic
auto-creation (tansu, many dev Kafkas) create a topic as a side effect of a metadata request that
names it, and a typo must not silently create an empty topic.

The Bytewax connectors themselves are in `connectors.kafka` (which re-exports `read_topic`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import NamedTuple, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from plantpulse.settings import Settings

__all__ = [
    "KafkaConsumeError",
    "TopicNotFoundError",
    "TopicRecord",
    "ensure_topics",
    "partition_count",
    "partition_ids",
    "read_topic",
    "topic_configs",
]

logger = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000
# Kafka's own rule for topic names (and the length limit that keeps partition directory names legal).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class TopicNotFoundError(LookupError):
    """A topic PlantPulse needs does not exist on the cluster."""


class KafkaConsumeError(RuntimeError):
    """A consumer reported an error other than end-of-partition."""


class KafkaUnreachableError(ConnectionError):
    """No broker answered at the configured bootstrap servers."""


def check_reachable(settings: Settings, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when no broker answers (instead of clients retrying in silence)."""
    try:
        _admin(settings).list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise KafkaUnreachableError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within {timeout_s:g} s "
            f"(KAFKA_BOOTSTRAP_SERVERS): {error.args[0].str() if error.args else error}"
        ) from None


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Explicit per-topic configs, so retention never silently depends on the broker's defaults.

    Telemetry is replayable raw input (the Parquet lake is the long-term copy); alerts and dead letters
    are small and looked at by people later, so they are kept longer.
    """
    return {
        settings.telemetry_topic: {"retention.ms": str(7 * _DAY_MS), "cleanup.policy": "delete"},
        settings.alerts_topic: {"retention.ms": str(30 * _DAY_MS), "cleanup.policy": "delete"},
        settings.deadletter_topic: {"retention.ms": str(14 * _DAY_MS), "cleanup.policy": "delete"},
        # Incident transitions are the notifier's input and what `plantpulse alerts list` folds when the
        # embedded database is busy: kept as long as an open incident can plausibly stay open.
        settings.incidents_topic: {"retention.ms": str(90 * _DAY_MS), "cleanup.policy": "delete"},
        settings.incident_commands_topic: {"retention.ms": str(30 * _DAY_MS), "cleanup.policy": "delete"},
    }


def _admin(settings: Settings) -> AdminClient:
    config: dict[str, str | int | float | bool] = {**settings.kafka_config()}
    return AdminClient(config)


def _metadata(admin: AdminClient, timeout_s: float) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConnectionError(f"cannot fetch Kafka metadata within {timeout_s} s: {exc}") from exc


def _check_names(topics: Iterable[str]) -> None:
    for topic in topics:
        if not _TOPIC_NAME.match(topic):
            raise ValueError(f"invalid Kafka topic name {topic!r}: use 1-249 of [A-Za-z0-9._-]")


def ensure_topics(
    settings: Settings, partitions: int | None = None, *, timeout_s: float = 10.0,
    only: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the telemetry, alerts, dead-letter and incident topics if missing, and wait until metadata lists them.

    :arg settings: Cluster connection and topic names.
    :arg partitions: Partition count for topics created here; defaults to `settings.topic_partitions`.
        Existing topics are left as they are (a differing count is logged, not changed).
    :arg timeout_s: Overall time limit for creation and metadata propagation.
    :arg only: Other topics (name -> topic config) to create instead (`plantpulse notify`'s own).
    :raises ValueError: Invalid topic name or partition count.
    :raises RuntimeError: The broker refused to create a topic (other than "already exists").
    :raises TimeoutError: The topics did not appear in metadata in time.
    """
    count = settings.topic_partitions if partitions is None else partitions
    if count < 1:
        raise ValueError(f"ensure_topics: partitions must be >= 1, got {count!r}")
    configs = topic_configs(settings) if only is None else only
    _check_names(configs)
    admin = _admin(settings)
    deadline = time.monotonic() + timeout_s

    existing = _metadata(admin, timeout_s).topics
    missing = [topic for topic in configs if topic not in existing]
    for topic in configs:
        if topic in existing and len(existing[topic].partitions) != count:
            logger.info("topic %r exists with %d partitions (asked for %d); leaving it", topic,
                        len(existing[topic].partitions), count)
    if missing:
        new = [NewTopic(topic, num_partitions=count, replication_factor=1, config=configs[topic])
               for topic in missing]
        # Replication factor 1 suits the embedded/single-broker case; production clusters create
        # their topics through their own tooling and only get here with the topics already present.
        futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
        for topic, future in futures.items():
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
                logger.info("created topic %r with %d partitions", topic, count)
            except KafkaException as exc:
                error = exc.args[0]
                # A concurrent creator (another worker, the simulator) won the race: that's fine.
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise RuntimeError(
                    f"ensure_topics: cannot create topic {topic!r} ({count} partitions): {error}"
                ) from exc

    # CreateTopics can return before every broker's metadata cache knows the topic.
    while True:
        topics = _metadata(admin, max(0.1, deadline - time.monotonic())).topics
        pending = [t for t in configs if t not in topics or topics[t].error is not None or not topics[t].partitions]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"ensure_topics: topics {pending} not visible in metadata after {timeout_s} s")
        time.sleep(0.05)


def partition_ids(settings: Settings, topic: str, *, timeout_s: float = 10.0) -> list[int]:
    """Sorted partition ids of an existing topic.

    :raises TopicNotFoundError: The topic does not exist (it is not auto-created by this lookup).
    """
    metadata = _metadata(_admin(settings), timeout_s).topics.get(topic)
    if metadata is None:
        raise TopicNotFoundError(f"Kafka topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}")
    if metadata.error is not None:
        raise TopicNotFoundError(f"Kafka topic {topic!r}: metadata error {metadata.error.str()}")
    return sorted(metadata.partitions)


def partition_count(settings: Settings, topic: str, *, timeout_s: float = 10.0) -> int:
    """Number of partitions of an existing topic (raises TopicNotFoundError when it does not exist)."""
    return len(partition_ids(settings, topic, timeout_s=timeout_s))


class TopicRecord(NamedTuple):
    """One message as returned by `read_topic`."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_topic(
    settings: Settings, topic: str, timeout_s: float = 30.0, *, start_offsets: dict[int, int] | None = None
) -> list[TopicRecord]:
    """Every message currently in `topic`, sorted by (partition, offset): for tests, summaries and tools.

    Reads each partition with `assign` up to the high watermark that the broker reports when the
    consumer reaches the end (partition EOF); messages produced after that are left for the next call.
    (Not `get_watermark_offsets`: tansu answers ListOffsets wrongly.) Loads everything into memory:
    not for production-size topics.

    :arg start_offsets: Optional partition -> first offset to read (default 0). Updated in place to
        the end offset of every partition, so passing the same dict again reads only new messages.
    :raises TopicNotFoundError: The topic does not exist.
    :raises TimeoutError: Some partition did not reach its end within `timeout_s`.
    """
    ids = partition_ids(settings, topic, timeout_s=timeout_s)
    starts = {} if start_offsets is None else start_offsets
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": "plantpulse-read-topic",  # required by librdkafka, never joined (assign)
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 20,  # an empty partition reports its end quickly
        }
    )
    records: list[TopicRecord] = []
    ends: dict[int, int] = {}
    try:
        # Offset 0 rather than OFFSET_BEGINNING: same result (auto.offset.reset=earliest), without the
        # ~0.5 s offset lookup measured on tansu.
        consumer.assign([TopicPartition(topic, p, max(0, starts.get(p, 0))) for p in ids])
        while len(ends) < len(ids):
            if time.monotonic() > deadline:
                pending = sorted(set(ids) - set(ends))
                raise TimeoutError(
                    f"read_topic({topic!r}): partitions {pending} did not reach their end within {timeout_s} s "
                    f"({len(records)} records read)"
                )
            for m in consumer.consume(10_000, 0.05):
                error = m.error()
                partition, offset = cast(int, m.partition()), cast(int, m.offset())
                if error is None:
                    if partition not in ends:  # past the end we stopped at: left for the next call
                        headers = cast("list[tuple[str, bytes]] | None", m.headers())
                        records.append(TopicRecord(partition, offset, m.key(), m.value(), headers or []))
                elif error.code() == KafkaError._PARTITION_EOF:
                    ends.setdefault(partition, offset)
                    consumer.pause([TopicPartition(topic, partition)])
                elif error.code() != KafkaError._AUTO_OFFSET_RESET:
                    raise KafkaConsumeError(
                        f"read_topic({topic!r}): error on partition {partition}: {error.name()}: {error.str()}"
                    )
    finally:
        consumer.close()
    if start_offsets is not None:
        start_offsets.update(ends)
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
