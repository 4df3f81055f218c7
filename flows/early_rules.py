"""Threshold rules evaluated as readings arrive, so that an incident opens within seconds, not at window close.

`flows.rules.evaluate_rules` judges closed windows: exact, but a breach is only reported once its window
closes (a window plus the allowed lateness later). `EarlyBreaches` follows each (machine, rule) breach run
reading by reading instead and reports the moment the run has lasted `for_seconds`: the reading that
arrives then (held or not) proves that the previous value held until its timestamp. Semantics match the
closed-window evaluation: a reading's value holds until the next reading of its window (the last one until the
window's end, so the time between a window's start and its first reading counts for no run), a run continues
across adjacent windows only, and the completion is attributed to the window of the run's last reading before
it, which is where `evaluate_rules` fires first (`tests/test_incidents.py` checks both against each other).
One early detection per run; the closed windows report the rest.

Readings older than the machine's newest one already seen are left to the closed-window evaluation (an
early verdict must not depend on arrival order). The state is per machine and rule, indexed like the shard's
machine registry, and goes into the shard's snapshot with the rest of `ShardWindows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flows.rules import ThresholdRule

NONE = np.iinfo(np.int64).min // 4


@dataclass
class EarlyDetection:
    """A threshold rule whose condition has just held for its `for_seconds` (one per breach run)."""

    midx: int
    rule: ThresholdRule
    window_start: int  # ms: the window the completing part of the run belongs to
    completed_ts: int  # ms, event time: run start + for_seconds
    trigger_ts: int  # ms, event time of the reading that revealed it
    value: float  # the last held value
    run_seconds: float

    @property
    def message(self) -> str:
        return (
            f"{self.rule.describe()}: {self.rule.sensor} at {self.value:.2f}, held for {self.run_seconds:.1f} s "
            "(window still open)"
        )


class EarlyBreaches:
    """Per (machine, rule): the open breach run's start, whether it fired, and the newest reading seen."""

    def __init__(self, n_rules: int) -> None:
        self.run_start = np.zeros((0, n_rules), dtype=np.int64)  # NONE when no run is open
        # ms of the run held by no reading: from a window's start to its first reading (as in flows.rules)
        self.run_lost = np.zeros((0, n_rules), dtype=np.int64)
        self.fired = np.zeros((0, n_rules), dtype=bool)
        self.last_held = np.zeros((0, n_rules), dtype=bool)
        self.last_value = np.zeros((0, n_rules))  # the newest reading's value, for a run completed by the next
        self.last_ts = np.zeros(0, dtype=np.int64)
        self.last_ws = np.zeros(0, dtype=np.int64)

    def grow(self, n_machines: int) -> None:
        extra = n_machines - len(self.last_ts)
        if extra <= 0:
            return
        r = self.run_start.shape[1]
        self.run_start = np.vstack((self.run_start, np.full((extra, r), NONE, dtype=np.int64)))
        self.run_lost = np.vstack((self.run_lost, np.zeros((extra, r), dtype=np.int64)))
        self.fired = np.vstack((self.fired, np.zeros((extra, r), dtype=bool)))
        self.last_held = np.vstack((self.last_held, np.zeros((extra, r), dtype=bool)))
        self.last_value = np.vstack((self.last_value, np.full((extra, r), np.nan)))
        self.last_ts = np.concatenate((self.last_ts, np.full(extra, NONE, dtype=np.int64)))
        self.last_ws = np.concatenate((self.last_ws, np.full(extra, NONE, dtype=np.int64)))

    def adopt_rules(self, old_columns: list[int | None]) -> None:
        """Rules changed at a restart: column j now belongs to the rule that was `old_columns[j]` (None: new)."""
        n = len(self.last_ts)
        run_start = np.full((n, len(old_columns)), NONE, dtype=np.int64)
        run_lost = np.zeros((n, len(old_columns)), dtype=np.int64)
        fired = np.zeros((n, len(old_columns)), dtype=bool)
        last_held = np.zeros((n, len(old_columns)), dtype=bool)
        last_value = np.full((n, len(old_columns)), np.nan)
        for j, old in enumerate(old_columns):
            if old is not None:
                run_start[:, j], run_lost[:, j] = self.run_start[:, old], self.run_lost[:, old]
                fired[:, j] = self.fired[:, old]
                last_held[:, j], last_value[:, j] = self.last_held[:, old], self.last_value[:, old]
        self.run_start, self.fired, self.last_held, self.last_value = run_start, fired, last_held, last_value
        self.run_lost = run_lost

    def observe(
        self,
        rules: list[ThresholdRule],
        midx: np.ndarray,
        ts: np.ndarray,
        seq: np.ndarray,
        sensors: dict[str, np.ndarray],
        machine_types: np.ndarray,
        window_ms: int,
    ) -> list[EarlyDetection]:
        """Follow the runs through accepted readings (any order); returns the runs that completed now."""
        if not rules or not len(ts):
            return []
        if not self.last_held[midx].any() and not any(rule.holds(sensors[rule.sensor]).any() for rule in rules):
            # The common case: nothing breaches and no run is open for these machines; only the newest reading
            # of each machine moves (the full pass below would leave the same state, at ten times the cost).
            np.maximum.at(self.last_ts, midx, ts)
            touched = np.unique(midx)
            self.last_ws[touched] = self.last_ts[touched] - self.last_ts[touched] % window_ms
            return []
        order = np.lexsort((seq, ts, midx))
        midx, ts = midx[order], ts[order]
        in_order = ts >= self.last_ts[midx]  # older readings: the closed-window evaluation's business
        if not in_order.all():
            keep = np.flatnonzero(in_order)
            order, midx, ts = order[keep], midx[keep], ts[keep]
        if not len(ts):
            return []
        ws = ts - ts % window_ms
        first = np.ones(len(ts), dtype=bool)
        first[1:] = midx[1:] != midx[:-1]
        last = np.ones(len(ts), dtype=bool)
        last[:-1] = first[1:]
        prev_ws = np.empty_like(ws)
        prev_ws[1:] = ws[:-1]
        prev_ws[first] = self.last_ws[midx[first]]
        adjacent = (prev_ws != NONE) & (ws <= prev_ws + window_ms)
        # How far the previous reading's value held: up to this reading, or its window's end if this one is
        # in a later window (as in the closed evaluation: a run does not jump over a window without readings).
        held_until = np.minimum(ts, prev_ws + window_ms)
        types = machine_types[midx]
        found: list[EarlyDetection] = []
        for r, rule in enumerate(rules):
            values = sensors[rule.sensor][order]
            held = rule.holds(values)
            if rule.machine_types is not None:
                held &= np.isin(types, list(rule.machine_types))
            prev_held = np.empty_like(held)
            prev_held[1:] = held[:-1]
            prev_held[first] = self.last_held[midx[first], r]
            continues = held & prev_held & adjacent
            # The start of each row's run (its identity): a new run starts at its own ts; a continuing one
            # inherits. A run continuing into a new window loses the time from the window's start to its first
            # reading, which no reading holds in the closed evaluation either.
            marker = held & (~continues | first)
            gap = np.where(continues & (ws != prev_ws), ts - ws, 0)
            gaps = np.cumsum(gap)
            marker_start = np.where(continues, self.run_start[midx, r], ts)  # used at markers only
            marker_lost = np.where(continues, self.run_lost[midx, r] + gap, 0)
            at = np.maximum.accumulate(np.where(marker, np.arange(len(ts)), 0))
            start = np.where(held, marker_start[at], NONE)
            lost = np.where(held, marker_lost[at] + gaps - gaps[at], 0)
            prev_start, prev_lost = np.empty_like(start), np.empty_like(lost)
            prev_start[1:], prev_lost[1:] = start[:-1], lost[:-1]
            prev_start[first] = np.where(prev_held[first], self.run_start[midx[first], r], NONE)
            prev_lost[first] = np.where(prev_held[first], self.run_lost[midx[first], r], 0)
            for_ms = int(round(rule.for_seconds * 1000))
            # A run completes at the reading that shows its previous value held for for_seconds; with
            # for_seconds = 0 the first held reading completes it.
            through_prev = prev_held & (held_until - prev_start - prev_lost >= for_ms) & (prev_start != NONE)
            own = held & (for_ms == 0)
            run_of = np.where(through_prev, prev_start, start)
            lost_of = np.where(through_prev, prev_lost, lost)
            complete = through_prev | own
            if complete.any():
                found.extend(self._first_per_run(rule, r, complete, through_prev, midx, run_of, lost_of, prev_ws, ws,
                                                 ts, held_until, values, for_ms))
            # The state after this batch: each machine's last row.
            ends = np.flatnonzero(last)
            machines = midx[ends]
            new_start = start[ends]
            fired = self.fired[machines, r] & (self.run_start[machines, r] == new_start)
            if complete.any():
                # A machine's open run has fired when any completed row of that machine belongs to it (the rows
                # are grouped by machine, so each row's group is the position of its machine in `ends`).
                group = np.cumsum(first) - 1
                hit = complete & (run_of == new_start[group])
                fired |= np.bincount(group[hit], minlength=len(ends)) > 0
            self.fired[machines, r] = (new_start != NONE) & fired
            self.run_start[machines, r] = new_start
            self.run_lost[machines, r] = lost[ends]
            self.last_held[machines, r] = held[ends]
            self.last_value[machines, r] = values[ends]
        ends = np.flatnonzero(last)
        self.last_ts[midx[ends]] = ts[ends]
        self.last_ws[midx[ends]] = ws[ends]
        return found

    def _first_per_run(
        self, rule: ThresholdRule, r: int, complete: np.ndarray, through_prev: np.ndarray, midx: np.ndarray,
        run_of: np.ndarray, lost_of: np.ndarray, prev_ws: np.ndarray, ws: np.ndarray, ts: np.ndarray, held_until: np.ndarray,
        values: np.ndarray, for_ms: int,
    ) -> list[EarlyDetection]:
        rows = np.flatnonzero(complete)
        new_run = np.ones(len(rows), dtype=bool)
        new_run[1:] = (midx[rows][1:] != midx[rows][:-1]) | (run_of[rows][1:] != run_of[rows][:-1])
        rows = rows[new_run]
        # A run that already fired in an earlier batch (the same machine, the same start) stays quiet.
        already = self.fired[midx[rows], r] & (self.run_start[midx[rows], r] == run_of[rows])
        detections = []
        for i in rows[~already].tolist():
            via_prev = bool(through_prev[i])
            if not via_prev:
                value = float(values[i])
            elif i > 0 and midx[i - 1] == midx[i]:
                value = float(values[i - 1])
            else:  # the run's previous reading came in an earlier batch
                value = float(self.last_value[midx[i], r])
            start, lost = int(run_of[i]), int(lost_of[i])
            end = int(held_until[i]) if via_prev else int(ts[i])
            detections.append(
                EarlyDetection(
                    midx=int(midx[i]),
                    rule=rule,
                    window_start=int(prev_ws[i] if via_prev else ws[i]),
                    completed_ts=start + lost + for_ms,
                    trigger_ts=int(ts[i]),
                    value=value,
                    run_seconds=(end - start - lost) / 1000.0,
                )
            )
        return detections

