"""Event-level evaluation against metrics counted by hand on a small constructed case."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from models.evaluation import evaluate

W = 10_000


def scores_table(rows: list[tuple[str, int, bool, bool]]) -> pa.Table:
    """rows: (machine, window index, alert_raised, warming_up); windows are [k W, (k+1) W)."""
    ts = pa.timestamp("ms", "UTC")
    return pa.table({
        "machine_id": [r[0] for r in rows],
        "window_start": pa.array([r[1] * W for r in rows], pa.int64()).cast(ts),
        "window_end": pa.array([(r[1] + 1) * W for r in rows], pa.int64()).cast(ts),
        "alert_raised": [r[2] for r in rows],
        "warming_up": [r[3] for r in rows],
    })


def test_hand_counted_case() -> None:
    # M1: warm-up windows 0-1, then 2..99. Events: overheating [25 s, 60 s] -> alert in window 4 ([40, 50) s)
    #     matches, delay 50 - 25 = 25 s = 3 windows; a second alert in window 6 also matches (inside the event).
    #     bearing_wear [300 s, 400 s] -> alert in window 42 ([420, 430) s): starts before 400 + 3 x 10 s: matches,
    #     delay 430 - 300 = 130 s = 13 windows. An alert at window 80 matches nothing: false alarm.
    # M2: never out of warm-up -> its overheating event is unjudged; its alert at window 5 matches it (not false).
    # M3: warm-up windows 0-9; its overheating event starts at 50 s (in warm-up): unjudged. Its event at
    #     [500 s, 600 s] has no alert: missed. Alerts at windows 20 and 30 match nothing: 2 false alarms.
    rows = [("M1", k, k in (4, 6, 42, 80), k < 2) for k in range(100)]
    rows += [("M2", k, k == 5, True) for k in range(50)]
    rows += [("M3", k, k in (20, 30), k < 10) for k in range(100)]
    labels = pa.table({
        "machine_id": ["M1", "M1", "M2", "M3", "M3"],
        "fault": ["overheating", "bearing_wear", "overheating", "overheating", "overheating"],
        "start_ts": [25_000, 300_000, 10_000, 50_000, 500_000],
        "end_ts": [60_000, 400_000, 90_000, 90_000, 600_000],
    })
    result = evaluate(scores_table(rows), labels, window_ms=W, grace_windows=3)
    by = {row["fault"]: row for row in result.by_fault}
    false_alarms = 3  # M1 window 80, M3 windows 20 and 30
    assert result.false_alarms == false_alarms and result.alerts == 7

    overheating = by["overheating"]
    # judged: M1's event and M3's second event (M2 never steady, M3's first event began in warm-up)
    assert (overheating["events"], overheating["events_in_warmup"], overheating["detected"]) == (2, 2, 1)
    # matching alerts of the kind: M1 windows 4 and 6, M2 window 5 (unjudged events still own their alerts)
    assert overheating["matched_alerts"] == 3
    precision, recall = 3 / (3 + false_alarms), 1 / 2
    assert overheating["precision"] == pytest.approx(precision, abs=1e-4)
    assert overheating["recall"] == 0.5
    assert overheating["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-4)
    assert (overheating["median_delay_s"], overheating["median_delay_windows"]) == (25.0, 3.0)

    bearing = by["bearing_wear"]
    assert (bearing["events"], bearing["detected"], bearing["matched_alerts"]) == (1, 1, 1)
    assert bearing["precision"] == pytest.approx(1 / 4, abs=1e-4) and bearing["recall"] == 1.0
    assert (bearing["median_delay_s"], bearing["median_delay_windows"]) == (130.0, 13.0)
    assert result.delays_s == {"bearing_wear": [130.0], "overheating": [25.0]}
    # label rows in order: M1 overheating, M1 bearing, M2 (unjudged), M3 in warm-up (unjudged), M3 missed
    assert result.event_delays_s == [25.0, 130.0, None, None, None]

    steady_windows = 98 + 0 + 90
    machine_days = steady_windows * W / 1000 / 86_400
    assert result.machine_days == pytest.approx(machine_days)
    assert result.false_alarms_per_machine_day == pytest.approx(false_alarms / machine_days)
    per_machine = {row["machine_id"]: row for row in result.per_machine}
    assert per_machine["M3"] == {"machine_id": "M3", "events": 2, "detected": 0, "false_alarms": 2, "alerts": 2}


def test_alert_just_past_the_grace_is_a_false_alarm() -> None:
    # event ends at 100 s; grace 1 window -> alerts must start before 110 s. Window 11 starts at 110 s.
    rows = [("M1", k, k == 11, False) for k in range(20)]
    labels = pa.table({"machine_id": ["M1"], "fault": ["spike"], "start_ts": [55_000], "end_ts": [100_000]})
    result = evaluate(scores_table(rows), labels, window_ms=W, grace_windows=1)
    assert result.false_alarms == 1 and result.by_fault[0]["detected"] == 0 and result.by_fault[0]["f1"] == 0.0


def test_no_steady_windows_gives_nan_rate_and_bad_window_is_rejected() -> None:
    rows = [("M1", k, False, True) for k in range(3)]
    empty = pa.table({"machine_id": pa.array([], pa.string()), "fault": pa.array([], pa.string()),
                      "start_ts": pa.array([], pa.int64()), "end_ts": pa.array([], pa.int64())})
    result = evaluate(scores_table(rows), empty, window_ms=W)
    assert math.isnan(result.false_alarms_per_machine_day) and result.by_fault == []
    assert result.summary()["false_alarms_per_machine_day"] is None
    with pytest.raises(ValueError, match="window_ms > 0"):
        evaluate(scores_table(rows), empty, window_ms=0)
