"""Operators' side of incidents: publish commands to the flow, and read incidents while the flow runs.

With the embedded database (chDB) the running flow owns the ClickHouse directory, so `plantpulse alerts`
cannot touch it: commands go to the `incident-commands` topic, which the flow applies and records, and the
current incidents are folded from the `incidents` topic (every transition carries the incident's whole
state; the highest version wins). With a ClickHouse server, `incidents FINAL` answers the same question.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaException, Producer

from connectors.clickhouse import run_sql
from connectors.topics import read_topic
from plantpulse.schema import INCIDENT_ARROW_SCHEMA
from plantpulse.settings import Settings


class CommandNotDelivered(RuntimeError):
    """The command could not be written to the incident-commands topic."""


def publish_command(settings: Settings, action: str, incident_id: str, by: str, note: str = "") -> str:
    """Send one operator command (keyed by machine, like the incident); returns its command id."""
    command_id = uuid.uuid4().hex
    value = orjson.dumps({"action": action, "incident_id": incident_id, "by": by, "note": note, "command_id": command_id})
    producer = Producer({**settings.kafka_config(), "acks": "all", "enable.idempotence": True})
    failures: list[str] = []

    def delivered(error: object, _msg: object) -> None:
        if error is not None:
            failures.append(str(error))

    try:
        producer.produce(
            settings.incident_commands_topic, value=value, key=incident_id.split("/", 1)[0].encode(), on_delivery=delivered
        )
    except (KafkaException, BufferError) as error:
        raise CommandNotDelivered(
            f"{action} {incident_id}: cannot produce to {settings.incident_commands_topic!r}: {error}"
        ) from error
    if producer.flush(15.0) > 0 or failures:
        reason = failures[0] if failures else "not acknowledged by the broker within 15 s"
        raise CommandNotDelivered(f"{action} {incident_id}: {settings.incident_commands_topic!r}: {reason}")
    return command_id


def incidents_from_topic(settings: Settings, start_offsets: dict[int, int] | None = None,
                         into: dict[str, dict] | None = None) -> dict[str, dict]:
    """incident_id -> newest transition record (timestamps as epoch ms), folded from the `incidents` topic.

    Pass the same `start_offsets` and `into` again to fold only what arrived since."""
    current = {} if into is None else into
    for record in read_topic(settings, settings.incidents_topic, start_offsets=start_offsets):
        if record.value is not None:
            fold_incident(current, orjson.loads(record.value))
    return current


def fold_incident(current: dict[str, dict], row: dict) -> None:
    """Keep `row` if it is the newest version of its incident seen so far (a re-sent transition changes nothing)."""
    known = current.get(row["incident_id"])
    if known is None or row["version"] >= known["version"]:
        current[row["incident_id"]] = row


def incidents_from_clickhouse(settings: Settings) -> dict[str, dict]:
    """The same from `incidents FINAL` (a ClickHouse server, or chDB when no flow holds it)."""
    names = [f.name for f in INCIDENT_ARROW_SCHEMA]
    timestamps = {f.name for f in INCIDENT_ARROW_SCHEMA if str(f.type).startswith("timestamp")}
    selected = ", ".join(f"toUnixTimestamp64Milli({n})" if n in timestamps else n for n in names)
    columns, rows = run_sql(settings, f"SELECT {selected} FROM incidents FINAL ORDER BY opened_at")
    return {row[0]: dict(zip(names, row)) for row in rows}


def wait_for_incident(
    settings: Settings, incident_id: str, accept: Callable[[dict], bool], timeout_s: float
) -> dict | None:
    """Follow the `incidents` topic until a record of `incident_id` satisfies `accept`, or None at timeout."""
    offsets: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for record in read_topic(settings, settings.incidents_topic, start_offsets=offsets):
            if record.value is None:
                continue
            row = orjson.loads(record.value)
            if row["incident_id"] == incident_id and accept(row):
                return row
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.3)
