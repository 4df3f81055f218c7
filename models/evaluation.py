"""How well the anomaly models detect labelled faults, and how often they cry wolf (event level).

Definitions (all per machine; times in epoch ms; a window is [window_start, window_end)):

- An **event** is one labelled fault occurrence: (machine_id, fault, start_ts, end_ts).
- An event is **judged** unless it starts before its machine's first window out of warm-up (the first
  score row with ``warming_up`` false): a model cannot alert before it has a baseline, so those events
  are counted apart (``events_in_warmup``) and left out of recall and delay. Machines never out of
  warm-up have all their events unjudged.
- An **alert** is a score row with ``alert_raised``. It *matches* an event of the same machine when its
  window overlaps ``[start_ts, end_ts + grace_windows x window_ms)``, i.e. ``window_end > start_ts`` and
  ``window_start < end_ts + grace`` (a fault's aftermath - the trip, the recovery - still belongs to it).
- An event is **detected** when at least one alert matches it. Its **delay** is the first matching
  alert's ``window_end - start_ts`` in seconds (an alert exists only once its window has closed), and
  in windows ``ceil(delay / window length)``: 1 means the window in which the fault began.
- A **false alarm** is an alert that matches no event of its machine (of any kind, judged or not).
- Per fault kind: recall = detected judged events / judged events; precision = alerts matching an
  event of that kind / (those + all false alarms); F1 their harmonic mean. With one fault kind per run
  (as the targets are measured) precision is exact; with several kinds every false alarm counts against
  each kind (conservative).
- **False alarms per machine-day** = false alarms / (score rows with ``warming_up`` false x window
  length / 1 day): the steady-state rate over the time the models were allowed to alert.

The benchmark scorers for labelled real data - the SKAB protocol (point-wise F1, FAR, MAR) and NAB's event
score - live in `models.benchmark_scores` and are importable from here too (`skab_score`, `nab_score`,
`point_predictions`, `SkabResult`, `NabResult`).

>>> from datetime import datetime, timezone
>>> t = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc)
>>> scores = pa.table({"machine_id": ["M1"] * 3, "window_start": [t(0), t(10_000), t(20_000)],
...     "window_end": [t(10_000), t(20_000), t(30_000)], "alert_raised": [False, True, False],
...     "warming_up": [False] * 3})
>>> labels = pa.table({"machine_id": ["M1"], "fault": ["overheating"], "start_ts": [5_000], "end_ts": [40_000]})
>>> row = evaluate(scores, labels, window_ms=10_000).by_fault[0]
>>> row["events"], row["detected"], row["f1"], row["median_delay_s"], row["median_delay_windows"]
(1, 1, 1.0, 15.0, 2.0)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from models.benchmark_scores import (
    NAB_STANDARD,
    SKAB_TRAIN_ROWS,
    NabResult,
    SkabResult,
    nab_score,
    point_predictions,
    skab_from_predictions,
    skab_score,
)

__all__ = [
    "NAB_STANDARD", "SKAB_TRAIN_ROWS", "Evaluation", "NabResult", "SkabResult", "evaluate", "nab_score",
    "point_predictions", "skab_from_predictions", "skab_score",
]

DAY_S = 86_400.0


@dataclass
class Evaluation:
    # fault, events, events_in_warmup, detected, matched_alerts, false_alarms, recall, precision, f1,
    # median_delay_s, median_delay_windows
    by_fault: list[dict]
    false_alarms: int
    machine_days: float
    false_alarms_per_machine_day: float
    alerts: int
    per_machine: list[dict] = field(default_factory=list)  # machine_id, events, detected, false_alarms, alerts
    delays_s: dict[str, list[float]] = field(default_factory=dict)  # per fault kind, per detected event
    # per label row, in the labels' order: its delay in seconds, or None when unjudged or missed
    event_delays_s: list[float | None] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "alerts": self.alerts,
            "false_alarms": self.false_alarms,
            "machine_days": round(self.machine_days, 3),
            "false_alarms_per_machine_day": round(self.false_alarms_per_machine_day, 3)
            if not math.isnan(self.false_alarms_per_machine_day) else None,
            "by_fault": self.by_fault,
        }


def evaluate(scores: pa.Table, labels: pa.Table, *, window_ms: int, grace_windows: int = 3) -> Evaluation:
    """Event-level metrics of `scores` (ANOMALY_SCORE rows) against `labels` (see the module docstring).

    `labels` columns: machine_id, fault, start_ts, end_ts (epoch ms integers or timestamps).
    """
    if window_ms <= 0 or grace_windows < 0:
        raise ValueError(f"evaluate: need window_ms > 0 and grace_windows >= 0, got {window_ms!r}, {grace_windows!r}")
    machines = scores["machine_id"].to_pylist()
    starts, ends = _ms(scores["window_start"]), _ms(scores["window_end"])
    alerted = np.asarray(scores["alert_raised"].to_numpy(zero_copy_only=False), dtype=bool)
    steady = ~np.asarray(scores["warming_up"].to_numpy(zero_copy_only=False), dtype=bool)
    grace_ms = grace_windows * window_ms

    steady_from: dict[str, int] = {}  # machine -> start of its first window out of warm-up
    for i in np.flatnonzero(steady).tolist():
        if machines[i] not in steady_from or starts[i] < steady_from[machines[i]]:
            steady_from[machines[i]] = int(starts[i])
    alerts_by_machine: dict[str, list[tuple[int, int]]] = {}
    for i in np.flatnonzero(alerted).tolist():
        alerts_by_machine.setdefault(machines[i], []).append((int(starts[i]), int(ends[i])))
    events = list(zip(labels["machine_id"].to_pylist(), labels["fault"].to_pylist(),
                      _ms(labels["start_ts"]).tolist(), _ms(labels["end_ts"]).tolist()))
    events_by_machine: dict[str, list[tuple[str, int, int]]] = {}
    for machine, fault, start, end in events:
        events_by_machine.setdefault(machine, []).append((fault, start, end))

    def matches(a_start: int, a_end: int, start: int, end: int) -> bool:
        return a_end > start and a_start < end + grace_ms

    matched_by_fault: dict[str, int] = {}
    false_by_machine: dict[str, int] = {}
    for machine, alerts in alerts_by_machine.items():
        for a_start, a_end in alerts:
            kinds = {f for f, s, e in events_by_machine.get(machine, []) if matches(a_start, a_end, s, e)}
            for kind in kinds:
                matched_by_fault[kind] = matched_by_fault.get(kind, 0) + 1
            if not kinds:
                false_by_machine[machine] = false_by_machine.get(machine, 0) + 1
    false_alarms = sum(false_by_machine.values())

    by_fault, delays_by_fault = [], {}
    event_delays: list[float | None] = [None] * len(events)
    detected_by_machine: dict[str, int] = {}
    for fault in sorted({e[1] for e in events}):
        delays: list[float] = []
        judged = in_warmup = 0
        for row, (machine, kind, start, end) in enumerate(events):
            if kind != fault:
                continue
            if machine not in steady_from or start < steady_from[machine]:
                in_warmup += 1
                continue
            judged += 1
            hits = [a_end for a_start, a_end in alerts_by_machine.get(machine, []) if matches(a_start, a_end, start, end)]
            if hits:
                delays.append((min(hits) - start) / 1000.0)
                event_delays[row] = delays[-1]
                detected_by_machine[machine] = detected_by_machine.get(machine, 0) + 1
        matched = matched_by_fault.get(fault, 0)
        recall = len(delays) / judged if judged else 0.0
        precision = matched / (matched + false_alarms) if matched + false_alarms else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        median = statistics.median(delays) if delays else None
        by_fault.append({
            "fault": fault,
            "events": judged,
            "events_in_warmup": in_warmup,
            "detected": len(delays),
            "matched_alerts": matched,
            "false_alarms": false_alarms,
            "recall": round(recall, 4),
            "precision": round(precision, 4),
            "f1": round(f1, 4),
            "median_delay_s": round(median, 1) if median is not None else None,
            "median_delay_windows": float(math.ceil(median * 1000 / window_ms)) if median is not None else None,
        })
        delays_by_fault[fault] = delays

    machine_days = float(steady.sum()) * window_ms / 1000.0 / DAY_S
    per_machine = [
        {"machine_id": m, "events": len(events_by_machine.get(m, [])), "detected": detected_by_machine.get(m, 0),
         "false_alarms": false_by_machine.get(m, 0), "alerts": len(alerts_by_machine.get(m, []))}
        for m in sorted(set(machines))
    ]
    return Evaluation(
        by_fault=by_fault,
        false_alarms=false_alarms,
        machine_days=machine_days,
        false_alarms_per_machine_day=false_alarms / machine_days if machine_days else math.nan,
        alerts=int(alerted.sum()),
        per_machine=per_machine,
        delays_s=delays_by_fault,
        event_delays_s=event_delays,
    )


def _ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
