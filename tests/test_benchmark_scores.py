"""The benchmark scorers (`models.benchmark_scores`, also importable from `models.evaluation`) against cases
counted by hand: SKAB's point-wise protocol and NAB's standard-profile event score."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from models.evaluation import nab_score, point_predictions, skab_from_predictions, skab_score

H = 3_600_000  # one hour in ms
TS = pa.timestamp("ms", "UTC")


def windows_table(rows: list[tuple[str, int, int, bool]], *, alerts: bool = False) -> pa.Table:
    """Score rows from (machine, window_start ms, window_end ms, flag); flag is is_anomaly (or alert_raised)."""
    flags = [r[3] for r in rows]
    return pa.table({
        "machine_id": [r[0] for r in rows],
        "window_start": pa.array([r[1] for r in rows], pa.int64()).cast(TS),
        "window_end": pa.array([r[2] for r in rows], pa.int64()).cast(TS),
        "is_anomaly": [False] * len(rows) if alerts else flags,
        "alert_raised": flags if alerts else [False] * len(rows),
    })


def points_table(rows: list[tuple[str, int, bool]]) -> pa.Table:
    return pa.table({"machine_id": [r[0] for r in rows], "ts": pa.array([r[1] for r in rows], pa.int64()),
                     "label": [r[2] for r in rows]})


def test_point_predictions_take_the_window_that_contains_each_reading() -> None:
    scores = windows_table([("A", 0, 2000, False), ("A", 2000, 4000, True), ("A", 6000, 8000, True),
                            ("B", 0, 4000, True)])
    points = points_table([("A", 1999, False), ("A", 2000, False), ("A", 3999, False), ("A", 4000, False),
                           ("A", 5000, False), ("A", 6000, False), ("A", 8000, False), ("B", 100, False),
                           ("C", 100, False), ("A", -5, False)])
    # 1999: first window (normal); 2000 and 3999: the anomalous one; 4000, 5000: in a gap (no window) -> normal;
    # 6000: anomalous; 8000: past the last window; B: anomalous; C: no windows at all; -5: before any window.
    assert point_predictions(scores, points).tolist() == [False, True, True, False, False, True, False, True,
                                                          False, False]


def test_point_predictions_with_times_too_far_apart_to_pack() -> None:
    far = 4 * 10**18  # (machines + 2) x time span no longer fits an int64: matched by the times' ranks
    scores = windows_table([("A", 0, 10, True), ("B", far, far + 10, True), ("B", 0, 10, False)])
    points = points_table([("A", 5, False), ("B", far + 5, False), ("B", 5, False), ("A", far + 5, False)])
    assert point_predictions(scores, points).tolist() == [True, True, False, False]


def test_skab_protocol_counted_by_hand() -> None:
    # Windows of 2 s. A: [0,2) normal, [2,4) anomalous, [4,6) normal. B: [0,4) anomalous. C: no scored window.
    scores = windows_table([("A", 0, 2000, False), ("A", 2000, 4000, True), ("A", 4000, 6000, False),
                            ("B", 0, 4000, True)])
    # train_rows = 2: the first two readings of each machine IN TIME ORDER are not scored.
    # A: 0 s, 1 s train; 2 s label 0 predicted 1 -> FP; 3 s 1/1 -> TP; 4 s 1/0 -> FN; 5 s 0/0 -> TN.
    # B (rows out of order): 0 s and 1 s train (0 s is labelled and predicted: still not counted);
    #    2 s 1/1 -> TP; 3 s 1/1 -> TP.
    # C: 0 s, 1 s train; 2 s labelled, never predicted -> FN.
    points = points_table([
        ("A", 0, False), ("A", 1000, False), ("A", 2000, False), ("A", 3000, True), ("A", 4000, True),
        ("A", 5000, False),
        ("B", 3000, True), ("B", 0, True), ("B", 1000, False), ("B", 2000, True),
        ("C", 0, False), ("C", 1000, False), ("C", 2000, True),
    ])
    result = skab_score(scores, points, train_rows=2)
    assert (result.tp, result.fp, result.fn, result.tn) == (3, 1, 2, 1)
    assert result.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # 0.6667 = TP / (TP + (FP + FN) / 2)
    assert result.far == pytest.approx(1 / (1 + 1))  # FP / (FP + TN)
    assert result.mar == pytest.approx(2 / (2 + 3))  # FN / (FN + TP)
    assert result.scored_readings == 7 and result.machines == 3
    by = {m["machine_id"]: m for m in result.per_machine}
    assert by["B"] == {"machine_id": "B", "train": 2, "tp": 2, "fp": 0, "fn": 0, "tn": 0}
    summary = result.summary()
    assert (summary["protocol"], summary["f1"], summary["far"], summary["mar"]) == ("skab", 0.6667, 0.5, 0.4)


def test_skab_default_trains_on_the_first_400_readings_of_each_machine() -> None:
    # 410 readings, all labelled and predicted anomalous: only the last 10 are scored, all TP.
    points = points_table([("M", k * 1000, True) for k in range(410)])
    result = skab_from_predictions(points, np.ones(410, dtype=bool))
    assert (result.tp, result.fp, result.fn, result.tn, result.train_rows) == (10, 0, 0, 0, 400)
    assert (result.f1, result.mar) == (1.0, 0.0) and math.isnan(result.far)  # no negatives: FAR undefined
    assert result.summary()["far"] is None
    with pytest.raises(ValueError, match="3 predictions for 410"):
        skab_from_predictions(points, np.ones(3, dtype=bool))


def _nab_case(alert_rows: list[int], windows: list[tuple[int, int]], n: int = 100) -> tuple[pa.Table, ...]:
    """One hourly machine of `n` readings (one reading = one window); alerts on `alert_rows`; labelled
    windows given as (first row, last row), both included."""
    scores = windows_table([("M", i * H, (i + 1) * H, i in alert_rows) for i in range(n)], alerts=True)
    points = points_table([("M", i * H, any(a <= i <= b for a, b in windows)) for i in range(n)])
    labels = pa.table({"machine_id": ["M"] * len(windows), "fault": ["anomaly"] * len(windows),
                       "start_ts": [a * H for a, _ in windows], "end_ts": [b * H for _, b in windows]})
    return scores, points, labels


def test_nab_standard_profile_counted_by_hand() -> None:
    # 100 readings: probation = min(floor(0.15 x 100), 0.15 x 5000) = 15 rows (0-14), not scored.
    # Windows (rows): W0 20-29 (missed), W1 40-49 (w 10), W2 70-79 (w 10), W3 90-94 (w 5).
    # Scaled sigmoid S(y) = 2 / (1 + exp(5y)) - 1; S(-1) = 2 / (1 + e^-5) - 1 = 0.986614 (NAB's maxTP).
    # - row 5: in probation: ignored.
    # - row 16: FP before any window: S(3) = -1 -> -0.11.
    # - W0 no detection: -1.0 (A_fn).
    # - W1: rows 40 (its start) and 45: only the earliest counts: S(-(49-40+1)/10) / S(-1) = 1.0.
    # - row 55: FP after W1: position |49 - 55| / (10 - 1) = 0.666667;
    #   S = 2 / (1 + e^3.333333) - 1 = 2 / 29.031628 - 1 = -0.931110 -> x 0.11 = -0.102422.
    # - W2: row 75 (middle): position -(79 - 75 + 1) / 10 = -0.5; S = 2 / (1 + e^-2.5) - 1 = 0.848284;
    #   / 0.986614 = 0.859793.
    # - W3: row 94 (its end): position -(94 - 94 + 1) / 5 = -0.2; S = 2 / (1 + e^-1) - 1 = 0.462117;
    #   / 0.986614 = 0.468387.
    scores, points, labels = _nab_case([5, 16, 40, 45, 55, 75, 94], [(20, 29), (40, 49), (70, 79), (90, 94)])
    result = nab_score(scores, points, labels)
    raw = -0.11 - 1.0 + 1.0 - 0.102422 + 0.859793 + 0.468387
    assert result.raw == pytest.approx(raw, abs=2e-6)
    assert (result.tp, result.fp, result.fn) == (3, 2, 1)
    assert (result.null, result.perfect) == (-4.0, 4.0)  # null detector: -A_fn per window; perfect: A_tp per window
    assert result.normalised == pytest.approx(100 * (raw + 4) / 8, abs=1e-4)  # 63.947
    assert result.probation_rows == {"M": 15}
    detail = [(w["detections"], w["first_detection_ts"], w["score"]) for w in result.windows]
    assert detail == [(0, None, -1.0), (2, 40 * H, 1.0), (1, 75 * H, 0.8598), (1, 94 * H, 0.4684)]
    assert [fp["ts"] for fp in result.false_positives] == [16 * H, 55 * H]
    summary = result.summary()
    assert (summary["protocol"], summary["profile"], summary["raw_score"]) == ("nab", "standard", round(raw, 4))


def test_nab_no_detection_is_the_null_score_and_probation_windows_are_not_scored() -> None:
    # Window 2-5 lies in the probation (15 rows) with a detection at 3: neither scored nor counted in null,
    # but NAB's perfect score counts every labelled window. Window 50-59 missed.
    scores, points, labels = _nab_case([3], [(2, 5), (50, 59)])
    result = nab_score(scores, points, labels)
    assert (result.raw, result.null, result.perfect, result.tp, result.fp, result.fn) == (-1.0, -1.0, 2.0, 0, 0, 1)
    assert result.normalised == 0.0
    assert [w["scored"] for w in result.windows] == [False, True]


def test_nab_probation_is_capped_at_750_rows_and_windows_must_not_overlap() -> None:
    scores, points, labels = _nab_case([760], [(760, 769)], n=7267)  # the NAB ambient file's length
    result = nab_score(scores, points, labels)
    assert result.probation_rows == {"M": 750} and result.tp == 1 and result.raw == pytest.approx(1.0)
    scores, points, labels = _nab_case([], [(20, 29), (29, 35)])
    with pytest.raises(ValueError, match="overlap"):
        nab_score(scores, points, labels)
