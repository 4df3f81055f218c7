"""The Bytewax side of incidents: what feeds an `IncidentBook` per state shard, and operator commands.

The incidents step is keyed by the same shard as the window state and the anomaly models, and fed four
kinds of items per shard:

- `ThresholdEvents` from the window step, in its order: early detections (a rule's condition completed
  while the window is open, `flows.early_rules`), the closed windows' threshold alerts, the closed windows
  themselves (quiet windows for threshold incidents) and machines that turned stale;
- `AnomalyEvents` from the anomaly step, in its order: every scored window (an alert opens an incident, an
  anomalous window extends an open one, any other window is quiet for it);
- `SensorEvents` from the same step: faulty sensors (`models.sensor_health`) per window and kind; a `sensor`
  alert opens a `sensor` incident (instrument maintenance, one per machine and rule `sensor_stuck`,
  `sensor_dropout` or `sensor_spike`), a later faulty window of that kind extends it, and every checked
  window without one is quiet for it;
- `Command`s from the `incident-commands` topic (`plantpulse alerts ack/resolve/comment`).

Threshold, anomaly and sensor incidents never share a (machine, rule) key and each kind only counts its own
source's windows, so results do not depend on how the sources interleave; within a source, detections
and quiet windows are applied in window order, so they do not depend on batch boundaries either.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import StatefulBatchLogic

from flows import snapshots
from flows.decode import DeadLetter
from flows.early_rules import EarlyDetection
from flows.incidents import Changes, CommandRejected, Detection, IncidentBook
from flows.rules import ThresholdRule
from flows.window_state import shard_index, shard_key
from models.features import FEATURE_SENSOR
from models.spec import ModelSpecs
from plantpulse.schema import MACHINE_ID_PATTERN, RawBatch

logger = logging.getLogger("plantpulse.incidents")
INVALID_COMMAND = "invalid_command"
ACTIONS = ("ack", "resolve", "comment")


@dataclass(frozen=True)
class IncidentConfig:
    resolve_after: int  # default quiet windows (INCIDENT_RESOLVE_AFTER_WINDOWS)
    window_ms: int
    rules: dict[str, ThresholdRule]
    models: ModelSpecs | None
    sites: dict[str, str] = field(default_factory=dict)

    def rule_resolve_after(self, rule: ThresholdRule) -> int:
        return rule.resolve_after_windows or self.resolve_after


class ThresholdEvents(NamedTuple):
    early: list[tuple[str, str, EarlyDetection]]  # (machine_id, machine_type, detection)
    alerts: pa.Table | None  # closed windows' threshold alerts (ALERT_ARROW_SCHEMA)
    closed: pa.Table | None  # closed windows (window_stats: machine_id, window_start, ...)
    stale: list[str]  # machines that turned stale by wall-clock silence


class AnomalyEvents(NamedTuple):
    scores: pa.Table  # ANOMALY_SCORE_ARROW_SCHEMA


class SensorEvents(NamedTuple):
    detections: pa.Table | None  # ALERT_ARROW_SCHEMA rows of kind "sensor": one per faulty (window, rule)
    raised: list[bool]  # per detection: it is an alert (opens an incident); else it only extends one
    windows: pa.Table  # every checked window (machine_id, window_start): quiet unless it has a detection


class Command(msgspec.Struct, frozen=True):
    action: str
    incident_id: str
    by: str
    note: str = ""
    command_id: str = ""


class CommandItem(NamedTuple):
    command: Command
    letter: DeadLetter  # the original message, dead-lettered if the command cannot apply


class IncidentOutput(NamedTuple):
    states: pa.Table | None  # every new version (the `incidents` table)
    transitions: pa.Table | None  # incident_events and the `incidents` topic
    rejected: list[DeadLetter]


class IncidentLogic(StatefulBatchLogic[object, IncidentOutput, bytes]):
    def __init__(self, book: IncidentBook, config: IncidentConfig, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.config = config
        self.clock = clock

    @classmethod
    def restore(
        cls, snapshot: bytes | None, config: IncidentConfig, clock: Callable[[], float] = time.time
    ) -> IncidentLogic:
        book = snapshots.unpack(snapshot) if snapshot is not None else IncidentBook(config.window_ms)
        book.window_ms = config.window_ms  # configuration from this start, state from the snapshot
        return cls(book, config, clock)

    def on_batch(self, values: list[object]) -> tuple[Iterable[IncidentOutput], bool]:
        now_ms = int(self.clock() * 1000)
        changes, rejected = Changes(), []
        for item in values:
            if isinstance(item, ThresholdEvents):
                changes.extend(self._threshold(item, now_ms))
            elif isinstance(item, AnomalyEvents):
                changes.extend(self._anomaly(item, now_ms))
            elif isinstance(item, SensorEvents):
                changes.extend(self._sensor(item, now_ms))
            elif isinstance(item, CommandItem):
                command = item.command
                try:
                    changes.extend(self.book.command(command.action, command.incident_id, command.by, command.note, now_ms))
                except CommandRejected as error:
                    logger.warning("incident command rejected: %s", error)
                    rejected.append(msgspec.structs.replace(item.letter, detail=str(error)))
            else:
                raise TypeError(f"incidents step: unexpected item {type(item).__name__}: {item!r:.200}")
        states, transitions = changes.tables()
        if states is None and not rejected:
            return [], StatefulBatchLogic.RETAIN
        return [IncidentOutput(states, transitions, rejected)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return snapshots.pack(self.book)

    # -- threshold rules ---------------------------------------------------------------------
    def _threshold(self, events: ThresholdEvents, now_ms: int) -> Changes:
        detections = []
        for machine_id, machine_type, early in events.early:
            rule = early.rule
            detections.append(Detection(
                machine_id=machine_id, machine_type=machine_type, rule_id=rule.id, kind="threshold",
                severity=rule.severity, sensor=rule.sensor, window_start=early.window_start,
                event_ts=early.completed_ts, value=early.value, threshold=rule.threshold, message=early.message,
                resolve_after=self.config.rule_resolve_after(rule), lower_is_worse=rule.op.startswith("<"),
            ))
        if events.alerts is not None:
            for row in _rows_ms(events.alerts):
                known = self.config.rules.get(row["rule_id"])
                resolve_after = self.config.rule_resolve_after(known) if known else self.config.resolve_after
                detections.append(Detection(
                    machine_id=row["machine_id"], machine_type=row["machine_type"], rule_id=row["rule_id"],
                    kind="threshold", severity=row["severity"], sensor=row["sensor"],
                    window_start=row["window_start"], event_ts=row["window_end"], value=row["value"],
                    threshold=row["threshold"], message=row["message"], resolve_after=resolve_after,
                    lower_is_worse=bool(known and known.op.startswith("<")),
                ))
        changes = self._in_window_order(detections, events.closed, "threshold", now_ms)
        for machine_id in events.stale:
            changes.extend(self.book.machine_stale(machine_id, now_ms))
        return changes

    def _in_window_order(
        self, detections: list[Detection], windows: pa.Table | None, kind: str, now_ms: int
    ) -> Changes:
        """Apply detections and quiet windows (closed or scored, of machines that have or get an incident) in
        window order, a window's detections before the window itself: the same outcome however they were batched."""
        events: list[tuple[int, int, str, Detection | None]] = [(d.window_start, 0, d.machine_id, d) for d in detections]
        watched = self.book.machines_with_open() | {d.machine_id for d in detections if d.opens}
        if windows is not None and watched:
            picked = windows.filter(pc.is_in(windows["machine_id"], value_set=pa.array(sorted(watched), pa.string())))
            starts = picked["window_start"].cast(pa.int64()).to_pylist()
            events.extend((ws, 1, m, None) for m, ws in zip(picked["machine_id"].to_pylist(), starts))
        events.sort(key=lambda e: (e[0], e[1]))
        changes = Changes()
        sites = self.config.sites
        for window_start, _, machine_id, detection in events:
            if detection is not None:
                changes.extend(self.book.detect(detection, sites.get(machine_id, ""), now_ms))
            else:
                changes.extend(self.book.window_closed(machine_id, window_start, kind, now_ms))
        return changes

    # -- anomaly models ------------------------------------------------------------------------
    def _anomaly(self, events: AnomalyEvents, now_ms: int) -> Changes:
        scores = events.scores
        flagged = pc.or_(scores["alert_raised"], scores["is_anomaly"])
        detections = []
        if pc.any(flagged).as_py():
            detections = [self._anomaly_detection(row) for row in _rows_ms(scores.filter(flagged))]
        return self._in_window_order(detections, scores.filter(pc.invert(flagged)), "anomaly", now_ms)

    def _anomaly_detection(self, row: dict) -> Detection:
        resolve_after, critical_ratio = self.config.resolve_after, 0.0
        if self.config.models is not None:
            spec = self.config.models.for_type(row["machine_type"])
            resolve_after = spec.incident_resolve_after_windows or resolve_after
            critical_ratio = spec.incident_critical_ratio
        score, threshold = row["score"], row["threshold"] if row["threshold"] is not None else float("nan")
        critical = critical_ratio > 0 and np.isfinite(threshold) and score >= critical_ratio * threshold
        return Detection(
            machine_id=row["machine_id"], machine_type=row["machine_type"], rule_id="anomaly", kind="anomaly",
            severity="critical" if critical else "warning", sensor=_leading_sensor(row["top_features"]),
            window_start=row["window_start"], event_ts=row["window_end"], value=score, threshold=threshold,
            message=f"anomaly score {score:.2f} above threshold {threshold:.2f} ({row['model']}/{row['detector']}); "
            f"top features: {row['top_features']}",
            resolve_after=resolve_after, opens=bool(row["alert_raised"]),
        )


    # -- sensor health ---------------------------------------------------------------------------
    def _sensor(self, events: SensorEvents, now_ms: int) -> Changes:
        detections = []
        if events.detections is not None:
            for row, opens in zip(_rows_ms(events.detections), events.raised):
                detections.append(Detection(
                    machine_id=row["machine_id"], machine_type=row["machine_type"], rule_id=row["rule_id"],
                    kind="sensor", severity=row["severity"], sensor=row["sensor"], window_start=row["window_start"],
                    event_ts=row["window_end"], value=row["value"], threshold=row["threshold"], message=row["message"],
                    resolve_after=self.config.resolve_after, opens=bool(opens),
                ))
        return self._in_window_order(detections, events.windows, "sensor", now_ms)


