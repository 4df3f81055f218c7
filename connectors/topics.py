"""Topic-level tools: create PlantPulse's topics if missing, check them, look up partitions, dump a topic.

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
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic, ResourceType

from plantpulse.settings import Settings

__all__ = [
    "KafkaConsumeError",
    "TopicCheckError",
    "TopicNotFoundError",
    "TopicRecord",
    "TopicState",
    "check_flow_topics",
    "describe_topics",
    "ensure_topics",
    "flow_topics",
    "partition_count",
    "partition_ids",
    "read_topic",
    "topic_configs",
    "topic_problems",
]

logger = logging.getLogger(__name__)

_HOUR_MS = 3600 * 1000
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


def flow_topics(settings: Settings) -> list[str]:
    """The topics the live flow reads (telemetry, incident commands) and writes (alerts, dead letters, incidents)."""
    return [settings.telemetry_topic, settings.alerts_topic, settings.deadletter_topic, settings.incidents_topic,
            settings.incident_commands_topic]


def _hours_ms(hours: float) -> str:
    return str(round(hours * _HOUR_MS))


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Explicit per-topic configs from the settings (`*_RETENTION_HOURS`), so retention never silently depends on
    the broker's defaults: the flow's topics and the notifier's dead letters.

    None is compacted: every topic is a log of events, not keyed state. The incidents topic is keyed by machine but
    holds every transition of every incident; `plantpulse alerts list` and the notifier fold all of them, so
    compaction (which keeps one record per key) would drop whole incidents and undelivered transitions.
    """
    retention = {
        settings.telemetry_topic: settings.telemetry_retention_hours,
        settings.alerts_topic: settings.alerts_retention_hours,
        settings.deadletter_topic: settings.deadletter_retention_hours,
        settings.incidents_topic: settings.incidents_retention_hours,
        settings.incident_commands_topic: settings.incident_commands_retention_hours,
        settings.notify_deadletter_topic: settings.notify_deadletter_retention_hours,
    }
    return {topic: {"retention.ms": _hours_ms(hours), "cleanup.policy": "delete"} for topic, hours in retention.items()}


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
) -> list[str]:
    """Create PlantPulse's topics (`topic_configs`) if missing, and wait until metadata lists them.

    The one topic creator: `plantpulse topics ensure`, `plantpulse sim`, the demo, the notifier and
    `plantpulse run` with KAFKA_CREATE_TOPICS=true all come here, with the same configs.

    :arg settings: Cluster connection, topic names, TOPIC_REPLICATION_FACTOR and retention settings.
    :arg partitions: Partition count for topics created here; defaults to `settings.topic_partitions`.
        Existing topics are left as they are (see `topic_problems` for the check).
    :arg timeout_s: Overall time limit for creation and metadata propagation.
    :arg only: Other topics (name -> topic config) to create instead.
    :returns: The topics created by this call.
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
    created: list[str] = []
    if missing:
        replication = settings.topic_replication_factor
        new = [NewTopic(topic, num_partitions=count, replication_factor=replication, config=configs[topic])
               for topic in missing]
        futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
        for topic, future in futures.items():
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
                created.append(topic)
                logger.info("created topic %r with %d partitions", topic, count)
            except KafkaException as exc:
                error = exc.args[0]
                # A concurrent creator (another worker, the simulator) won the race: that's fine.
                if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise RuntimeError(
                    f"ensure_topics: cannot create topic {topic!r} ({count} partitions, replication factor "
                    f"{replication}): {error}"
                ) from exc

    # CreateTopics can return before every broker's metadata cache knows the topic.
    while True:
        topics = _metadata(admin, max(0.1, deadline - time.monotonic())).topics
        pending = [t for t in configs if t not in topics or topics[t].error is not None or not topics[t].partitions]
        if not pending:
            return created
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


class TopicState(NamedTuple):
    """An existing topic as the cluster describes it."""

    name: str
    partitions: int
    replication_factor: int  # the fewest replicas of any of its partitions
    configs: dict[str, str]  # the keys `topic_configs` sets, as the broker reports them


class TopicCheckError(LookupError):
    """PlantPulse's topics are missing or not as the settings require (one line, for the command line)."""


