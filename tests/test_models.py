"""Anomaly models: detectors, specs, FleetModels (order, sharding, pickling), evaluation, the replay tool."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.anomaly_logic import AnomalyLogic
from models.evaluation import evaluate
from models.fleet_models import FleetModels
from models.robust_zscore import RobustZScore
from models.spec import load_model_specs, parse_grid
from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
from plantpulse.settings import PACKAGED_MODELS_FILE, Settings
from tests.processes import PLANTPULSE, flow_env

W = 10_000
T0 = 1_764_000_000_000


def windows(machines: int, count: int, *, seed: int = 0, shift_from: int | None = None, shifted: tuple = ()) -> pa.Table:
    """Window-stats rows of running machines with noisy steady signals; `shifted` machines overheat
    (temperature +4 degC per window) from window `shift_from` on."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        for m in range(machines):
            machine = f"M{m:03d}"
            hot = shift_from is not None and machine in shifted and k >= shift_from
            temperature = 60 + m + rng.normal(0, 0.2) + (4.0 * (k - shift_from + 1) if hot else 0.0)
            row = {f.name: 0 for f in WINDOW_STATS_ARROW_SCHEMA}
            row.update(machine_id=machine, machine_type="pump", window_start=T0 + k * W, window_end=T0 + (k + 1) * W,
                       readings=10, first_ts=T0 + k * W, last_ts=T0 + k * W + 9000, status_last="running",
                       secs_running=10.0, temperature_mean=temperature, pressure_mean=5 + rng.normal(0, 0.02),
                       pressure_min=4.9 + rng.normal(0, 0.02), vibration_mean=2 + rng.normal(0, 0.03),
                       vibration_std=0.1 + abs(rng.normal(0, 0.01)), rpm_mean=2900 + rng.normal(0, 5),
                       power_mean=30 + rng.normal(0, 0.3), emitted_at=T0)
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=WINDOW_STATS_ARROW_SCHEMA)


