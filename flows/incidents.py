"""Alert incidents: raw detections become incidents that open once, can be acknowledged, and resolve.

Per (machine, rule) - a threshold rule's id, `anomaly` for the machine's anomaly model, or `sensor_stuck`,
`sensor_dropout`, `sensor_spike` for a faulty instrument (kind `sensor`) - at most one incident is open at a
time:

- the first detection opens it; its id is `<machine>/<rule>/<window start ms of that detection>`, so the
  same detections give the same ids in every run (a resumed flow, a replay, another worker);
- while it is open, further detections update `last_seen_ts`, `detections` (windows with a detection) and
  the peak value; a more severe detection escalates it (warning -> critical), a milder one never lowers it;
- it resolves by itself once `resolve_after` windows (of event time) after its latest detection window have
  closed (threshold), been scored (anomaly) or checked (sensor) without a detection - or a detection comes
  later than that - or when the machine turns stale (silent on the wall clock); an operator may resolve it by hand;
- an operator's acknowledgement or comment is recorded; a detection after resolution opens a new incident.

`IncidentBook` is pure state and logic (no Bytewax, no I/O); each call returns the rows to publish: every
change as an `INCIDENT_ARROW_SCHEMA` row (the `incidents` table keeps the newest version), the transitions
among them also for `incident_events` and the `incidents` topic. Wall-clock fields come from `now_ms`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa

from plantpulse.schema import INCIDENT_ARROW_SCHEMA

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
SYSTEM_ACTOR = "plantpulse"
# Resolved incidents kept per shard so that a late comment (or an ack racing the resolution) finds them.
RECENTLY_RESOLVED = 2_000


class CommandRejected(ValueError):
    """An operator command that cannot apply (unknown incident, already resolved, malformed)."""


@dataclass(frozen=True)
class Detection:
    """One raw detection: a threshold rule that held, an anomalous window, or a faulty sensor in a window."""

    machine_id: str
    machine_type: str
    rule_id: str
    kind: str  # "threshold" | "anomaly" | "sensor" (a faulty instrument)
    severity: str
    sensor: str
    window_start: int  # ms
    event_ts: int  # ms, event time the condition held
    value: float
    threshold: float
    message: str
    resolve_after: int  # quiet windows before it resolves
    lower_is_worse: bool = False  # "<" rules: the peak is the lowest value
    opens: bool = True  # False: may only update an open incident (an anomalous window without an alert)


@dataclass
class Incident:
    incident_id: str
    machine_id: str
    machine_type: str
    site: str
    rule_id: str
    kind: str
    severity: str
    sensor: str
    opened_window_start: int
    first_seen_ts: int
    last_seen_ts: int
    last_window: int  # newest window with a detection
    detections: int
    peak_value: float
    threshold: float
    message: str
    opened_at: int
    resolve_after: int
    lower_is_worse: bool
    version: int = 0
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    resolved_by: str | None = None
    resolved_at: int | None = None
    resolved_reason: str | None = None
    extra: dict = field(default_factory=dict)  # room for later fields without breaking old snapshots

    @property
    def status(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        return "acknowledged" if self.acknowledged_by is not None else "open"


@dataclass
class Changes:
    """What one call changed: `states` (every new version) and, among them, `transitions`."""

    states: list[dict] = field(default_factory=list)
    transitions: list[dict] = field(default_factory=list)

    def extend(self, other: Changes) -> None:
        self.states.extend(other.states)
        self.transitions.extend(other.transitions)

    def tables(self) -> tuple[pa.Table | None, pa.Table | None]:
        return _table(self.states), _table(self.transitions)


class IncidentBook:
    """The incidents of one state shard."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.open: dict[tuple[str, str], Incident] = {}
        self.resolved: OrderedDict[str, Incident] = OrderedDict()

    # -- detections and quiet windows ----------------------------------------------------------
    def detect(self, d: Detection, site: str, now_ms: int) -> Changes:
        changes = Changes()
        incident = self.open.get((d.machine_id, d.rule_id))
        if incident is not None and d.window_start - incident.last_window > incident.resolve_after * self.window_ms:
            # The windows in between were quiet (they may not have closed yet: a catch-up reads ahead).
            self._resolve_quiet(incident, now_ms, changes)
            incident = None
        if incident is None:
            if d.opens:
                self._open(d, site, now_ms, changes)
            return changes
        if d.window_start < incident.opened_window_start:
            return changes  # a straggler of an earlier episode: not part of this incident
        worse = d.value < incident.peak_value if incident.lower_is_worse else d.value > incident.peak_value
        if worse:
            incident.peak_value = d.value
        incident.last_seen_ts = max(incident.last_seen_ts, d.event_ts)
        new_window = d.window_start > incident.last_window
        if new_window:
            incident.last_window = d.window_start
            incident.detections += 1
            incident.message = d.message
        if SEVERITY_RANK[d.severity] > SEVERITY_RANK[incident.severity]:
            incident.severity = d.severity
            incident.message = d.message
            self._record(incident, "escalated", SYSTEM_ACTOR, f"severity raised to {d.severity}: {d.message}", now_ms,
                         changes)
        elif new_window or worse:
            self._record(incident, None, SYSTEM_ACTOR, "", now_ms, changes)
        return changes

    def window_closed(self, machine_id: str, window_start: int, kind: str, now_ms: int) -> Changes:
        """A window of `machine_id` closed (threshold), was scored (anomaly) or checked (sensor), after its
        detections if any.

        Quiet is counted in windows of event time after the incident's last detection window, not in calls,
        so the outcome does not depend on how windows were batched (callers pass them in window order)."""
        changes = Changes()
        for incident in [i for (m, _), i in self.open.items() if m == machine_id and i.kind == kind]:
            if window_start - incident.last_window >= incident.resolve_after * self.window_ms:
                self._resolve_quiet(incident, now_ms, changes)
        return changes

    def _resolve_quiet(self, incident: Incident, now_ms: int, changes: Changes) -> None:
        self._resolve(incident, "quiet", SYSTEM_ACTOR, f"no detection in {incident.resolve_after} windows", now_ms,
                      changes)

    def machine_stale(self, machine_id: str, now_ms: int) -> Changes:
        changes = Changes()
        for incident in [i for (m, _), i in self.open.items() if m == machine_id]:
            self._resolve(incident, "stale", SYSTEM_ACTOR, "the machine went silent (stale)", now_ms, changes)
        return changes

    def machines_with_open(self) -> set[str]:
        return {machine for machine, _ in self.open}

    # -- operator commands ---------------------------------------------------------------------
    def command(self, action: str, incident_id: str, by: str, note: str, now_ms: int) -> Changes:
        """Apply `ack`, `resolve` or `comment` to an incident; raises CommandRejected with the reason."""
        if not by.strip():
            raise CommandRejected(f"{action} {incident_id}: 'by' (who acts) is required")
        incident = self._find(incident_id)
        if incident is None:
            raise CommandRejected(f"{action} {incident_id}: no such incident (open or recently resolved) here")
        changes = Changes()
        if action == "comment":
            if not note.strip():
                raise CommandRejected(f"comment {incident_id}: the note is empty")
            self._record(incident, "commented", by, note, now_ms, changes)
        elif incident.resolved_at is not None:
            raise CommandRejected(f"{action} {incident_id}: already resolved ({incident.resolved_reason})")
        elif action == "ack":
            if incident.acknowledged_by is not None:
                raise CommandRejected(f"ack {incident_id}: already acknowledged by {incident.acknowledged_by}")
            incident.acknowledged_by, incident.acknowledged_at = by, now_ms
            self._record(incident, "acknowledged", by, note, now_ms, changes)
        elif action == "resolve":
            if not note.strip():
                raise CommandRejected(f"resolve {incident_id}: a note (why) is required to resolve by hand")
            self._resolve(incident, "manual", by, note, now_ms, changes)
        else:
            raise CommandRejected(f"{action!r} {incident_id}: unknown action, expected ack, resolve or comment")
        return changes

    def _find(self, incident_id: str) -> Incident | None:
        for incident in self.open.values():
            if incident.incident_id == incident_id:
                return incident
        return self.resolved.get(incident_id)

    # -- transitions -----------------------------------------------------------------------------
    def _open(self, d: Detection, site: str, now_ms: int, changes: Changes) -> None:
        incident = Incident(
            incident_id=f"{d.machine_id}/{d.rule_id}/{d.window_start}",
            machine_id=d.machine_id,
            machine_type=d.machine_type,
            site=site,
            rule_id=d.rule_id,
            kind=d.kind,
            severity=d.severity,
            sensor=d.sensor,
            opened_window_start=d.window_start,
            first_seen_ts=d.event_ts,
            last_seen_ts=d.event_ts,
            last_window=d.window_start,
            detections=1,
            peak_value=d.value,
            threshold=d.threshold,
            message=d.message,
            opened_at=now_ms,
            resolve_after=d.resolve_after,
            lower_is_worse=d.lower_is_worse,
        )
        self.open[(d.machine_id, d.rule_id)] = incident
        self._record(incident, "opened", SYSTEM_ACTOR, d.message, now_ms, changes)

    def _resolve(self, incident: Incident, reason: str, by: str, note: str, now_ms: int, changes: Changes) -> None:
        incident.resolved_by, incident.resolved_at, incident.resolved_reason = by, now_ms, reason
        del self.open[(incident.machine_id, incident.rule_id)]
        self.resolved[incident.incident_id] = incident
        while len(self.resolved) > RECENTLY_RESOLVED:
            self.resolved.popitem(last=False)
        self._record(incident, "resolved", by, note, now_ms, changes)

    def _record(
        self, incident: Incident, transition: str | None, actor: str, note: str, now_ms: int, changes: Changes
    ) -> None:
        """A new version of `incident`; `transition` None is a state update that is not a transition."""
        incident.version += 1
        row = _row(incident, transition or "updated", actor, note, now_ms)
        changes.states.append(row)
        if transition is not None:
            changes.transitions.append(row)