def sensor_events(detections: pa.Table | None, raised: Iterable[bool], scores: pa.Table) -> SensorEvents | None:
    """What one anomaly-step output means for sensor incidents (None when it checked no window)."""
    if scores.num_rows == 0:
        return None
    return SensorEvents(detections, [bool(r) for r in raised], scores.select(["machine_id", "window_start"]))


def _leading_sensor(top_features: str) -> str:
    try:
        features = msgspec.json.decode(top_features)
        return str(FEATURE_SENSOR[features[0][0]]) if features else ""
    except (msgspec.DecodeError, KeyError, IndexError, TypeError):
        return ""


def _rows_ms(table: pa.Table) -> list[dict]:
    as_ms = pa.schema([pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in table.schema])
    return table.cast(as_ms).to_pylist()


# -- operator commands from the incident-commands topic ---------------------------------------------
_COMMAND_DECODER = msgspec.json.Decoder(Command)
_MACHINE_ID = re.compile(MACHINE_ID_PATTERN)


def decode_commands(batch: RawBatch, shards: int) -> list[tuple[str, CommandItem | DeadLetter]]:
    """Each message of a poll of `incident-commands` as (shard key, CommandItem), or ("", DeadLetter)."""
    items: list[tuple[str, CommandItem | DeadLetter]] = []
    keys = batch.keys or [None] * len(batch.values)
    for value, key, offset in zip(batch.values, keys, batch.offsets):
        letter = DeadLetter(value=value, key=key, reason=INVALID_COMMAND, detail="", topic=batch.topic,
                            partition=batch.partition, offset=offset)
        try:
            command = _COMMAND_DECODER.decode(value)
        except msgspec.DecodeError as error:
            items.append(("", msgspec.structs.replace(letter, detail=f"incident command: {error}")))
            continue
        machine_id = command.incident_id.split("/", 1)[0]
        problem = None
        if command.action not in ACTIONS:
            problem = f"action={command.action!r}, expected one of {ACTIONS}"
        elif command.incident_id.count("/") != 2 or not _MACHINE_ID.match(machine_id):
            problem = f"incident_id={command.incident_id!r} is not '<machine>/<rule>/<window start ms>'"
        if problem is not None:
            items.append(("", msgspec.structs.replace(letter, detail=f"incident command: {problem}")))
            continue
        items.append((shard_key(shard_index(machine_id, shards)), CommandItem(command, letter)))
    return items


def threshold_events(early: list[tuple[str, str, EarlyDetection]] | None, alerts: pa.Table | None,
                     window_stats: pa.Table | None, silent: list[str] | None) -> ThresholdEvents | None:
    """What one window-step output means for incidents, or None when nothing."""
    if not early and alerts is None and window_stats is None and not silent:
        return None
    return ThresholdEvents(early or [], alerts, window_stats, silent or [])
