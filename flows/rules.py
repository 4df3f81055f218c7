"""Critical threshold rules, per machine type, evaluated on closed windows.

A rule fires for a (machine, window) when its condition (e.g. `temperature > 95`) held continuously for
at least `for_seconds`. A reading's value holds until the next reading of the window (the last one until
the window's end), and a run that reaches the end of one window continues into the next adjacent window,
so a breach spanning a window boundary is measured whole. One alert per (machine, rule, window).

Rules file (TOML)::

    [[rule]]
    id = "overheat_critical"
    sensor = "temperature"
    op = ">"
    threshold = 95.0
    for_seconds = 20
    severity = "critical"
    machine_types = ["*"]      # or e.g. ["pump", "compressor"]
    resolve_after_windows = 6  # optional: quiet windows before its incident resolves (flows/incidents.py)
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from flows.window_stats import ClosedReadings, Groups
from plantpulse.schema import ALERT_ARROW_SCHEMA, SENSORS

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SEVERITIES = ("info", "warning", "critical")


class RulesFileError(ValueError):
    """The rules file is missing, unreadable or describes an impossible rule."""


@dataclass(frozen=True)
class ThresholdRule:
    id: str
    sensor: str
    op: str
    threshold: float
    for_seconds: float
    severity: str
    machine_types: frozenset[str] | None  # None: every machine type
    resolve_after_windows: int | None = None  # quiet windows before its incident resolves; None: the setting

    def applies_to(self, machine_type: str) -> bool:
        return self.machine_types is None or machine_type in self.machine_types

    def holds(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return _OPS[self.op](values, self.threshold)  # NaN (sensor dropout) never holds

    def describe(self) -> str:
        return f"{self.sensor} {self.op} {self.threshold:g} for >= {self.for_seconds:g} s"


def load_rules(path: Path) -> list[ThresholdRule]:
    """Read and check a rules file; errors name the file, the rule and the field."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RulesFileError(f"rules file {path}: {error}") from error
    rules = [_parse_rule(path, i, entry) for i, entry in enumerate(document.get("rule", []))]
    ids = [rule.id for rule in rules]
    duplicated = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
    if duplicated:
        raise RulesFileError(f"rules file {path}: duplicate rule id(s) {duplicated}")
    return rules


def _parse_rule(path: Path, index: int, entry: dict) -> ThresholdRule:
    where = f"rules file {path}, rule #{index + 1} ({entry.get('id', '?')})"
    try:
        rule_id, sensor, op, severity = str(entry["id"]), entry["sensor"], entry["op"], entry["severity"]
        threshold, for_seconds = float(entry["threshold"]), float(entry.get("for_seconds", 0))
    except KeyError as missing:
        raise RulesFileError(f"{where}: missing field {missing}") from None
    except (TypeError, ValueError) as error:
        raise RulesFileError(f"{where}: {error}") from None
    if sensor not in SENSORS:
        raise RulesFileError(f"{where}: sensor={sensor!r}, expected one of {SENSORS}")
    if op not in _OPS:
        raise RulesFileError(f"{where}: op={op!r}, expected one of {sorted(_OPS)}")
    if severity not in SEVERITIES:
        raise RulesFileError(f"{where}: severity={severity!r}, expected one of {SEVERITIES}")
    if for_seconds < 0:
        raise RulesFileError(f"{where}: for_seconds={for_seconds} must be >= 0")
    types = entry.get("machine_types", ["*"])
    machine_types = None if "*" in types else frozenset(str(t) for t in types)
    resolve_after = entry.get("resolve_after_windows")
    if resolve_after is not None and (not isinstance(resolve_after, int) or resolve_after < 1):
        raise RulesFileError(f"{where}: resolve_after_windows={resolve_after!r} must be an integer >= 1")
    return ThresholdRule(rule_id, sensor, op, threshold, for_seconds, severity, machine_types, resolve_after)


class RuleCarry:
    """Per machine and rule: seconds of the breach run still open at the end of the last closed window."""

    def __init__(self, n_rules: int) -> None:
        self.seconds = np.zeros((0, n_rules))
        self.window_end = np.zeros(0, dtype=np.int64)  # end of the window the carry belongs to

    def grow(self, n_machines: int) -> None:
        if n_machines > len(self.window_end):
            extra = n_machines - len(self.window_end)
            self.seconds = np.vstack((self.seconds, np.zeros((extra, self.seconds.shape[1]))))
            self.window_end = np.concatenate((self.window_end, np.full(extra, -1, dtype=np.int64)))


