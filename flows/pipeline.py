"""The telemetry processing steps as composites: raw polls in, sink-ready streams out.

`process_telemetry` (decode + `analyse_readings`) is shared by the live flow (`flows.telemetry`), the
benchmark and the tests; `analyse_readings` (shard -> window -> rules -> sensor health and anomaly models) is
also what the
replay flow (`flows.replay`) runs on recorded readings, so live and replay run exactly the same logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Stream, operator

from connectors.device_registry import RegistryWatcher
from flows import gc_policy, metrics, reading_issues
from flows.anomaly_logic import AnalysedWindows, AnomalyLogic
from flows.decode import BatchDecoder, DeadLetter, DecodedBatch, ValidationLimits
from flows.device_auth import SignatureCheck
from flows.fleet import load_machine_sites, load_machine_types
from flows.incident_logic import (
    AnomalyEvents,
    CommandItem,
    IncidentConfig,
    IncidentLogic,
    IncidentOutput,
    decode_commands,
    sensor_events,
    threshold_events,
)
from flows.rules import ThresholdRule, load_rules
from flows.window_logic import ShardSplitter, ShardWindowLogic, restore_windows
from flows.window_state import ShardWindows, WindowConfig, WindowOutput
from models.fleet_models import FleetModels
from models.spec import ModelSpecs, load_model_specs
from plantpulse.schema import RawBatch
from plantpulse.settings import Settings


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the steps need, resolved once from `Settings` (or built directly by tests)."""

    limits: ValidationLimits
    windows: WindowConfig
    rules: tuple[ThresholdRule, ...]
    machine_types: dict[str, str]
    shards: int
    models: ModelSpecs | None = None  # None: no anomaly models
    resolve_after_windows: int = 6  # incidents: default quiet windows before one resolves
    machine_sites: dict[str, str] | None = None
    device_keys: Path | None = None  # the device key registry; None accepts unsigned readings (DEVICE_AUTH=off)
    device_keys_reload_s: float = 5.0

    def incident_config(self) -> IncidentConfig:
        return IncidentConfig(
            resolve_after=self.resolve_after_windows,
            window_ms=self.windows.window_ms,
            rules={rule.id: rule for rule in self.rules},
            models=self.models,
            sites=self.machine_sites or {},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineConfig:
        return cls(
            limits=ValidationLimits(
                max_payload_bytes=settings.max_payload_bytes,
                max_future_skew_ms=int(settings.max_future_skew_seconds * 1000),
                max_event_age_ms=int(settings.max_event_age_seconds * 1000),
            ),
            windows=WindowConfig(
                window_ms=settings.window_seconds * 1000,
                lateness_ms=int(settings.allowed_lateness_seconds * 1000),
                idle_close_s=settings.idle_close_seconds,
                stale_after_s=settings.stale_after_seconds,
                dedup_seq_window=settings.dedup_seq_window,
            ),
            rules=tuple(load_rules(settings.rules_file)),
            machine_types=load_machine_types(Path(settings.machines_file)) if settings.machines_file else {},
            shards=settings.state_shards,
            models=load_model_specs(settings.models_file),
            resolve_after_windows=settings.incident_resolve_after_windows,
            machine_sites=load_machine_sites(Path(settings.machines_file)) if settings.machines_file else {},
            device_keys=settings.device_keys_file if settings.device_auth == "required" else None,
            device_keys_reload_s=settings.device_keys_reload_seconds,
        )


@dataclass
class PipelineStreams:
    decoded: Stream[DecodedBatch]
    dead_letters: Stream[DeadLetter]
    dead_letter_batches: Stream[list[DeadLetter]]  # the same dead letters, as the lists they arise in
    window_stats: Stream[pa.Table]
    alerts: Stream[pa.Table]  # threshold, anomaly and sensor alerts
    machine_state: Stream[pa.Table]
    anomaly_scores: Stream[pa.Table]
    incident_states: Stream[pa.Table]  # every new version of an incident (the `incidents` table)
    incident_transitions: Stream[pa.Table]  # opened, escalated, ... (`incident_events`, `incidents` topic)
    # Dead letters, duplicates and sequence restarts of telemetry (`reading_issues`; topic "" for the last two).
    reading_issues: Stream[pa.Table]


@dataclass
class AnalysisStreams:
    window_stats: Stream[pa.Table]
    alerts: Stream[pa.Table]
    machine_state: Stream[pa.Table]
    anomaly_scores: Stream[pa.Table]
    late: Stream[list[DeadLetter]]
    incident_states: Stream[pa.Table]
    incident_transitions: Stream[pa.Table]
    rejected_commands: Stream[list[DeadLetter]]
    issues: Stream[pa.Table]  # duplicates and sequence restarts


@operator
def process_telemetry(
    step_id: str,
    raw: Stream[RawBatch],
    config: PipelineConfig,
    clock: Callable[[], float] = time.time,
    commands: Stream[RawBatch] | None = None,
) -> PipelineStreams:
    """Decode, validate, window and evaluate rules on a stream of raw polls (a composite operator).

    `commands`: polls of the `incident-commands` topic (operators' ack/resolve/comment), if any. Building it
    sets the process's garbage-collector thresholds for polls (`flows.gc_policy`)."""
    gc_policy.apply()
    signatures = None
    if config.device_keys is not None:
        signatures = SignatureCheck(RegistryWatcher(config.device_keys, config.device_keys_reload_s))
    decoder = BatchDecoder(config.limits, signatures)

    def decode(batch: RawBatch) -> DecodedBatch:
        decoded = decoder.decode(batch, now_ms=int(clock() * 1000))
        metrics.READINGS_RECEIVED.inc(decoded.received)
        for letter in decoded.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.reason).inc()
        return decoded

    decoded = op.map("decode", raw, decode)
    keyed_commands: Stream[tuple[str, CommandItem]] | None = None
    bad_commands: Stream[list[DeadLetter]] | None = None
    if commands is not None:
        items = op.flat_map("decode_commands", commands, lambda batch: decode_commands(batch, config.shards))
        keyed_commands = op.filter_map(
            "commands", items, lambda i: (i[0], i[1]) if isinstance(i[1], CommandItem) else None
        )
        bad_commands = op.filter_map("bad_commands", items, lambda i: [i[1]] if isinstance(i[1], DeadLetter) else None)
    readings = op.map("readings", decoded, lambda d: d.readings)
    analysis = analyse_readings("analyse", readings, config, clock, keyed_commands)
    invalid = op.map("invalid", decoded, lambda d: d.dead_letters)
    rejected = [invalid, analysis.late, analysis.rejected_commands]
    if bad_commands is not None:
        rejected.append(bad_commands)
    letter_batches = op.filter("dead_letter_batches", op.merge("rejected", *rejected), bool)
    # Operators' rejected commands are not telemetry: they stay out of the readings' data quality.
    telemetry_letters = op.filter("telemetry_letters", op.merge("rejected_telemetry", invalid, analysis.late), bool)
    issues = op.merge(
        "reading_issues",
        op.map("letter_issues", telemetry_letters,
               lambda letters: reading_issues.from_letters(letters, int(clock() * 1000))),
        analysis.issues,
    )
    return PipelineStreams(
        decoded=decoded,
        dead_letters=op.flat_map("dead_letters", letter_batches, lambda letters: letters),
        dead_letter_batches=letter_batches,
        window_stats=analysis.window_stats,
        alerts=analysis.alerts,
        machine_state=analysis.machine_state,
        anomaly_scores=analysis.anomaly_scores,
        incident_states=analysis.incident_states,
        incident_transitions=analysis.incident_transitions,
        reading_issues=issues,
    )


