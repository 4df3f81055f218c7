"""The replay tool end to end on a labelled CSV (models themselves: tests/test_models_*.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.spec import load_model_specs
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
            row = {f.name: [] if pa.types.is_map(f.type) else 0 for f in WINDOW_STATS_ARROW_SCHEMA}
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