def evaluate_rules(
    rules: list[ThresholdRule],
    readings: ClosedReadings,
    groups: Groups,
    carry: RuleCarry,
    machine_ids: np.ndarray,
    machine_types: np.ndarray,
    window_ms: int,
    raised_at_ms: int,
) -> pa.Table | None:
    """Alerts for the closed groups (one `ALERT_ARROW_SCHEMA` row each), updating `carry`."""
    starts, lasts = groups.starts, groups.lasts
    group_midx = readings.midx[starts]
    group_ws = readings.ws[starts]
    # A run may continue from one group to the next only within a machine and across adjacent windows.
    continues = np.zeros(len(starts), dtype=bool)
    continues[1:] = (group_midx[1:] == group_midx[:-1]) & (group_ws[1:] == group_ws[:-1] + window_ms)
    from_carry = ~continues & (carry.window_end[group_midx] == group_ws)
    last_of_machine = np.ones(len(starts), dtype=bool)
    last_of_machine[:-1] = group_midx[1:] != group_midx[:-1]

    rows: list[dict] = []
    group_types = machine_types[group_midx]
    for r, rule in enumerate(rules):
        applicable = (
            np.ones(len(starts), dtype=bool)
            if rule.machine_types is None
            else np.isin(group_types, list(rule.machine_types))
        )
        values = readings.sensors[rule.sensor]
        held = rule.holds(values) & np.repeat(applicable, groups.lengths)
        carried_in = np.where(from_carry, carry.seconds[group_midx, r], 0.0)
        run_seconds = _run_ms(held, groups, continues, np.round(carried_in * 1000).astype(np.int64)) / 1000.0
        longest = np.fmax.reduceat(np.where(held, run_seconds, np.nan), starts)
        extreme_fn = np.fmax if rule.op.startswith(">") else np.fmin
        extreme = extreme_fn.reduceat(np.where(held, values, np.nan), starts)
        fired = np.flatnonzero(longest >= rule.for_seconds)
        for g in fired.tolist():
            midx, ws = int(group_midx[g]), int(group_ws[g])
            rows.append(
                {
                    "alert_id": f"{machine_ids[midx]}/{rule.id}/{ws}",
                    "machine_id": machine_ids[midx],
                    "machine_type": machine_types[midx],
                    "rule_id": rule.id,
                    "kind": "threshold",
                    "severity": rule.severity,
                    "sensor": rule.sensor,
                    "window_start": ws,
                    "window_end": ws + window_ms,
                    "value": float(extreme[g]),
                    "threshold": rule.threshold,
                    "duration_s": float(longest[g]),
                    "message": f"{rule.describe()}: {rule.sensor} reached {extreme[g]:.2f} for {longest[g]:.1f} s",
                    "raised_at": raised_at_ms,
                }
            )
        trailing = np.where(held[lasts], run_seconds[lasts], 0.0)
        ends = np.flatnonzero(last_of_machine)
        carry.seconds[group_midx[ends], r] = trailing[ends]
    ends = np.flatnonzero(last_of_machine)
    carry.window_end[group_midx[ends]] = group_ws[ends] + window_ms
    return alerts_table(rows) if rows else None


def _run_ms(held: np.ndarray, groups: Groups, continues: np.ndarray, carried_in: np.ndarray) -> np.ndarray:
    """For each reading where the condition holds: ms the current run has lasted up to its end.

    Integer milliseconds keep the running sums exact, so results do not depend on how the readings were
    split across calls (a resumed run equals an uninterrupted one).
    """
    n = len(held)
    previous_held = np.zeros(n, dtype=bool)
    previous_held[1:] = held[:-1]
    # A group's first row may only extend the previous row's run when the windows continue each other.
    previous_held[groups.starts] &= continues
    run_start = held & ~previous_held
    cumulative = np.cumsum(np.where(held, groups.hold_ms, 0))
    start_index = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))
    before_start = np.where(start_index > 0, cumulative[start_index - 1], 0)
    # Runs that begin at a group's first row pick up the breach carried over from the previous close.
    carried = np.zeros(n, dtype=np.int64)
    carried[groups.starts] = carried_in
    return cumulative - before_start + carried[start_index]


def alerts_table(rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=_ALERT_INPUT_SCHEMA)
    return table.cast(ALERT_ARROW_SCHEMA)


_ALERT_INPUT_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.int64(), nullable=False) if pa.types.is_timestamp(f.type) else f
        for f in ALERT_ARROW_SCHEMA
    ]
)
