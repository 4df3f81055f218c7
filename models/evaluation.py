"""How well the anomaly models detect labelled faults, and how often they cry wolf (event level).

Definitions (all per machine; times in epoch ms; a window is [window_start, window_end)):

- An **event** is one labelled fault occurrence: (machine_id, fault, start_ts, end_ts).
- An **alert** is a scored window with `alert_raised`. It *matches* an event of its machine when the
  window ends after the event starts and starts no later than `grace_windows` windows after the event
  ended (a fault's aftermath still belongs to it).
- An event is **detected** when at least one alert matches it. Its **delay** is the first matching
  alert's `window_end - start_ts` (seconds: the alert can only be raised when its window has closed),
  and in windows ``ceil(delay / window length)``.
- A **false alarm** is an alert that matches no event (of any kind).
- Per fault kind: recall = detected / events; precision = matching alerts / (matching alerts + false
  alarms); F1 their harmonic mean. With one fault kind per run (as the targets are measured) precision
  is exact; with several kinds every false alarm counts against each kind (conservative).
- **False alarms per machine-day** = false alarms / (post-warm-up scored windows x window length / 1 day):
  the steady-state rate, counted only where a model was allowed to alert.

>>> import pyarrow as pa
>>> from datetime import datetime, timezone
>>> t = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc)
>>> scores = pa.table({"machine_id": ["M1"] * 3, "window_start": [t(0), t(10_000), t(20_000)],
...     "window_end": [t(10_000), t(20_000), t(30_000)], "alert_raised": [False, True, False],
...     "warming_up": [False] * 3})
>>> labels = pa.table({"machine_id": ["M1"], "fault": ["overheating"], "start_ts": [5_000], "end_ts": [40_000]})
>>> result = evaluate(scores, labels, window_ms=10_000)
>>> row = result.by_fault[0]
>>> row["events"], row["detected"], row["f1"], row["median_delay_s"], row["median_delay_windows"]
(1, 1, 1.0, 15.0, 2.0)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

DAY_S = 86_400.0


@dataclass
class Evaluation:
    by_fault: list[dict]  # fault, events, detected, recall, precision, f1, median_delay_s, median_delay_windows
    false_alarms: int
    machine_days: float
    false_alarms_per_machine_day: float
    alerts: int
    per_machine: list[dict] = field(default_factory=list)  # machine_id, events, detected, false_alarms, alerts

    def summary(self) -> dict:
        return {
            "alerts": self.alerts,
            "false_alarms": self.false_alarms,
            "machine_days": round(self.machine_days, 3),
            "false_alarms_per_machine_day": round(self.false_alarms_per_machine_day, 3),
            "by_fault": self.by_fault,
        }


def evaluate(scores: pa.Table, labels: pa.Table, *, window_ms: int, grace_windows: int = 3) -> Evaluation:
    """Event-level metrics of `scores` (ANOMALY_SCORE rows) against `labels` (see the module docstring)."""
    machines = scores["machine_id"].to_pylist()
    starts = _ms(scores["window_start"])
    ends = _ms(scores["window_end"])
    alerted = np.asarray(scores["alert_raised"].to_numpy(zero_copy_only=False), dtype=bool)
    steady = ~np.asarray(scores["warming_up"].to_numpy(zero_copy_only=False), dtype=bool)
    grace_ms = grace_windows * window_ms

    alerts_by_machine: dict[str, list[tuple[int, int]]] = {}
    for i in np.flatnonzero(alerted).tolist():
        alerts_by_machine.setdefault(machines[i], []).append((int(starts[i]), int(ends[i])))
    events = list(
        zip(labels["machine_id"].to_pylist(), labels["fault"].to_pylist(), _ms(labels["start_ts"]).tolist(),
            _ms(labels["end_ts"]).tolist())
    )
    events_by_machine: dict[str, list[tuple[str, int, int]]] = {}
    for machine, fault, start, end in events:
        events_by_machine.setdefault(machine, []).append((fault, start, end))

    matched_alerts_by_fault: dict[str, int] = {}
    false_alarms_by_machine: dict[str, int] = {}
    for machine, alerts in alerts_by_machine.items():
        for a_start, a_end in alerts:
            kinds = {f for f, s, e in events_by_machine.get(machine, []) if a_end > s and a_start <= e + grace_ms}
            for kind in kinds:
                matched_alerts_by_fault[kind] = matched_alerts_by_fault.get(kind, 0) + 1
            if not kinds:
                false_alarms_by_machine[machine] = false_alarms_by_machine.get(machine, 0) + 1
    false_alarms = sum(false_alarms_by_machine.values())

    by_fault = []
    detected_by_machine: dict[str, int] = {}
    for fault in sorted({e[1] for e in events}):
        delays = []
        count = 0
        for machine, kind, start, end in events:
            if kind != fault:
                continue
            count += 1
            hits = [a_end for a_start, a_end in alerts_by_machine.get(machine, []) if a_end > start and a_start <= end + grace_ms]
            if hits:
                delays.append((min(hits) - start) / 1000.0)
                detected_by_machine[machine] = detected_by_machine.get(machine, 0) + 1
        matched = matched_alerts_by_fault.get(fault, 0)
        recall = len(delays) / count if count else 0.0
        precision = matched / (matched + false_alarms) if matched + false_alarms else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        median_delay = statistics.median(delays) if delays else math.nan
        by_fault.append(
            {
                "fault": fault,
                "events": count,
                "detected": len(delays),
                "recall": round(recall, 4),
                "precision": round(precision, 4),
                "f1": round(f1, 4),
                "median_delay_s": round(median_delay, 1) if delays else None,
                "median_delay_windows": float(math.ceil(median_delay * 1000 / window_ms)) if delays else None,
            }
        )

    machine_days = float(steady.sum()) * window_ms / 1000.0 / DAY_S
    per_machine = [
        {
            "machine_id": m,
            "events": len(events_by_machine.get(m, [])),
            "detected": detected_by_machine.get(m, 0),
            "false_alarms": false_alarms_by_machine.get(m, 0),
            "alerts": len(alerts_by_machine.get(m, [])),
        }
        for m in sorted(set(machines))
    ]
    return Evaluation(
        by_fault=by_fault,
        false_alarms=false_alarms,
        machine_days=machine_days,
        false_alarms_per_machine_day=false_alarms / machine_days if machine_days else math.nan,
        alerts=int(alerted.sum()),
        per_machine=per_machine,
    )


def _ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
