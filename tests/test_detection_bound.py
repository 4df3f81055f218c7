"""The bearing-wear oracle bound of `bench.detection_bound`: its per-window shifts against a hand
computation of the simulator's wear curve, its CUSUM limit against simulated noise, and its delays
against shifts whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from bench.detection_bound import (
    HORIZON_WINDOWS,
    WINDOWS_PER_DAY,
    bound,
    cusum_limit,
    effect_offsets_s,
    event_shifts,
    median_delay,
)
from sim.faults import bearing_wear_signature


def _labels(*events: tuple[int, int, str]) -> pa.Table:
    return pa.table({
        "machine_id": [f"M{i}" for i in range(len(events))],
        "fault": ["bearing_wear"] * len(events),
        "start_ts": [e[0] for e in events],
        "end_ts": [e[1] for e in events],
        "detail": [e[2] for e in events],
    })


def test_event_shifts_follow_the_wear_curve_with_healthy_readings_before_onset():
    # Onset 4.5 s into a window; readings keep that phase (x.5 s); 300 readings (end is the last one's ts).
    start = 1_000_000_000 + 4_500
    shifts = event_shifts(_labels((start, start + 299_000, "vibration_x3.00")), window_ms=10_000, interval_ms=1000)
    vibration_sd, temperature_sd = 0.04 / math.sqrt(10), 0.15 / math.sqrt(10)
    # The onset window's readings are at 0.5 .. 9.5 s: four healthy, six at elapsed 0 .. 5 s. The third
    # window's are at 20.5 .. 29.5 s: elapsed 16 .. 25 s.
    for window, elapsed in ((0, range(6)), (2, range(16, 26))):
        progress = [e / 300 for e in elapsed]
        factor = (sum(1 + 2 * p**1.5 for p in progress) + (10 - len(progress))) / 10
        heat = sum(2 * p for p in progress) / 10
        expected = math.hypot(math.log(factor) / vibration_sd, heat / temperature_sd)
        assert shifts[0, window] == pytest.approx(expected, rel=1e-9)
    assert np.all(np.diff(shifts[0]) > 0)  # wear only grows over the first two minutes


def test_event_shifts_refuse_labels_without_bearing_events_or_level():
    with pytest.raises(ValueError, match="no bearing_wear event"):
        event_shifts(_labels()[:0], window_ms=10_000, interval_ms=1000)
    with pytest.raises(ValueError, match="vibration_x"):
        event_shifts(_labels((0, 300_000, "peak=101C")), window_ms=10_000, interval_ms=1000)


def test_cusum_limit_alarms_once_per_machine_day_on_noise():
    k, h = 1.0, cusum_limit(1.0)
    rng = np.random.default_rng(11)
    streams, days = 500, 8
    s, alarms = np.zeros(streams), 0
    for _ in range(days * WINDOWS_PER_DAY // 40):
        for z in rng.standard_normal((40, streams)):
            s = np.maximum(0.0, s + z - k)
            over = s > h
            alarms += int(over.sum())
            s[over] = 0.0
    assert 0.8 < alarms / (streams * days) < 1.25


def test_median_delay_of_known_shifts():
    rng = np.random.default_rng(0)
    # A step of 50 sigma from window 3 on: any threshold between noise and 50 alarms exactly at window 3.
    step = np.zeros((20, HORIZON_WINDOWS))
    step[:, 2:] = 50.0
    assert median_delay(step, rng, draws=20, limit=6.0, k=None) == 3.0
    assert median_delay(step, rng, draws=20, limit=cusum_limit(1.0), k=1.0) == 3.0
    # No shift at all: no alarm within the horizon (reported one past it).
    assert median_delay(np.zeros((20, HORIZON_WINDOWS)), rng, draws=20, limit=6.0, k=None) == HORIZON_WINDOWS + 1


def test_bound_of_a_strong_early_wear_is_short_and_of_a_slow_one_long():
    fast = bound(_labels((5_000, 5_000 + 239_000, "vibration_x4.00")), window_ms=10_000, interval_ms=1000)
    slow = bound(_labels((5_000, 5_000 + 599_000, "vibration_x2.50")), window_ms=10_000, interval_ms=1000)
    assert fast["median_delay_windows_window"] < slow["median_delay_windows_window"]
    assert fast["threshold_for_median_3_windows"] > slow["threshold_for_median_3_windows"]


def test_effect_offset_is_where_the_simulated_wear_reaches_plus_five_percent():
    # 300 readings of 1 s: the simulator's progress is elapsed / 300 s.
    labels = _labels((0, 299_000, "vibration_x3.00"), (0, 299_000, "vibration_x1.04"))
    offsets = effect_offsets_s(labels, interval_ms=1000)
    factor, _ = bearing_wear_signature(3.0, offsets[0] / 300.0)
    assert float(factor) == pytest.approx(1.05, rel=1e-12)
    assert offsets[1] == 300.0  # a wear to x1.04 never gets to +5 %: the event's end


def test_bound_measures_from_the_plus_five_percent_point():
    # A huge wear is caught in its onset window for sure: the alarm is at that window's end, 10 - 4.5 s after
    # onset; the +5 % point comes (0.05 / 999)^(2/3) x 300 s after onset.
    start = 1_000_000_000 + 4_500
    result = bound(_labels((start, start + 299_000, "vibration_x1000")), window_ms=10_000, interval_ms=1000)
    assert result["median_delay_windows_window"] == 1.0
    effect_s = (0.05 / 999) ** (2 / 3) * 300
    assert result["median_effect_s"] == round(effect_s, 1)
    assert result["median_delay_s_from_effect_window"] == pytest.approx(5.5 - effect_s, abs=0.05)
    assert result["median_delay_windows_from_effect_window"] == 1.0
