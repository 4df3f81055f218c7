"""Injected faults with ground-truth labels.

A fraction `fault_rate` of the fleet is affected; each affected machine has one fault kind (a worn
bearing stays a worn bearing) which recurs after a random healthy gap, so streams of any length see
faults: the first onset falls within the first 45 s of event time (after `faults_after_s`, default 0: a
healthy start lets models learn their baselines first, as a deployment on a working plant does). Every
occurrence is an *event* with a label (machine, fault, start/end tick, detail) and, for the critical kinds,
the first and last tick at which the critical threshold was actually breached.

Only `overheating` (temperature > 95 degC held >= 45 s) and `pressure_leak` (pressure < 1.0 bar held
>= 45 s, pumps and compressors only, the machine types the pressure rule covers) cross critical
thresholds; all other kinds keep values inside the normal envelope (see `sim.signals.clip_normal`) and
vibration below 45 mm/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from plantpulse.schema import SENSORS
from sim.fleet import Machine
from sim.signals import (
    DECIMALS,
    FAULT,
    MAINTENANCE,
    POWER,
    PRESSURE,
    RPM,
    RUNNING,
    TEMPERATURE,
    VIBRATION,
    SignalModel,
    clip_normal,
)

FAULT_KINDS: tuple[str, ...] = ("bearing_wear", "overheating", "pressure_leak", "stuck_sensor", "spike", "dropout")
CRITICAL_FAULTS: tuple[str, ...] = ("overheating", "pressure_leak")
OVERHEAT_THRESHOLD = 95.0  # degC: breached (>) throughout an overheating event's hold phase
LEAK_THRESHOLD = 1.0  # bar: breached (<) throughout a pressure leak's hold phase
DEFAULT_FAULT_RATE = 0.05
BEARING, OVERHEAT, LEAK, STUCK, SPIKE, DROPOUT = range(len(FAULT_KINDS))
# When few machines are affected, the critical kinds are the ones that must be represented first.
_PRIORITY = (OVERHEAT, LEAK, BEARING, DROPOUT, STUCK, SPIKE)
_LEAK_TYPES = frozenset({"pump", "compressor"})
_FIRST_ONSET_S = (0.0, 45.0)
_GAP_S = {  # healthy seconds between two events of one machine
    BEARING: (120, 600), OVERHEAT: (90, 300), LEAK: (90, 300), STUCK: (60, 300), SPIKE: (20, 120), DROPOUT: (60, 300)
}
_SPIKE_SENSORS = np.array([VIBRATION, RPM, POWER])
_SILENT, _NULL_ONE, _NULL_ALL = 0, 1, 2


def bearing_wear_signature(level: np.ndarray | float, progress: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(vibration factor, temperature offset in degC) of a worn bearing `progress` (0..1) into its event.

    Wear grows as ``progress**1.5`` towards `level` times the healthy vibration (the label's
    ``vibration_x<level>``); friction adds up to 2 degC, inside the normal envelope.

    >>> bearing_wear_signature(3.0, np.array([0.0, 0.25, 1.0]))
    (array([1.  , 1.25, 3.  ]), array([0. , 0.5, 2. ]))
    """
    progress = np.asarray(progress, dtype=np.float64)
    return 1.0 + (np.asarray(level) - 1.0) * progress**1.5, 2.0 * progress


def bearing_wear_progress_at(level: np.ndarray | float, effect: float) -> np.ndarray:
    """Progress (0..1) into a bearing-wear event at which its vibration is up by `effect` (0.05: +5 %);
    1 if the wear never gets there. The inverse of `bearing_wear_signature`'s vibration factor.

    >>> bearing_wear_progress_at(np.array([3.0, 1.02, 1.0]), 0.25).round(4)
    array([0.25, 1.  , 1.  ])
    """
    if not effect > 0:
        raise ValueError(f"bearing_wear_progress_at: effect must be > 0, got {effect!r}")
    excess = np.asarray(level, dtype=np.float64) - 1.0
    ratio = np.divide(effect, excess, out=np.full(excess.shape, np.inf), where=excess > 0)
    return np.minimum(ratio ** (2.0 / 3.0), 1.0)