def _row(incident: Incident, transition: str, actor: str, note: str, now_ms: int) -> dict:
    return {
        "incident_id": incident.incident_id,
        "version": incident.version,
        "event_id": f"{incident.incident_id}#{incident.version}",
        "transition": transition,
        "status": incident.status,
        "machine_id": incident.machine_id,
        "machine_type": incident.machine_type,
        "site": incident.site,
        "rule_id": incident.rule_id,
        "kind": incident.kind,
        "severity": incident.severity,
        "sensor": incident.sensor,
        "opened_window_start": incident.opened_window_start,
        "first_seen_ts": incident.first_seen_ts,
        "last_seen_ts": incident.last_seen_ts,
        "detections": incident.detections,
        "peak_value": incident.peak_value,
        "threshold": incident.threshold,
        "message": incident.message,
        "opened_at": incident.opened_at,
        "acknowledged_by": incident.acknowledged_by,
        "acknowledged_at": incident.acknowledged_at,
        "resolved_by": incident.resolved_by,
        "resolved_at": incident.resolved_at,
        "resolved_reason": incident.resolved_reason,
        "actor": actor,
        "note": note,
        "at": now_ms,
    }


_INPUT_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.int64(), nullable=f.nullable) if pa.types.is_timestamp(f.type) else f
        for f in INCIDENT_ARROW_SCHEMA
    ]
)


def _table(rows: list[dict]) -> pa.Table | None:
    if not rows:
        return None
    return pa.Table.from_pylist(rows, schema=_INPUT_SCHEMA).cast(INCIDENT_ARROW_SCHEMA)


def rows_as_ms(table: pa.Table) -> list[dict]:
    """Rows with timestamps as epoch milliseconds (the `incidents` topic's JSON form)."""
    return table.cast(_INPUT_SCHEMA).to_pylist()
