"""Straightforward reference computations (pandas + plain Python) that the flow's outputs are checked against.

Deliberately written differently from the flow: row-by-row pandas group operations, no NumPy reduceat.
"""

from __future__ import annotations

import pandas as pd

from plantpulse.schema import SENSORS, STATUSES


def window_stats_reference(readings: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Expected window rows for accepted readings (columns machine_id, ts [ms int], seq, sensors, status)."""
    df = readings.sort_values(["machine_id", "ts", "seq"]).copy()
    df["window_start"] = df["ts"] // window_ms * window_ms
    grouped = df.groupby(["machine_id", "window_start"], sort=True)
    out = grouped.agg(readings=("ts", "size"), first_ts=("ts", "min"), last_ts=("ts", "max"))
    out["last_seq"] = grouped["seq"].last()
    out["first_seq"] = grouped["seq"].first()
    for sensor in SENSORS:
        column = grouped[sensor]
        out[f"{sensor}_count"] = column.count()
        out[f"{sensor}_mean"] = column.mean()
        out[f"{sensor}_min"] = column.min()
        out[f"{sensor}_max"] = column.max()
        out[f"{sensor}_std"] = column.std(ddof=0)
        out[f"{sensor}_last"] = column.last()
    out["status_last"] = grouped["status"].last()
    seconds = {status: [] for status in STATUSES}
    for (_, window_start), group in grouped:
        held = {status: 0.0 for status in STATUSES}
        ts = group["ts"].tolist()
        statuses = group["status"].tolist()
        for i, status in enumerate(statuses):
            until = ts[i + 1] if i + 1 < len(ts) else window_start + window_ms
            held[status] += (until - ts[i]) / 1000.0
        for status in STATUSES:
            seconds[status].append(held[status])
    for status in STATUSES:
        out[f"secs_{status}"] = seconds[status]
    return out.reset_index()


def threshold_alerts_reference(
    readings: pd.DataFrame, window_ms: int, sensor: str, above: float | None, below: float | None,
    for_seconds: float, machine_types: dict[str, str] | None = None, types: set[str] | None = None,
) -> set[tuple[str, int]]:
    """(machine_id, window_start) pairs where `sensor` breached continuously for `for_seconds`.

    A reading's value holds until the next reading of its window, the last until the window end; a run
    reaching a window's end continues into the next window when that window's first reading breaches.
    """
    fired: set[tuple[str, int]] = set()
    df = readings.sort_values(["machine_id", "ts", "seq"])
    for machine_id, machine in df.groupby("machine_id", sort=True):
        if types is not None and (machine_types or {}).get(machine_id, "unknown") not in types:
            continue
        run = 0.0
        previous_window_end = None
        previous_breach = False
        rows = list(zip(machine["ts"].tolist(), machine[sensor].tolist()))
        for i, (ts, value) in enumerate(rows):
            window_start = ts // window_ms * window_ms
            next_ts = rows[i + 1][0] if i + 1 < len(rows) else None
            same_window = next_ts is not None and next_ts // window_ms * window_ms == window_start
            until = next_ts if same_window else window_start + window_ms
            breach = value == value and (
                (above is not None and value > above) or (below is not None and value < below)
            )
            first_of_window = i == 0 or rows[i - 1][0] // window_ms * window_ms != window_start
            if breach:
                continues = previous_breach and (
                    not first_of_window or previous_window_end == window_start
                )
                run = (run if continues else 0.0) + (until - ts) / 1000.0
                if run >= for_seconds:
                    fired.add((machine_id, window_start))
            else:
                run = 0.0
            previous_breach = breach
            previous_window_end = window_start + window_ms
        del previous_window_end
    return fired
