"""The replay report: a plot panel per sensor at its own scale, the score panel, and the scoring it states."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.replay_plots import MAX_SENSOR_PANELS, SCORE_PANEL, plot_machine
from flows.replay_report import SCORINGS, write_leaderboard, write_run
from models.evaluation import evaluate
from plantpulse.schema import ANOMALY_SCORE_ARROW_SCHEMA, CHANNEL_STATS, WINDOW_STATS_ARROW_SCHEMA

W = 10_000
T0 = 1_764_000_000_000
WINDOWS = 60
WARMUP = 12
FAULT = (40, 46)  # windows [40, 46) of M1 are labelled (and score high)
CHANNELS = {"motor_current": 250.0, "flow_rate": 32.0}  # name -> level; scale 1 % of the level


def tables(extra_channels: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Window stats, scores and labels of machines M1 and M2: temperature ~70 degC and vibration ~0.002 (very
    different scales), no pressure at all, two extra channels (plus `extra_channels` more on M1)."""
    rng = np.random.default_rng(7)
    stats, scores = [], []
    channels = dict(CHANNELS) | {f"extra_{i:02d}": 10.0 * (i + 1) for i in range(extra_channels)}
    for machine in ("M1", "M2"):
        for k in range(WINDOWS):
            start = T0 + k * W
            row: dict = {f.name: None if f.nullable else 0 for f in WINDOW_STATS_ARROW_SCHEMA}  # no value at all
            values = {"temperature": 70 + rng.normal(0, 0.5), "vibration": 0.002 + rng.normal(0, 0.0001)}
            for sensor, level in values.items():
                spread = abs(level) * 0.01
                row |= {f"{sensor}_mean": level, f"{sensor}_min": level - spread, f"{sensor}_max": level + spread,
                        f"{sensor}_count": 10}
            mine = channels if machine == "M1" else CHANNELS
            means = {c: level * (1 + rng.normal(0, 0.005)) for c, level in mine.items()}
            per_stat: dict[str, dict] = {
                "count": {c: 10 for c in mine}, "mean": means, "last": means,
                **{stat: {c: v * factor for c, v in means.items()} for stat, factor in
                   (("min", 0.99), ("max", 1.01), ("std", 0.003))},
            }
            row |= {f"channel_{stat}": list(per_stat[stat].items()) for stat in CHANNEL_STATS}
            row |= dict(machine_id=machine, machine_type="pump", window_start=start, window_end=start + W,
                        readings=10, first_ts=start, last_ts=start + 9000, status_last="running", emitted_at=start)
            stats.append(row)
            faulty = machine == "M1" and FAULT[0] <= k < FAULT[1]
            score = (40.0 if faulty else 1.0) + abs(rng.normal(0, 0.3))
            scores.append(dict(machine_id=machine, machine_type="pump", window_start=start, window_end=start + W,
                               model="default", detector="robust_zscore", score=score,
                               threshold=None if k < WARMUP else 3.0, warming_up=k < WARMUP,
                               is_anomaly=k >= WARMUP and score > 3.0, alert_raised=faulty and k == FAULT[0] + 1,
                               top_features="[]", scored_at=start + W))
    labels = pa.table({"machine_id": ["M1"], "fault": ["bearing_wear"], "start_ts": [T0 + FAULT[0] * W],
                       "end_ts": [T0 + FAULT[1] * W]})
    return (pa.Table.from_pylist(stats, schema=WINDOW_STATS_ARROW_SCHEMA),
            pa.Table.from_pylist(scores, schema=ANOMALY_SCORE_ARROW_SCHEMA), labels)


SKAB = {"f1": 0.6123, "far": 0.348, "mar": 0.2, "tp": 120, "fp": 40, "fn": 30, "tn": 900,
        "per_file": [{"file": "valve2/1.csv", "f1": 0.5}, {"file": "other/3.csv", "f1": 0.7}]}


