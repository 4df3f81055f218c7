"""The live telemetry dataflow: Kafka `telemetry` -> decode/validate -> windows + rules -> sinks.

Run it with `plantpulse run` or `python -m bytewax.run flows.telemetry:flow`; it is configured only by
the environment (see `plantpulse.settings`), recovery included: under bytewax.run, `RECOVERY_DIR` and
`SNAPSHOT_INTERVAL_SECONDS` are handed to it too, and its own `-r/-s` must agree with them (`flows.launch`).
`flow` is built on first access, so importing this module reads no environment.
"""

from __future__ import annotations

import time

import bytewax.operators as op
import orjson
import pyarrow as pa
from bytewax.dataflow import Dataflow

from connectors.clickhouse import ClickHouseSink
from connectors.kafka import (
    KafkaRecord,
    KafkaRecordSink,
    TelemetrySource,
    dead_letter_record,
)
from connectors.lake import QUARANTINE_DIR, LakeSink
from connectors.lake_store import s3_settings
from connectors.quarantine import quarantine_table
from connectors.topics import ensure_topics, partition_count, topic_configs
from flows import metrics, reading_issues
from flows.decode import DeadLetter, DecodedBatch
from flows.incidents import rows_as_ms
from flows.pipeline import PipelineConfig, process_telemetry
from plantpulse.schema import ALERT_ARROW_SCHEMA, QUARANTINE_ARROW_SCHEMA
from plantpulse.settings import Settings


def build_flow(settings: Settings | None = None, tail: bool = True) -> Dataflow:
    """Wire the live flow from settings; `tail=False` stops at the end of the topic (tests, catch-up)."""
    settings = settings or Settings()
    metrics.serve_metrics(settings.metrics_port)
    flow = Dataflow("plantpulse_telemetry")
    raw = op.input("telemetry_in", flow, TelemetrySource(settings, tail=tail))
    # Operators' incident commands (`plantpulse alerts ack ...`) come through Kafka: with embedded chDB this
    # process owns the database, so the flow itself applies and records them.
    # The flow owns both incident topics: create them if missing (a cluster that forbids it says so here).
    configs = topic_configs(settings)
    ensure_topics(settings, only={t: configs[t] for t in (settings.incidents_topic, settings.incident_commands_topic)})
    commands = op.input(
        "incident_commands_in", flow, TelemetrySource(settings, topic=settings.incident_commands_topic, tail=tail)
    )
    streams = process_telemetry("process", raw, PipelineConfig.from_settings(settings), commands=commands)

    def dead_letter(letter: DeadLetter) -> KafkaRecord:
        return dead_letter_record(
            letter.value,
            reason=letter.reason,
            detail=letter.detail,
            source_topic=letter.topic or settings.telemetry_topic,
            source_partition=letter.partition,
            source_offset=letter.offset,
            key=letter.key,
            # Bounded, so that no message is too large to dead-letter; the quarantine keeps the original.
            max_value_bytes=settings.deadletter_max_value_bytes,
        )

    op.output(
        "deadletter_out",
        op.map("deadletter_records", streams.dead_letters, dead_letter),
        KafkaRecordSink(settings, settings.deadletter_topic),
    )
    op.output(
        "alerts_kafka_out",
        op.flat_map("alert_records", streams.alerts, alert_records),
        KafkaRecordSink(settings, settings.alerts_topic),
    )
    op.output(
        "incidents_kafka_out",
        op.flat_map("incident_records", streams.incident_transitions, incident_records),
        KafkaRecordSink(settings, settings.incidents_topic),
    )
    tables = op.merge(
        "tables",
        op.map("incident_rows", streams.incident_states, lambda t: ("incidents", ("incidents", t))),
        op.map("incident_event_rows", streams.incident_transitions, lambda t: ("incidents", ("incident_events", t))),
        op.map("window_rows", streams.window_stats, lambda t: ("window_stats", ("window_stats", t))),
        op.map("alert_rows", streams.alerts, lambda t: ("alerts", ("alerts", t))),
        op.map("state_rows", streams.machine_state, lambda t: ("machine_state", ("machine_state", t))),
        op.map("score_rows", streams.anomaly_scores, lambda t: ("anomaly_scores", ("anomaly_scores", t))),
        op.map(
            "issue_rows", streams.reading_issues,
            lambda t: ("reading_issues", ("reading_issues", reading_issues.with_topic(t, settings.telemetry_topic))),
        ),
    )
    op.output("clickhouse_out", tables, ClickHouseSink(settings))
    # Every valid reading, as decoded, goes to the raw lake; one lake writer per Kafka partition.
    op.output(
        "lake_out",
        op.filter_map("lake_rows", streams.decoded, _lake_item),
        LakeSink(
            settings,
            partitions=partition_count(settings, settings.telemetry_topic),
            **s3_settings(settings),
        ),
    )
    # Dead letters are kept too, with their reason, under the lake's quarantine/ prefix.
    op.output(
        "quarantine_out",
        op.flat_map("quarantine_rows", streams.dead_letter_batches, lambda letters: quarantine_items(letters, settings)),
        LakeSink(
            settings,
            partitions=partition_count(settings, settings.telemetry_topic),
            **s3_settings(settings),
            schema=QUARANTINE_ARROW_SCHEMA,
            time_column="quarantined_at",
            subdir=QUARANTINE_DIR,
        ),
    )
    return flow