def ms(series) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Epoch milliseconds of a pandas timestamp column (whatever its unit)."""
    return np.array([int(t.timestamp() * 1000) for t in series])


def specs():
    return load_model_specs(PACKAGED_MODELS_FILE)


def test_robust_zscore_scores_a_shift_high_and_steady_input_low() -> None:
    detector = RobustZScore(n_features=2, alpha=0.05, min_deviation=0.01)
    detector.grow(2)
    rng = np.random.default_rng(1)
    machines = np.array([0, 1])
    for _ in range(200):
        detector.learn(machines, np.column_stack([rng.normal(10, 0.1, 2), rng.normal(5, 0.05, 2)]))
    steady, _ = detector.score(machines, np.array([[10.05, 5.0], [9.95, 5.02]]))
    shifted, z = detector.score(machines, np.array([[10.0, 5.0], [12.0, 5.0]]))
    assert steady.max() < 3 and shifted[0] < 3 and shifted[1] > 10
    assert z[1].argmax() == 0, "the contribution names the feature that moved"
    clone = pickle.loads(pickle.dumps(detector))
    x = np.array([[10.3, 5.1], [9.7, 4.9]])
    detector.learn(machines, x)
    clone.learn(machines, x)
    assert np.array_equal(detector.score(machines, x)[0], clone.score(machines, x)[0])


def test_spec_overrides_grid_and_errors(tmp_path: Path) -> None:
    base = specs()
    changed = base.with_overrides({"pump.threshold.floor": "12", "default.warmup_windows": "5"})
    assert changed.for_type("pump").threshold_floor == 12.0 and changed.for_type("cnc").warmup_windows == 5
    assert base.for_type("pump").threshold_floor == base.default.threshold_floor, "overrides must not leak"
    assert parse_grid(["a=1,2", "b=x"]) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]
    with pytest.raises(ValueError, match="unknown key 'threshold.flor'"):
        base.with_overrides({"default.threshold.flor": "3"})
    with pytest.raises(ValueError, match="detector 'forest'"):
        base.with_overrides({"default.detector": "forest"})
    with pytest.raises(ValueError, match="--grid 'a'"):
        parse_grid(["a"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[pump]\nalpha = 0.1\n")
    with pytest.raises(ValueError, match="needs a \\[default\\] table"):
        load_model_specs(bad)


@pytest.mark.parametrize("detector", ["robust_zscore", "half_space_trees"])
def test_fleet_models_alert_on_drift_and_not_on_steady_machines(detector: str) -> None:
    model_specs = specs().with_overrides({"default.detector": detector, "default.hst_window_size": "10"})
    models = FleetModels(model_specs)
    table = windows(6, 60, shift_from=45, shifted=("M002",))
    result = models.score(table, now_ms=T0)
    scores = result.scores.to_pandas()
    assert len(scores) == table.num_rows
    alerted = set(scores[scores.alert_raised].machine_id)
    if detector == "robust_zscore":
        assert alerted == {"M002"}
        first = ms(scores[scores.alert_raised].window_start).min()
        assert (first - (T0 + 45 * W)) // W <= 3, "detected within 3 windows of the onset"
        (alert,) = result.alerts.to_pylist()
        assert alert["kind"] == "anomaly" and alert["sensor"] == "temperature" and alert["alert_id"].startswith("M002/anomaly/")
        assert json.loads(scores[scores.alert_raised].top_features.iloc[0])[0][0].startswith("temperature")
    else:  # Half-Space Trees separate less sharply: the drifting machine must stand out in score
        after = ms(scores.window_start) >= T0 + 50 * W
        drifting = scores.machine_id == "M002"
        assert scores[after & drifting].score.max() > scores[after & ~drifting].score.max()
    assert not scores[ms(scores.window_start) < T0 + 10 * W].alert_raised.any(), "no alert during warm-up"


def test_fleet_models_do_not_depend_on_sharding_batching_or_restarts() -> None:
    table = windows(8, 50, seed=3, shift_from=35, shifted=("M001", "M006"))
    whole = FleetModels(specs()).score(table, now_ms=T0).scores
    # Two shards, each fed in three batches, one of them pickled and restored between batches.
    shard_a, shard_b = FleetModels(specs()), FleetModels(specs())
    parts = []
    for k, batch in enumerate(np.array_split(np.arange(table.num_rows), 3)):
        chunk = table.take(pa.array(batch))
        even = pa.compute.is_in(chunk["machine_id"], pa.array([f"M{m:03d}" for m in range(0, 8, 2)]))
        parts.append(shard_a.score(chunk.filter(even), now_ms=T0).scores)
        parts.append(shard_b.score(chunk.filter(pa.compute.invert(even)), now_ms=T0).scores)
        if k == 0:
            logic = AnomalyLogic.restore(AnomalyLogic(shard_a).snapshot(), lambda: FleetModels(specs()))
            shard_a = logic.models
    split = pa.concat_tables(parts)
    key = [("machine_id", "ascending"), ("window_start", "ascending")]
    assert split.sort_by(key).equals(whole.sort_by(key))


def test_evaluation_against_hand_counted_metrics() -> None:
    def t(ms: int):
        return pa.scalar(ms, pa.int64()).cast(pa.timestamp("ms", "UTC")).as_py()

    rows = []
    for machine, alert_windows in (("A", {3, 4, 20}), ("B", {7}), ("C", set())):
        for k in range(30):
            rows.append({"machine_id": machine, "window_start": t(k * W), "window_end": t((k + 1) * W),
                         "alert_raised": k in alert_windows, "warming_up": k < 5})
    scores = pa.Table.from_pylist(rows)
    labels = pa.table({"machine_id": ["A", "B", "C"], "fault": ["leak", "leak", "leak"],
                       "start_ts": [25_000, 100_000, 50_000], "end_ts": [60_000, 150_000, 90_000]})
    result = evaluate(scores, labels, window_ms=W)
    (row,) = result.by_fault
    # A: alerts at windows 3 and 4 fall in [25 s, 60 s]; window 20 is a false alarm. B: window 7 (70-80 s)
    # is before its event (100 s) and more than 3 windows before... it ends at 80 s <= 100 s: false alarm.
    # C: missed. So 1 of 3 events detected; 2 matching alerts, 2 false alarms.
    assert (row["events"], row["detected"]) == (3, 1)
    assert row["recall"] == round(1 / 3, 4) and row["precision"] == 0.5
    assert row["f1"] == round(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3), 4)
    assert row["median_delay_s"] == (40_000 - 25_000) / 1000 and row["median_delay_windows"] == 2.0
    assert result.false_alarms == 2
    assert result.machine_days == pytest.approx(3 * 25 * 10 / 86_400)


def test_replay_cli_on_a_labelled_csv(tmp_path: Path) -> None:
    """A small labelled CSV through `plantpulse replay`; metrics recomputed here from the scores it wrote."""
    rng = np.random.default_rng(5)
    lines = ["machine_id,ts,temperature,pressure,vibration,rpm,power,machine_type,label"]
    onset = 900  # seconds
    for second in range(1500):
        for m in range(4):
            hot = m == 1 and onset <= second < onset + 300
            temperature = 60 + m + rng.normal(0, 0.15) + (0.4 * (second - onset) if hot else 0)
            lines.append(f"M{m},{T0 + second * 1000},{temperature:.3f},{5 + rng.normal(0, 0.02):.3f},"
                         f"{2 + rng.normal(0, 0.05):.3f},{2900 + rng.normal(0, 5):.1f},{30 + rng.normal(0, 0.3):.2f},pump,"
                         f"{'overheating' if hot else ''}")
    source = tmp_path / "labelled.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "report"
    done = subprocess.run([*PLANTPULSE, "replay", str(source), "--out", str(out), "--grid", "default.threshold.floor=8,12"],
                          env=flow_env(Settings(data_dir=tmp_path), tmp_path), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "leaderboard.md").exists() and (out / "run-01" / "report.md").exists()
    assert list((out / "run-01").glob("machine-*.png"))
    scores = pq.read_table(out / "run-01" / "scores.parquet").to_pandas()
    assert len(scores) == 4 * 150  # one row per machine and 10 s window
    metrics = json.loads((out / "run-01" / "metrics.json").read_text())
    alerts = scores[scores.alert_raised]
    start, end = T0 + onset * 1000, T0 + (onset + 299) * 1000
    ws = pd.Series(ms(alerts.window_start), index=alerts.index)
    matching = alerts[(alerts.machine_id == "M1") & (ws + W > start) & (ws <= end + 3 * W)]
    false_alarms = len(alerts) - len(matching)
    assert metrics["false_alarms"] == false_alarms
    (fault,) = metrics["by_fault"]
    assert fault["events"] == 1 and fault["detected"] == int(len(matching) > 0) == 1
    assert fault["median_delay_s"] == (ws[matching.index].min() + W - start) / 1000
    assert fault["precision"] == round(len(matching) / (len(matching) + false_alarms), 4)