def test_each_sensor_gets_its_own_panel_at_its_own_scale(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    layout = plot_machine(tmp_path / "m1.png", "M1", scores, stats, labels)
    assert (tmp_path / "m1.png").stat().st_size > 10_000
    # pressure has no values: no panel; the channels follow the core sensors; the score panel is last
    assert layout.panels == ["temperature", "vibration", *CHANNELS, SCORE_PANEL] and layout.left_out == []
    m1 = stats.filter(pa.compute.equal(stats["machine_id"], "M1"))
    for sensor in ("temperature", "vibration"):
        low, high = layout.ylim(sensor)
        own_min, own_max = min(m1[f"{sensor}_min"].to_pylist()), max(m1[f"{sensor}_max"].to_pylist())
        assert low <= own_min and own_max <= high
        assert high - low < 3 * (own_max - own_min), (sensor, low, high)  # its own scale, no other's
    low, high = layout.ylim("vibration")
    assert high < 0.01  # not squashed next to temperature's 70
    for channel, level in CHANNELS.items():
        low, high = layout.ylim(channel)
        assert low < level < high and high - low < 0.2 * level
    low, high = layout.ylim(SCORE_PANEL)
    assert low <= 1.0 and high >= 40.0  # the fault's scores are on the score panel
    assert layout.score_scale == "symlog"  # scores of 40 over a threshold of 3: the threshold stays readable


def test_the_panel_count_is_capped_and_the_rest_named(tmp_path: Path) -> None:
    stats, scores, labels = tables(extra_channels=MAX_SENSOR_PANELS)
    layout = plot_machine(tmp_path / "m1.png", "M1", scores, stats, labels)
    sensors = ["temperature", "vibration", *CHANNELS, *(f"extra_{i:02d}" for i in range(MAX_SENSOR_PANELS))]
    assert layout.panels == [*sensors[:MAX_SENSOR_PANELS], SCORE_PANEL]
    assert layout.left_out == sensors[MAX_SENSOR_PANELS:]
    evaluation = evaluate(scores, labels, window_ms=W)
    write_run(tmp_path / "run-01", {}, scores, stats, labels, evaluation, 1200, 0.5)
    report = (tmp_path / "run-01" / "report.md").read_text()
    assert f"left out (panel cap {MAX_SENSOR_PANELS}): {', '.join(sensors[MAX_SENSOR_PANELS:])}" in report


def test_plots_are_deterministic(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    for name in ("a.png", "b.png"):
        plot_machine(tmp_path / name, "M1", scores, stats, labels)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_write_run_states_the_scoring_and_its_benchmark(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    evaluation = evaluate(scores, labels, window_ms=W)
    row = write_run(tmp_path / "run-01", {"default.threshold.floor": "8"}, scores, stats, labels, evaluation,
                    1200, 0.5, scoring="skab", benchmark=SKAB)
    run = tmp_path / "run-01"
    assert sorted(p.name for p in run.glob("machine-*.png")) == ["machine-M1.png", "machine-M2.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["scoring"] == "skab" and metrics["benchmark"] == SKAB
    assert metrics["by_fault"][0]["fault"] == "bearing_wear"  # the event-level summary stays
    first = (run / "report.md").read_text().splitlines()[:4]
    assert first[2].startswith("Scoring: **skab**") and first[3] == SCORINGS["skab"]
    report = (run / "report.md").read_text()
    assert "| far | 0.348 (34.8 %) |" in report and "| tp | 120 |" in report and "| f1 | 0.6123 (61.2 %) |" in report
    assert "| valve2/1.csv | 0.5 (50.0 %) |" in report  # a list of rows becomes a table of its own
    assert "## Event-level metrics (for reference)" in report
    assert row["scoring"] == "skab" and (row["f1"], row["far"], row["mar"]) == (0.6123, 0.348, 0.2)
    assert row["mean_f1"] is not None


def test_events_scoring_is_the_default_and_unchanged(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    evaluation = evaluate(scores, labels, window_ms=W)
    row = write_run(tmp_path / "run-01", {}, scores, stats, labels, evaluation, 1200, 0.0)
    metrics = json.loads((tmp_path / "run-01" / "metrics.json").read_text())
    assert metrics["scoring"] == "events" and metrics["benchmark"] is None and metrics["readings_per_s"] is None
    report = (tmp_path / "run-01" / "report.md").read_text()
    assert report.splitlines()[2].startswith("Scoring: **events**") and "## Benchmark" not in report
    assert "| bearing_wear | 1 | 1 |" in report
    assert "scoring" not in row and set(row) >= {"run", "alerts", "mean_f1", "false_alarms_per_machine_day"}


def test_nab_report_and_a_benchmark_without_labels(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    nab = {"raw_score": np.float64(-2.0), "normalized_score": float("nan"), "tp": np.int64(0), "fp": 3, "fn": 2}
    row = write_run(tmp_path / "run-01", {}, scores, stats, None, None, 1200, 0.5, scoring="nab", benchmark=nab)
    metrics = json.loads((tmp_path / "run-01" / "metrics.json").read_text())
    assert metrics["benchmark"] == {"raw_score": -2.0, "normalized_score": None, "tp": 0, "fp": 3, "fn": 2}
    report = (tmp_path / "run-01" / "report.md").read_text()
    assert "Scoring: **nab**" in report and "| raw_score | -2.0 |" in report and "| normalized_score | - |" in report
    assert row["raw_score"] == -2.0 and list((tmp_path / "run-01").glob("machine-*.png"))
    write_run(tmp_path / "run-02", {}, scores, stats, None, None, 1200, 0.5, scoring="skab", benchmark=None)
    assert "Not computed (no labels)." in (tmp_path / "run-02" / "report.md").read_text()


def test_an_unknown_scoring_is_refused(tmp_path: Path) -> None:
    stats, scores, labels = tables()
    with pytest.raises(ValueError, match="scoring must be one of events, skab, nab, got 'f1'"):
        write_run(tmp_path / "run-01", {}, scores, stats, labels, None, 1200, 0.5, scoring="f1")


def test_leaderboard_ranks_by_the_benchmark_headline(tmp_path: Path) -> None:
    rows: list[dict] = [{"run": "run-01", "scoring": "skab", "f1": 0.6, "far": 0.3, "mar": 0.2, "mean_f1": 0.9},
            {"run": "run-02", "scoring": "skab", "f1": 0.7, "far": 0.4, "mar": 0.2, "mean_f1": 0.1},
            {"run": "run-03", "scoring": "skab", "f1": 0.7, "far": 0.2, "mar": 0.3, "mean_f1": 0.5},
            {"run": "run-04", "scoring": "skab", "f1": None, "far": None, "mar": None, "mean_f1": 1.0}]
    write_leaderboard(tmp_path, rows)
    with (tmp_path / "leaderboard.csv").open() as handle:
        assert [r["run"] for r in csv.DictReader(handle)] == ["run-03", "run-02", "run-01", "run-04"]
    assert "Scoring: skab; best first by f1 (higher is better)" in (tmp_path / "leaderboard.md").read_text()
    nab = [{"run": "run-01", "scoring": "nab", "raw_score": -2.0}, {"run": "run-02", "scoring": "nab", "raw_score": 1.1}]
    write_leaderboard(tmp_path, nab)
    assert (tmp_path / "leaderboard.md").read_text().index("run-02") < (tmp_path / "leaderboard.md").read_text().index(
        "run-01")
    events = [{"run": "run-01", "mean_f1": 0.5, "false_alarms_per_machine_day": 0.1},
              {"run": "run-02", "mean_f1": 0.9, "false_alarms_per_machine_day": 2.0}]
    write_leaderboard(tmp_path, events)
    text = (tmp_path / "leaderboard.md").read_text()
    assert text.startswith("# Replay leaderboard\n\n| run |") and text.index("run-02") < text.index("run-01")
