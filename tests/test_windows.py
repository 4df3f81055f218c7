"""Window aggregation, lateness, duplicates, idle close and staleness, on one worker and on a cluster."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from flows.decode import LATE
from plantpulse.schema import SENSORS, STATUSES
from tests.flowkit import batches_of, config, encode, readings_frame, run_pipeline
from tests.reference import window_stats_reference

T0 = 1_700_000_003_000  # deliberately not aligned to a window boundary


def fleet_readings(machines: int, seconds: int, seed: int) -> list[dict]:
    """Readings every ~1 s per machine with jitter, null sensors and status changes, in arrival order."""
    rng = random.Random(seed)
    readings = []
    for second in range(seconds):
        for m in range(machines):
            reading = {
                "machine_id": f"M{m:04d}",
                "ts": T0 + second * 1000 + rng.randrange(0, 900),
                "seq": second,
                "status": rng.choice(STATUSES) if rng.random() < 0.1 else "running",
            }
            for sensor in SENSORS:
                if rng.random() > 0.03:  # 3% sensor dropouts
                    reading[sensor] = round(rng.uniform(1.5, 90.0), 3)
                else:
                    reading[sensor] = None
            readings.append(reading)
    # Out-of-order delivery within the allowed lateness: swap neighbours now and then.
    for i in range(0, len(readings) - machines, 7):
        j = i + rng.randrange(1, machines)
        readings[i], readings[j] = readings[j], readings[i]
    return readings


def assert_frames_match(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    key = ["machine_id", "window_start"]
    actual = actual.sort_values(key).reset_index(drop=True)
    expected = expected.sort_values(key).reset_index(drop=True)
    assert len(actual) == len(expected)
    for column in expected.columns:
        left, right = actual[column], expected[column]
        if left.dtype.kind == "f" or right.dtype.kind == "f":
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=1e-9, atol=1e-9, err_msg=column)
        else:
            assert left.tolist() == right.tolist(), column


@pytest.mark.parametrize("workers", [1, 3])
def test_window_stats_equal_reference(workers: int) -> None:
    readings = fleet_readings(machines=40, seconds=65, seed=workers)
    result = run_pipeline(batches_of([encode(r) for r in readings], 333), config(shards=8), workers=workers)
    expected = window_stats_reference(readings_frame(readings), 10_000)
    assert not result.dead_letters
    assert_frames_match(result.window_stats[expected.columns], expected)
    # Each machine's latest state is its newest window's last values.
    latest = result.machine_state.sort_values("last_ts").groupby("machine_id").last()
    newest = expected.sort_values("window_start").groupby("machine_id").last()
    assert latest["last_seq"].tolist() == newest["last_seq"].tolist()
    assert (latest["state"] == "ok").all()


@pytest.mark.parametrize("workers", [1, 2])
def test_late_events_are_dead_lettered_and_duplicates_dropped(workers: int) -> None:
    readings = fleet_readings(machines=5, seconds=40, seed=11)
    messages = [encode(r) for r in readings]
    # A reading for M0000's first window, delivered after 30 s of newer data: late (lateness is 2 s).
    late = {"machine_id": "M0000", "ts": T0 + 500, "seq": 10_000, "status": "running", "temperature": 50.0}
    messages.insert(150, encode(late))
    # Duplicates of already delivered readings: the same (machine, seq), re-sent later.
    duplicates = [messages[3], messages[40], messages[41]]
    messages[100:100] = duplicates
    result = run_pipeline(batches_of(messages, 50), config(shards=4), workers=workers)

    late_letters = [d for d in result.dead_letters if d.reason == LATE]
    assert [d.value for d in late_letters] == [encode(late)]
    assert late_letters[0].offset == 150 + len(duplicates) if 150 > 100 else 150
    expected = window_stats_reference(readings_frame(readings), 10_000)
    assert int(result.window_stats["readings"].sum()) == len(readings)
    assert_frames_match(result.window_stats[expected.columns], expected)


def test_silent_machine_gets_window_closed_and_turns_stale() -> None:
    """A fake clock drives idle close and staleness: machine M0001 stops after 12 s, the others go on."""
    now = [T0 / 1000]
    readings = []
    for second in range(60):
        for m in range(3):
            if m == 1 and second >= 12:
                continue
            readings.append(
                {"machine_id": f"M{m:04d}", "ts": T0 + second * 1000, "seq": second, "status": "running", "rpm": 100.0}
            )
    batches = batches_of([encode(r) for r in readings], 3)

    def clock() -> float:
        now[0] += 0.25  # every call advances wall time; 60 batches * several calls >> stale_after
        return now[0]

    result = run_pipeline(batches, config(shards=2, idle_close_s=5.0, stale_after_s=20.0), clock=clock)
    m1 = result.window_stats[result.window_stats["machine_id"] == "M0001"]
    # M0001's second window [T0+7s, T0+17s) holds readings up to 11 s: it must be emitted although
    # M0001 never sent a reading past it.
    assert sorted(m1["window_start"].tolist()) == sorted({(T0 + s * 1000) // 10_000 * 10_000 for s in range(12)})
    states = result.machine_state[result.machine_state["machine_id"] == "M0001"]
    assert "stale" in states["state"].tolist()
    others = result.machine_state[result.machine_state["machine_id"] != "M0001"]
    assert "stale" not in others["state"].tolist()