def describe_topics(
    settings: Settings, names: Iterable[str], *, timeout_s: float = 10.0, configs: bool = True
) -> dict[str, TopicState | None]:
    """Each named topic's partitions, replication factor and (with `configs`) retention and cleanup policy;
    None for a topic that does not exist. Never creates a topic (metadata is asked for all topics)."""
    wanted = list(names)
    _check_names(wanted)
    admin = _admin(settings)
    metadata = _metadata(admin, timeout_s).topics
    states: dict[str, TopicState | None] = {}
    for name in wanted:
        topic = metadata.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            states[name] = None
            continue
        replicas = min(len(p.replicas) for p in topic.partitions.values())
        states[name] = TopicState(name, len(topic.partitions), replicas, {})
    present = [name for name, state in states.items() if state is not None]
    if configs and present:
        keys = {key for config in topic_configs(settings).values() for key in config}
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in present],
                                         request_timeout=timeout_s)
        for resource, future in futures.items():
            try:
                entries = future.result(timeout=timeout_s)
            except KafkaException as exc:
                raise ConnectionError(f"cannot describe the configs of topic {resource.name!r}: {exc}") from exc
            state = states[resource.name]
            if state is not None:
                state.configs.update({k: e.value for k, e in entries.items() if k in keys and e.value is not None})
    return states


def topic_problems(settings: Settings, states: dict[str, TopicState | None]) -> list[str]:
    """What differs from the settings, one line each: a missing topic, fewer partitions than TOPIC_PARTITIONS,
    fewer replicas than TOPIC_REPLICATION_FACTOR, or another retention or cleanup policy."""
    wanted = topic_configs(settings)
    problems = []
    for name, state in states.items():
        if state is None:
            problems.append(f"topic {name!r} does not exist")
            continue
        if state.partitions < settings.topic_partitions:
            problems.append(f"topic {name!r} has {state.partitions} partition(s), fewer than TOPIC_PARTITIONS="
                            f"{settings.topic_partitions} (add partitions with Kafka's tools; they are never removed)")
        if state.replication_factor < settings.topic_replication_factor:
            problems.append(f"topic {name!r} has replication factor {state.replication_factor}, fewer than "
                            f"TOPIC_REPLICATION_FACTOR={settings.topic_replication_factor}")
        for key, value in wanted.get(name, {}).items():
            actual = state.configs.get(key)
            if actual is not None and actual != value:
                problems.append(f"topic {name!r} has {key}={actual}, the settings say {value}")
    return problems


def check_flow_topics(settings: Settings, total_workers: int, *, timeout_s: float = 10.0) -> None:
    """What `plantpulse run` needs before it starts: the flow's topics exist, and the telemetry topic has a
    partition for each of the cluster's workers (a worker without one would only idle).

    :raises TopicCheckError: One line naming what is missing and how to fix it.
    """
    states = describe_topics(settings, flow_topics(settings), timeout_s=timeout_s, configs=False)
    missing = [name for name, state in states.items() if state is None]
    if missing:
        raise TopicCheckError(
            f"Kafka topic(s) {', '.join(missing)} missing on {settings.kafka_bootstrap_servers}: create them with "
            "`plantpulse topics ensure` (or set KAFKA_CREATE_TOPICS=true)"
        )
    telemetry = states[settings.telemetry_topic]
    if telemetry is not None and telemetry.partitions < total_workers:
        raise TopicCheckError(
            f"Kafka topic {settings.telemetry_topic!r} has {telemetry.partitions} partition(s) but the flow runs "
            f"{total_workers} workers: add partitions to the topic or run fewer workers"
        )


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