def parse_faults(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"all"`, `"none"`/`""`/None, or a comma list such as `"overheating,spike"` -> fault kinds."""
    if spec is None:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names in ([], ["none"]):
        return ()
    if names == ["all"]:
        return FAULT_KINDS
    unknown = [name for name in names if name not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; expected 'all', 'none' or some of {list(FAULT_KINDS)}")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class FaultLabel:
    """Ground truth for one fault event. Times are epoch ms as they appear on the wire (incl. clock skew)."""

    machine_id: str
    fault: str
    start_ts: int
    end_ts: int
    detail: str  # e.g. "peak=108.2C", "stuck:pressure", "silent", "null:rpm", "spike:vibration"
    breach_start_ts: int | None  # critical kinds: first/last reading beyond the threshold
    breach_end_ts: int | None
    truncated: bool  # the stream ended before the event did


class FaultInjector:
    """Schedules fault events and applies their signatures to each tick's values."""

    def __init__(
        self,
        fleet: list[Machine],
        kinds: tuple[str, ...],
        fault_rate: float,
        rng: np.random.Generator,
        interval_ms: float,
        model: SignalModel,
        faults_after_s: float = 0.0,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within [0, 1], got {fault_rate}")
        if not (faults_after_s >= 0 and math.isfinite(faults_after_s)):
            raise ValueError(f"faults_after_s must be a finite number >= 0, got {faults_after_s}")
        self.rng, self.model, self.dt = rng, model, interval_ms / 1000.0
        codes = [FAULT_KINDS.index(kind) for kind in kinds]
        machines, kind_of = _assign(fleet, codes, fault_rate, rng)
        a = len(machines)
        self.machine = machines
        self.kind = kind_of
        first_onset_s = faults_after_s + rng.uniform(*_FIRST_ONSET_S, size=a)
        self.next_start = np.floor(first_onset_s / self.dt).astype(np.int64)
        self.active = np.zeros(a, dtype=bool)
        self.start = np.zeros(a, dtype=np.int64)
        self.end = np.zeros(a, dtype=np.int64)  # last tick of the event, inclusive
        self.phase1 = np.zeros(a)  # seconds: end of ramp
        self.phase2 = np.zeros(a)  # seconds: end of hold (critical kinds trip here)
        self.trip = np.full(a, -1, dtype=np.int64)  # tick at which a critical event trips the machine
        self.level = np.zeros(a)  # peak temperature / leak floor / vibration factor / spike / stuck value
        self.sensor = np.zeros(a, dtype=np.int64)
        self.variant = np.zeros(a, dtype=np.int64)
        self.event = np.full(a, -1, dtype=np.int64)
        self.breach_first = np.full(a, -1, dtype=np.int64)
        self.breach_last = np.full(a, -1, dtype=np.int64)
        # One row per event: [slot, start_tick, end_tick, detail, breach_first, breach_last].
        self.events: list[list] = []
        self._boundary = 0
        self._refresh(-1)

    def _ticks(self, seconds: np.ndarray) -> np.ndarray:
        return np.maximum(1, np.ceil(seconds / self.dt)).astype(np.int64)

    def begin_tick(self, k: int) -> None:
        """Start, trip and end events at tick `k` (forcing statuses); call before `model.step`.

        Nothing changes between event boundaries, so most ticks return at once.
        """
        if k < self._boundary:
            return
        ending = np.flatnonzero(self.active & (k > self.end))
        if len(ending):
            self._finish(ending, k)
        starting = np.flatnonzero(~self.active & (k >= self.next_start))
        if len(starting):
            self._begin(starting, k)
            critical = starting[(self.kind[starting] == OVERHEAT) | (self.kind[starting] == LEAK)]
            self.model.force_status(self.machine[critical], RUNNING, np.inf)
        tripping = np.flatnonzero(self.active & (self.trip == k))
        if len(tripping):
            self.model.force_status(self.machine[tripping], FAULT, np.inf)
        self._refresh(k)

    def _refresh(self, k: int) -> None:
        """Cache what holds until the next boundary: active slots per kind, labels, who stays silent."""
        n = self.model.n
        upcoming = np.concatenate(
            [self.next_start[~self.active], self.end[self.active] + 1, self.trip[self.active & (self.trip > k)]]
        )
        self._boundary = int(upcoming.min()) if len(upcoming) else np.iinfo(np.int64).max
        slots = np.flatnonzero(self.active)
        kind, machine = self.kind[slots], self.machine[slots]
        self._label = np.zeros(n, dtype=np.int8)
        self._label[machine] = kind + 1
        self._by_kind = [
            (code, slots[kind == code], machine[kind == code]) for code in _HANDLERS if (kind == code).any()
        ]
        silent = machine[(kind == DROPOUT) & (self.variant[slots] == _SILENT)]
        self._emit = None
        if len(silent):
            self._emit = np.ones(n, dtype=bool)
            self._emit[silent] = False
        critical = (kind == OVERHEAT) | (kind == LEAK)
        self._critical = (slots[critical], machine[critical], kind[critical] == OVERHEAT)

    def _begin(self, slots: np.ndarray, k: int) -> None:
        rng, m = self.rng, len(slots)
        kind = self.kind[slots]
        u1, u2, u3, u4 = rng.random((4, m))
        ramp = np.select([kind == OVERHEAT, kind == LEAK], [40 + 40 * u1, 20 + 30 * u1], 0.0)
        hold = np.select([kind == OVERHEAT, kind == LEAK], [45 + 45 * u2, 45 + 45 * u2], 0.0)
        tail = np.select([kind == OVERHEAT, kind == LEAK], [60 + 60 * u3, 30 + 30 * u3], 0.0)
        duration = np.select(
            [kind == BEARING, kind == STUCK, kind == SPIKE, kind == DROPOUT],
            [240 + 360 * u1, 60 + 240 * u1, 0.0, 20 + 100 * u1],
            ramp + hold + tail,
        )
        variant = np.minimum((u4 * 3).astype(np.int64), 2)  # dropout: silent / one sensor null / all null
        duration = np.where((kind == DROPOUT) & (variant == _SILENT), 40 + 80 * u1, duration)
        self.active[slots] = True
        self.start[slots] = k
        self.end[slots] = k + np.where(kind == SPIKE, 0, self._ticks(duration) - 1)
        self.phase1[slots], self.phase2[slots] = ramp, ramp + hold
        critical = (kind == OVERHEAT) | (kind == LEAK)
        self.trip[slots] = np.where(critical, k + np.ceil((ramp + hold) / self.dt).astype(np.int64), -1)
        self.variant[slots] = variant
        sensor = np.where(kind == SPIKE, _SPIKE_SENSORS[(u2 * 3).astype(np.int64) % 3], (u2 * 5).astype(np.int64) % 5)
        self.sensor[slots] = sensor
        machine = self.machine[slots]
        model = self.model
        spike_value = np.select(
            [sensor == VIBRATION, sensor == RPM],
            [20 + 20 * u3, model.rpm_nominal[machine] * (1.3 + 0.7 * u3)],
            model.rated_power[machine] * (2.5 + 1.5 * u3),
        )
        self.level[slots] = np.select(
            [kind == OVERHEAT, kind == LEAK, kind == BEARING, kind == SPIKE],
            [102 + 13 * u4, 0.2 + 0.5 * u4, 2.5 + 1.5 * u4, spike_value],
            np.nan,  # stuck: captured from the first reading of the event
        )
        self.breach_first[slots] = -1
        self.breach_last[slots] = -1
        for slot in slots.tolist():
            self.event[slot] = len(self.events)
            self.events.append([slot, k, int(self.end[slot]), self._detail(slot), -1, -1])

    def _detail(self, slot: int) -> str:
        kind, sensor, level = int(self.kind[slot]), SENSORS[int(self.sensor[slot])], float(self.level[slot])
        if kind == OVERHEAT:
            return f"peak={level:.1f}C"
        if kind == LEAK:
            return f"floor={level:.2f}bar"
        if kind == BEARING:
            return f"vibration_x{level:.2f}"
        if kind == STUCK:
            return f"stuck:{sensor}"
        if kind == SPIKE:
            return f"spike:{sensor}={level:.1f}"
        return ("silent", f"null:{sensor}", "null:all")[int(self.variant[slot])]

    def _finish(self, slots: np.ndarray, k: int) -> None:
        rng = self.rng
        self.active[slots] = False
        kind = self.kind[slots]
        gap = np.array([rng.uniform(*_GAP_S[int(c)]) for c in kind])
        self.next_start[slots] = k + self._ticks(gap)
        # A trip or a worn bearing is followed by a maintenance spell (repair, replacement).
        repaired = slots[(kind == OVERHEAT) | (kind == LEAK) | (kind == BEARING)]
        if len(repaired):
            self.model.force_status(self.machine[repaired], MAINTENANCE, rng.uniform(60, 180, size=len(repaired)))
        self._sync_events(slots)

    def _sync_events(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            row = self.events[int(self.event[slot])]
            row[4], row[5] = int(self.breach_first[slot]), int(self.breach_last[slot])

    def apply(self, k: int, values: np.ndarray, status: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Apply active faults to tick `k`'s `values` (5, n) in place.

        Returns (emit, label), both shared until the next boundary (copy to keep): `emit` is None or a
        bool mask of machines that send a reading at all; `label` holds 1 + index into FAULT_KINDS for
        machines inside a fault event, else 0. Critical events' values are rounded to wire precision
        here so that their threshold breaches are tracked on exactly what is sent.
        """
        for code, slots, machine in self._by_kind:
            _HANDLERS[code](self, slots, machine, (k - self.start[slots]) * self.dt, values, status)
        slots, machine, hot = self._critical
        if len(slots):
            temperature = np.round(values[TEMPERATURE, machine], DECIMALS[TEMPERATURE])
            pressure = np.round(values[PRESSURE, machine], DECIMALS[PRESSURE])
            values[TEMPERATURE, machine], values[PRESSURE, machine] = temperature, pressure
            breach = np.where(hot, temperature > OVERHEAT_THRESHOLD, pressure < LEAK_THRESHOLD)
            hit = slots[breach]
            self.breach_first[hit] = np.where(self.breach_first[hit] < 0, k, self.breach_first[hit])
            self.breach_last[hit] = k
        return self._emit, self._label

    def _envelope(self, slots: np.ndarray, elapsed: np.ndarray) -> np.ndarray:
        """0 -> 1 over the ramp, 1 during the hold, 1 -> 0 over the tail (trip and recovery)."""
        p1, p2 = self.phase1[slots], self.phase2[slots]
        tail = (self.end[slots] - self.start[slots] + 1) * self.dt - p2
        rising = np.minimum(elapsed / np.maximum(p1, 1e-9), 1.0)
        falling = np.maximum(1.0 - (elapsed - p2) / np.maximum(tail, 1e-9), 0.0)
        return np.where(elapsed < p2, rising, falling)

    def _overheat(self, slots, machine, elapsed, values, status) -> None:
        e = self._envelope(slots, elapsed)
        peak = self.level[slots] + 0.4 * self.rng.standard_normal(len(slots))
        values[TEMPERATURE, machine] = values[TEMPERATURE, machine] * (1 - e) + peak * e
        values[VIBRATION, machine] *= 1.0 + 0.15 * e  # hot bearings run rougher

    def _leak(self, slots, machine, elapsed, values, status) -> None:
        e = self._envelope(slots, elapsed)
        floor = self.level[slots] + 0.02 * self.rng.standard_normal(len(slots))
        values[PRESSURE, machine] = np.maximum(0.0, values[PRESSURE, machine] * (1 - e) + floor * e)
        values[POWER, machine] *= 1.0 + 0.1 * e * (status[machine] == RUNNING)  # working against the leak

    def _bearing(self, slots, machine, elapsed, values, status) -> None:
        progress = np.minimum(elapsed / ((self.end[slots] - self.start[slots] + 1) * self.dt), 1.0)
        vibration_factor, heat = bearing_wear_signature(self.level[slots], progress)
        values[VIBRATION, machine] *= vibration_factor
        values[TEMPERATURE, machine] += heat
        clip_normal(values, machine)

    def _stuck(self, slots, machine, elapsed, values, status) -> None:
        sensor = self.sensor[slots]
        fresh = np.isnan(self.level[slots])
        self.level[slots[fresh]] = values[sensor[fresh], machine[fresh]]
        values[sensor, machine] = self.level[slots]

    def _spike(self, slots, machine, elapsed, values, status) -> None:
        values[self.sensor[slots], machine] = self.level[slots]

    def _dropout(self, slots, machine, elapsed, values, status) -> None:
        variant = self.variant[slots]
        one = variant == _NULL_ONE
        values[self.sensor[slots[one]], machine[one]] = np.nan
        values[:, machine[variant == _NULL_ALL]] = np.nan

    def labels(
        self, until_tick: int, machine_ids: list[str], tick_ts: Callable[[int, int], int]
    ) -> list[FaultLabel]:
        """Labels of events started by `until_tick`; `tick_ts(machine, tick)` gives the wire timestamp."""
        self._sync_events(np.flatnonzero(self.active))
        out = []
        for slot, start, end, detail, first, last in self.events:
            if start > until_tick:
                continue
            machine = int(self.machine[slot])
            clipped_last = min(last, until_tick)
            has_breach = first >= 0 and first <= until_tick
            out.append(
                FaultLabel(
                    machine_id=machine_ids[machine],
                    fault=FAULT_KINDS[int(self.kind[slot])],
                    start_ts=tick_ts(machine, start),
                    end_ts=tick_ts(machine, min(end, until_tick)),
                    detail=detail,
                    breach_start_ts=tick_ts(machine, first) if has_breach else None,
                    breach_end_ts=tick_ts(machine, clipped_last) if has_breach else None,
                    truncated=end > until_tick,
                )
            )
        return out


_HANDLERS = {
    OVERHEAT: FaultInjector._overheat,
    LEAK: FaultInjector._leak,
    BEARING: FaultInjector._bearing,
    STUCK: FaultInjector._stuck,
    SPIKE: FaultInjector._spike,
    DROPOUT: FaultInjector._dropout,
}


def _assign(
    fleet: list[Machine], codes: list[int], fault_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick the affected machines and their fault kind; kinds share the affected count evenly."""
    n = len(fleet)
    order = rng.permutation(n)  # drawn even when unused so other draws do not depend on the fault list
    if not codes or fault_rate == 0.0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_affected = max(1, round(fault_rate * n))
    by_priority = [code for code in _PRIORITY if code in codes]
    share = [n_affected // len(codes) + (i < n_affected % len(codes)) for i in range(len(by_priority))]
    leak_ok = np.array([m.machine_type in _LEAK_TYPES for m in fleet])
    used = np.zeros(n, dtype=bool)
    machines, kinds = [], []
    for code, count in zip(by_priority, share):
        eligible = ~used & (leak_ok if code == LEAK else True)
        chosen = order[eligible[order]][:count]
        used[chosen] = True
        machines.append(chosen)
        kinds.append(np.full(len(chosen), code, dtype=np.int64))
    machine, kind = np.concatenate(machines), np.concatenate(kinds)
    keep = np.argsort(machine, kind="stable")
    return machine[keep].astype(np.int64), kind[keep]