@operator
def analyse_readings(
    step_id: str,
    readings: Stream[pa.Table],
    config: PipelineConfig,
    clock: Callable[[], float] = time.time,
    commands: Stream[tuple[str, CommandItem]] | None = None,
) -> AnalysisStreams:
    """Shard, window, evaluate rules, score anomaly models and keep incidents on decoded reading tables."""

    def build_logic(snapshot: bytes | None) -> ShardWindowLogic:
        fresh = ShardWindows(config.windows, list(config.rules), config.machine_types)
        return ShardWindowLogic(restore_windows(fresh, snapshot, clock()), clock)

    splitter = ShardSplitter(config.shards)
    sharded = op.flat_map("shard", readings, splitter)
    keyed_outputs = op.map_value("count", op.stateful_batch("windows", sharded, build_logic), _count)
    outputs = op.key_rm("outputs", keyed_outputs)
    threshold_alerts = op.filter_map("alerts", outputs, lambda o: o.alerts if o.alerts and o.alerts.num_rows else None)
    window_stats = op.filter_map("window_stats", outputs, lambda o: o.window_stats)
    anomaly_scores: Stream[pa.Table]
    incident_inputs: list[Stream] = [
        op.filter_map_value(
            "threshold_events", keyed_outputs,
            lambda o: threshold_events(o.early, o.alerts, o.window_stats, o.silent),
        )
    ]
    if commands is not None:
        incident_inputs.append(commands)
    if config.models is None:
        anomaly_scores = op.filter_map("no_models", window_stats, lambda _: None)
        alerts = threshold_alerts
    else:
        specs = config.models
        keyed_windows = op.filter_map_value("keyed_windows", keyed_outputs, lambda o: o.window_stats)

        def build_models(snapshot: bytes | None) -> AnomalyLogic:
            return AnomalyLogic.restore(snapshot, lambda: FleetModels(specs), clock)

        keyed_scored = op.stateful_batch("anomaly", keyed_windows, build_models)
        incident_inputs.append(
            op.filter_map_value(
                "anomaly_events", keyed_scored, lambda s: AnomalyEvents(s.scores) if s.scores.num_rows else None
            )
        )
        incident_inputs.append(op.filter_map_value(
            "sensor_events", keyed_scored, lambda s: sensor_events(s.sensor.detections, s.sensor.raised, s.scores)
        ))
        scored = op.key_rm("scored", keyed_scored)
        anomaly_scores = op.filter_map("anomaly_scores", scored, lambda s: s.scores if s.scores.num_rows else None)
        alerts = op.merge("all_alerts", threshold_alerts, op.filter_map("anomaly_alerts", scored, _anomaly_alerts),
                          op.filter_map("sensor_alerts", scored, _sensor_alerts))
    incident_config = config.incident_config()

    def build_incidents(snapshot: bytes | None) -> IncidentLogic:
        return IncidentLogic.restore(snapshot, incident_config, clock)

    incidents: Stream[IncidentOutput] = op.key_rm(
        "incident_outputs", op.stateful_batch("incidents", op.merge("incident_inputs", *incident_inputs), build_incidents)
    )
    transitions = op.filter_map("incident_transitions", incidents, _count_transitions)
    return AnalysisStreams(
        window_stats=window_stats,
        alerts=alerts,
        machine_state=op.filter_map("machine_state", outputs, lambda o: o.machine_state),
        anomaly_scores=anomaly_scores,
        late=op.map("late", outputs, lambda o: o.dead_letters or []),
        incident_states=op.filter_map("incident_states", incidents, lambda i: i.states),
        incident_transitions=transitions,
        rejected_commands=op.filter_map("rejected_commands", incidents, lambda i: i.rejected or None),
        issues=op.filter_map("issues", outputs, lambda o: o.issues),
    )


