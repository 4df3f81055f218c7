"""`plantpulse topics ensure`, the one topic creator, and `plantpulse run`'s topic check, on the embedded broker.

What is created is read back with Kafka's admin API (metadata and DescribeConfigs), not from our own output.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from connectors.topics import TopicCheckError, check_flow_topics, ensure_topics
from flows.launch import prepare_topics
from plantpulse.settings import Settings
from sim.producer import ensure_topic
from tests.processes import PLANTPULSE, flow_env

HOUR_MS = 3_600_000


def _settings(kafka_settings, **overrides) -> Settings:
    return kafka_settings(notify_deadletter_topic=f"notify-dl-{uuid.uuid4().hex[:8]}", **overrides)


def _env(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    return flow_env(settings, tmp_path, NOTIFY_DEADLETTER_TOPIC=settings.notify_deadletter_topic, **extra)


def _names(settings: Settings) -> list[str]:
    return [settings.telemetry_topic, settings.alerts_topic, settings.deadletter_topic, settings.incidents_topic,
            settings.incident_commands_topic, settings.notify_deadletter_topic]


def _read_back(settings: Settings, names: list[str]) -> dict[str, tuple[int, int, int, str] | None]:
    """(partitions, fewest replicas, retention.ms, cleanup.policy) per topic, from the broker; None if missing."""
    admin = AdminClient(settings.kafka_config())
    topics = admin.list_topics(timeout=10).topics
    present = [n for n in names if n in topics]
    configs = {}
    if present:
        for resource, future in admin.describe_configs([ConfigResource("topic", n) for n in present]).items():
            entries = future.result(10)
            configs[resource.name] = (int(entries["retention.ms"].value), entries["cleanup.policy"].value)
    return {
        n: (len(topics[n].partitions), min(len(p.replicas) for p in topics[n].partitions.values()), *configs[n])
        if n in present else None
        for n in names
    }


def _topics(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(PLANTPULSE + ["topics", "ensure", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_ensure_creates_every_topic_from_the_settings_and_is_idempotent(kafka_settings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings)
    env = _env(settings, tmp_path, TOPIC_PARTITIONS="3", TOPIC_REPLICATION_FACTOR="1", TELEMETRY_RETENTION_HOURS="2",
               ALERTS_RETENTION_HOURS="3", DEADLETTER_RETENTION_HOURS="4", INCIDENTS_RETENTION_HOURS="5",
               INCIDENT_COMMANDS_RETENTION_HOURS="6", NOTIFY_DEADLETTER_RETENTION_HOURS="7")
    names = _names(settings)
    assert set(_read_back(settings, names).values()) == {None}

    first = _topics(env)
    assert first.returncode == 0, first.stderr
    assert [line.split("\t")[:2] for line in first.stdout.splitlines()] == [[n, "created"] for n in names]
    expected = {name: (3, 1, hours * HOUR_MS, "delete") for name, hours in zip(names, range(2, 8))}
    assert _read_back(settings, names) == expected

    again = _topics(env)
    assert again.returncode == 0, again.stderr
    assert [line.split("\t")[:2] for line in again.stdout.splitlines()] == [[n, "exists"] for n in names]
    assert _read_back(settings, names) == expected


def test_ensure_reports_too_few_partitions_and_other_retention(kafka_settings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings)
    admin = AdminClient(settings.kafka_config())
    existing = NewTopic(settings.telemetry_topic, 1, 1, config={"retention.ms": "60000", "cleanup.policy": "delete"})
    admin.create_topics([existing])[settings.telemetry_topic].result(10)
    env = _env(settings, tmp_path, TOPIC_PARTITIONS="3")

    checked = _topics(env, "--check")  # creates nothing
    assert checked.returncode == 1
    assert f"topic {settings.alerts_topic!r} does not exist" in checked.stderr
    assert _read_back(settings, [settings.alerts_topic]) == {settings.alerts_topic: None}

    result = _topics(env)
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert problems == [
        f"plantpulse: topic {settings.telemetry_topic!r} has 1 partition(s), fewer than TOPIC_PARTITIONS=3 "
        "(add partitions with Kafka's tools; they are never removed)",
        f"plantpulse: topic {settings.telemetry_topic!r} has retention.ms=60000, the settings say {168 * HOUR_MS}",
    ]
    # The other topics were created all the same; the existing one was left as it was.
    back = _read_back(settings, _names(settings))
    assert back[settings.telemetry_topic] == (1, 1, 60000, "delete")
    assert back[settings.alerts_topic] == (3, 1, 720 * HOUR_MS, "delete")


def test_run_fails_in_one_line_when_topics_are_missing_or_too_small(kafka_settings, tmp_path: Path) -> None:
    settings = _settings(kafka_settings)
    env = _env(settings, tmp_path, METRICS_PORT="0")
    missing = subprocess.run(PLANTPULSE + ["run"], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"plantpulse: Kafka topic(s) {', '.join(_names(settings)[:5])} missing on {settings.kafka_bootstrap_servers}: "
        "create them with `plantpulse topics ensure` (or set KAFKA_CREATE_TOPICS=true)"
    ]
    assert _read_back(settings, [settings.telemetry_topic]) == {settings.telemetry_topic: None}  # nothing created

    assert _topics(_env(settings, tmp_path, TOPIC_PARTITIONS="2")).returncode == 0
    small = subprocess.run(PLANTPULSE + ["run", "-w", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert small.returncode == 2
    assert small.stderr.strip().splitlines() == [
        f"plantpulse: Kafka topic {settings.telemetry_topic!r} has 2 partition(s) but the flow runs 3 workers: "
        "add partitions to the topic or run fewer workers"
    ]


def test_run_creates_the_flow_topics_when_configured(kafka_settings) -> None:
    """KAFKA_CREATE_TOPICS=true: the check `plantpulse run` makes first creates the flow's topics with the same
    configs as `plantpulse topics ensure`; the workers count comes from the cluster settings (2 processes x 2)."""
    settings = _settings(kafka_settings, kafka_create_topics=True, topic_partitions=4, bytewax_process_id=0,
                         bytewax_addresses="127.0.0.1:1;127.0.0.1:2", bytewax_workers_per_process=2)
    prepare_topics(settings)
    flow = _names(settings)[:5]
    assert _read_back(settings, flow) == {
        settings.telemetry_topic: (4, 1, 168 * HOUR_MS, "delete"),
        settings.alerts_topic: (4, 1, 720 * HOUR_MS, "delete"),
        settings.deadletter_topic: (4, 1, 336 * HOUR_MS, "delete"),
        settings.incidents_topic: (4, 1, 2160 * HOUR_MS, "delete"),
        settings.incident_commands_topic: (4, 1, 720 * HOUR_MS, "delete"),
    }
    with pytest.raises(TopicCheckError, match="has 4 partition.s. but the flow runs 5 workers"):
        check_flow_topics(settings, 5)


def test_simulator_creates_topics_with_the_same_configs(kafka_settings) -> None:
    """`plantpulse sim` goes through the one creator: all of PlantPulse's topics, same partitions and retention."""
    settings = _settings(kafka_settings, topic_partitions=2)
    assert ensure_topic(settings) is True
    assert ensure_topic(settings) is False
    reference = _settings(kafka_settings, topic_partitions=2)
    assert ensure_topics(reference) == _names(reference)
    assert ensure_topics(reference) == []
    assert list(_read_back(settings, _names(settings)).values()) == list(_read_back(reference, _names(reference)).values())