def quarantine_items(letters: list[DeadLetter], settings: Settings) -> list[tuple[str, pa.Table]]:
    """Dead letters as quarantine tables, one per source partition (the lake writer of that partition)."""
    now_ms = int(time.time() * 1000)
    by_partition: dict[int, list[DeadLetter]] = {}
    for letter in letters:
        by_partition.setdefault(letter.partition, []).append(letter)
    items = []
    for partition, group in by_partition.items():
        # Originals are kept whole up to QUARANTINE_MAX_VALUE_BYTES, with their size and SHA-256.
        table = quarantine_table(
            values=[d.value for d in group],
            keys=[d.key for d in group],
            reasons=[d.reason for d in group],
            details=[d.detail for d in group],
            source_topics=[d.topic or settings.telemetry_topic for d in group],
            source_partitions=[partition] * len(group),
            source_offsets=[d.offset for d in group],
            quarantined_at_ms=now_ms,
            max_value_bytes=settings.quarantine_max_value_bytes,
        )
        items.append((f"lake-{max(partition, 0)}", table))
    return items


def _lake_item(decoded: DecodedBatch) -> tuple[str, pa.Table] | None:
    readings = decoded.readings
    if readings.num_rows == 0:
        return None
    return f"lake-{readings['kafka_partition'][0].as_py()}", readings


# Alerts on Kafka carry timestamps as epoch milliseconds, like the readings.
_ALERTS_AS_MS = pa.schema(
    [pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in ALERT_ARROW_SCHEMA]
)


def alert_records(alerts: pa.Table) -> list[KafkaRecord]:
    """One JSON record per alert, keyed by machine, timestamps as epoch milliseconds."""
    rows = alerts.cast(_ALERTS_AS_MS).to_pylist()
    return [KafkaRecord(key=row["machine_id"].encode(), value=orjson.dumps(row), headers=None) for row in rows]


def incident_records(transitions: pa.Table) -> list[KafkaRecord]:
    """One JSON record per incident transition, keyed by machine; `event_id` is the idempotency key."""
    return [
        KafkaRecord(
            key=row["machine_id"].encode(), value=orjson.dumps(row), headers=[("event_id", row["event_id"].encode())]
        )
        for row in rows_as_ms(transitions)
    ]


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.telemetry:flow` looks the flow up here; building it on access keeps
    # environment reading out of import time. bytewax.run has parsed its recovery options by now and would
    # ignore RECOVERY_DIR: `for_bytewax_run` hands it the settings' recovery (or refuses in one line).
    if name == "flow":
        from flows.launch import for_bytewax_run  # only this entry point needs it

        return for_bytewax_run(build_flow)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