def _count_transitions(output: IncidentOutput) -> pa.Table | None:
    if output.transitions is not None:
        for transition, kind in zip(output.transitions["transition"].to_pylist(), output.transitions["kind"].to_pylist()):
            metrics.INCIDENT_TRANSITIONS.labels(transition, kind).inc()
    return output.transitions


def _anomaly_alerts(analysed: AnalysedWindows) -> pa.Table | None:
    if analysed.alerts is None:
        return None
    metrics.ALERTS_RAISED.labels("warning").inc(analysed.alerts.num_rows)
    return analysed.alerts


def _sensor_alerts(analysed: AnalysedWindows) -> pa.Table | None:
    alerts = analysed.sensor.alerts
    if alerts is not None:
        metrics.ALERTS_RAISED.labels("warning").inc(alerts.num_rows)
    return alerts


def _count(output: WindowOutput) -> WindowOutput:
    metrics.READINGS_ACCEPTED.inc(output.accepted)
    metrics.DUPLICATES.inc(output.duplicates)
    metrics.SEQ_RESETS.inc(output.seq_resets)
    if output.dead_letters:
        metrics.DEAD_LETTERS.labels("late").inc(len(output.dead_letters))
    if output.window_stats is not None:
        metrics.WINDOWS_EMITTED.inc(output.window_stats.num_rows)
        metrics.window_closed(int(output.window_stats["window_end"].cast("int64").to_numpy().max()))
    if output.alerts is not None:
        for severity in output.alerts["severity"].to_pylist():
            metrics.ALERTS_RAISED.labels(severity).inc()
    return output
