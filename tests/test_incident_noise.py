"""`bench.incident_noise`'s counting on a tiny hand-made run: alert rows, incident versions and fault labels."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bench.incident_noise import MATCH_AFTER_MS, newest_versions, summarise

T = "threshold"
A = "anomaly"
S = "sensor"


def _alerts() -> pa.Table:
    rows = ([(T, "overheat_critical")] * 5 + [(T, "pressure_loss_critical")] * 3
            + [(A, "anomaly")] * 4  # anomaly alerts: M1 twice, M3 and M5 once (machines do not matter here)
            + [(S, "sensor_spike")])  # M4's spiking sensor
    return pa.table({"kind": [k for k, _ in rows], "rule_id": [r for _, r in rows]})


def _incident(machine: str, rule: str, kind: str, first: int, last: int, versions: list[tuple[str, int, str | None]]):
    """Rows of one incident: (transition, detections so far, resolved_reason) per version."""
    return [{"incident_id": f"{machine}/{rule}/{first}", "version": v, "transition": transition, "machine_id": machine,
             "rule_id": rule, "kind": kind, "first_seen_ts": first, "last_seen_ts": last if v > 1 else first,
             "detections": detections, "resolved_reason": reason}
            for v, (transition, detections, reason) in enumerate(versions, start=1)]


def _states() -> list[dict]:
    rows = [
        # A: M1 overheating, 5 detection windows over 50 s, resolved quiet
        *_incident("M1", "overheat_critical", T, 10_000, 60_000,
                   [("opened", 1, None), *[("updated", d, None) for d in range(2, 6)], ("resolved", 5, "quiet")]),
        # B: M2 pressure, 3 windows over 20 s, still open when the input ends
        *_incident("M2", "pressure_loss_critical", T, 100_000, 120_000,
                   [("opened", 1, None), ("updated", 2, None), ("updated", 3, None)]),
        # C: M1 anomaly over 80 s, 9 windows, escalated once
        *_incident("M1", "anomaly", A, 20_000, 100_000,
                   [("opened", 1, None), ("escalated", 4, None), ("updated", 9, None), ("resolved", 9, "quiet")]),
        # D: M3 anomaly, one window, no fault on M3
        *_incident("M3", "anomaly", A, 500_000, 500_000, [("opened", 1, None), ("resolved", 1, "quiet")]),
        # E: M5 anomaly first seen exactly MATCH_AFTER_MS after its stuck sensor ended: still that episode's
        *_incident("M5", "anomaly", A, 100_000 + MATCH_AFTER_MS, 170_000,
                   [("opened", 1, None), ("updated", 2, None), ("resolved", 2, "quiet")]),
        # F: M4's spiking sensor, one window: an instrument incident, not a machine fault
        *_incident("M4", "sensor_spike", S, 500, 500, [("opened", 1, None), ("resolved", 1, "quiet")]),
    ]
    return rows[::-1]  # emission order must not matter


def _labels() -> pa.Table:
    return pa.Table.from_pylist([
        {"machine_id": "M1", "fault": "overheating", "start_ts": 5_000, "end_ts": 70_000},  # A and C
        {"machine_id": "M1", "fault": "overheating", "start_ts": 200_000, "end_ts": 250_000},  # no incident
        {"machine_id": "M2", "fault": "pressure_leak", "start_ts": 90_000, "end_ts": 130_000},  # B
        {"machine_id": "M4", "fault": "spike", "start_ts": 0, "end_ts": 1_000},  # F
        {"machine_id": "M5", "fault": "stuck_sensor", "start_ts": 40_000, "end_ts": 100_000},  # E
    ])


EXPECTED = {
    "raw_alerts": 13,
    "incidents": 6,
    "raw_alerts_per_incident": 2.17,  # 13 / 6
    # durations 0, 0, 10, 20, 50, 80 s: median (10 + 20) / 2, p90 at rank 4.5 -> 50 + 0.5 * 30
    "incident_duration_s": {"median": 15.0, "p90": 65.0, "max": 80.0},
    # detections 1, 1, 2, 3, 5, 9: median (2 + 3) / 2, p90 5 + 0.5 * 4
    "detections_per_incident": {"median": 2.5, "p90": 7.0, "max": 9.0},
    "by_kind": {
        T: {"raw_alerts": 8, "incidents": 2, "raw_alerts_per_incident": 4.0, "resolved": {"quiet": 1},
            "open_at_end": 1, "escalated": 0,
            "duration_s": {"median": 35.0, "p90": 47.0, "max": 50.0},  # 20, 50 s
            "detections": {"median": 4.0, "p90": 4.8, "max": 5.0},  # 3, 5
            "detections_total": 8,
            "by_rule": {"overheat_critical": {"raw_alerts": 5, "incidents": 1, "raw_alerts_per_incident": 5.0},
                        "pressure_loss_critical": {"raw_alerts": 3, "incidents": 1, "raw_alerts_per_incident": 3.0}}},
        A: {"raw_alerts": 4, "incidents": 3, "raw_alerts_per_incident": 1.33, "resolved": {"quiet": 3},
            "open_at_end": 0, "escalated": 1,
            "duration_s": {"median": 10.0, "p90": 66.0, "max": 80.0},  # 0, 10, 80 s: rank 1.8 -> 10 + 0.8 * 70
            "detections": {"median": 2.0, "p90": 7.6, "max": 9.0},  # 1, 2, 9: 2 + 0.8 * 7
            "detections_total": 12, "anomalous_windows": 12, "anomalous_windows_per_incident": 4.0},
        S: {"raw_alerts": 1, "incidents": 1, "raw_alerts_per_incident": 1.0, "resolved": {"quiet": 1},
            "open_at_end": 0, "escalated": 0, "duration_s": {"median": 0.0, "p90": 0.0, "max": 0.0},
            "detections": {"median": 1.0, "p90": 1.0, "max": 1.0}, "detections_total": 1},
    },
    "faults": {
        "match_after_ms": MATCH_AFTER_MS,
        "episodes": 5,
        "machines_with_faults": 4,
        "by_fault": {
            "overheating": {"episodes": 2, "with_incident": 1, "incidents": {T: 1, A: 1, S: 0},
                            "incidents_per_episode_with_one": 2.0},
            "pressure_leak": {"episodes": 1, "with_incident": 1, "incidents": {T: 1, A: 0, S: 0},
                              "incidents_per_episode_with_one": 1.0},
            "stuck_sensor": {"episodes": 1, "with_incident": 1, "incidents": {T: 0, A: 1, S: 0},
                             "incidents_per_episode_with_one": 1.0},
            "spike": {"episodes": 1, "with_incident": 1, "incidents": {T: 0, A: 0, S: 1},
                      "incidents_per_episode_with_one": 1.0},
        },
        "without_fault": {T: 0, A: 1, S: 0},
    },
}


def test_counts_of_a_hand_made_run() -> None:
    assert summarise(_alerts(), pa.Table.from_pylist(_states()), _labels(), anomalous_windows=12) == EXPECTED


def test_arrow_timestamps_count_as_epoch_milliseconds() -> None:
    states = pa.Table.from_pylist(_states())
    for column in ("first_seen_ts", "last_seen_ts"):
        i = states.schema.get_field_index(column)
        states = states.set_column(i, column, states[column].cast(pa.timestamp("ms", tz="UTC")))
    assert summarise(_alerts(), states, _labels(), anomalous_windows=12) == EXPECTED


def test_newest_version_per_incident() -> None:
    newest = newest_versions(pa.Table.from_pylist(_states()))
    assert sorted(zip(newest["incident_id"].to_pylist(), newest["version"].to_pylist())) == [
        ("M1/anomaly/20000", 4), ("M1/overheat_critical/10000", 6), ("M2/pressure_loss_critical/100000", 3),
        ("M3/anomaly/500000", 2), ("M4/sensor_spike/500", 2), ("M5/anomaly/160000", 3)]


def test_an_incident_opened_before_the_run_is_refused() -> None:
    states = [row for row in _states() if not (row["incident_id"].startswith("M3/") and row["transition"] == "opened")]
    with pytest.raises(ValueError, match="6 incidents but 5 'opened'"):
        summarise(_alerts(), pa.Table.from_pylist(states), _labels(), anomalous_windows=12)
