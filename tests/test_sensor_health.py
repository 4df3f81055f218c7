"""Sensor faults are not machine faults (issue 15, item 7): `models.sensor_health` and its wiring in the flow.

Window rows are built here from raw readings with NumPy (mean, population std, min, max, last), independently
of the flow's window code; expectations are computed from the documented rules.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pyarrow as pa

from models.fleet_models import FleetModels
from models.sensor_health import SensorHealth
from models.spec import load_model_specs
from plantpulse.schema import CHANNEL_STATS, SENSORS, STATUSES, WINDOW_STATS_ARROW_SCHEMA
from plantpulse.settings import PACKAGED_MODELS_FILE
from tests.flowkit import batches_of, config, run_pipeline

W = 10_000


def window(i: int, readings: dict[str, np.ndarray | None], machine: str = "M1", status: str = "running") -> dict:
    """One WINDOW_STATS row of window `i` from per-sensor readings (None: not reported; NaN: null reading)."""
    n = max(len(v) for v in readings.values() if v is not None)
    row: dict = {"machine_id": machine, "machine_type": "pump", "window_start": i * W, "window_end": (i + 1) * W,
                 "readings": n, "first_ts": i * W, "last_ts": i * W + (n - 1) * 1000, "last_seq": 0, "first_seq": 0,
                 "status_last": status, "emitted_at": 0}
    row |= {f"secs_{s}": 10.0 if s == status else 0.0 for s in STATUSES}
    channels: dict[str, dict] = {stat: {} for stat in CHANNEL_STATS}
    for name, values in readings.items():
        v = np.array([] if values is None else values, dtype=float)
        v = v[~np.isnan(v)]
        stats = ({"count": len(v), "mean": v.mean(), "min": v.min(), "max": v.max(), "std": v.std(), "last": v[-1]}
                 if len(v) else {"count": 0, "mean": None, "min": None, "max": None, "std": None, "last": None})
        if name in SENSORS:
            row |= {f"{name}_{stat}": value for stat, value in stats.items()}
        elif len(v):
            for stat, value in stats.items():
                channels[stat][name] = value
    for sensor in SENSORS:
        if sensor not in readings:
            row |= {f"{sensor}_count": 0} | {f"{sensor}_{s}": None for s in ("mean", "min", "max", "std", "last")}
    row |= {f"channel_{stat}": list(values.items()) or None for stat, values in channels.items()}
    return row


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=WINDOW_STATS_ARROW_SCHEMA)


def noisy(rng: np.random.Generator, level: float, scale: float, n: int = 10) -> np.ndarray:
    return level + scale * rng.standard_normal(n)


def healthy(rng: np.random.Generator, i: int, scale: float = 1.0, **extra: np.ndarray | None) -> dict:
    readings = {"temperature": noisy(rng, 60 * scale, 0.05 * scale), "pressure": noisy(rng, 5 * scale, 0.01 * scale),
                "vibration": noisy(rng, 2 * scale, 0.02 * scale)} | extra
    return window(i, readings)


def feed(health: SensorHealth, rows: list[dict]) -> list:
    return [health.check(table([row]), now_ms=0) for row in rows]


def test_stuck_sensor_flagged_from_the_window_its_run_becomes_improbable() -> None:
    rng, health = np.random.default_rng(1), SensorHealth()
    learned = 40
    rows = [healthy(rng, i) for i in range(learned)]
    feed(health, rows)
    # 40 varying windows, none constant. The prior 0.5 shrinks by the sensor's resolution (its smallest range
    # seen) over its mean range (a running mean, rate max(0.02, 1/n), over the settled windows 1..39):
    ranges = [r["temperature_max"] - r["temperature_min"] for r in rows]
    mean_range = ranges[1]
    for n, value in enumerate(ranges[2:], start=2):
        mean_range += max(0.02, 1 / n) * (value - mean_range)
    p0 = 0.5 * min(1.0, min(ranges) / mean_range) / (learned + 1)  # a second constant window: q = p0 (marginal)
    first = next(r for r in range(1, 10) if p0**r <= 1e-3)
    assert first == 2
    stuck = [healthy(rng, learned + k, temperature=np.full(10, 61.37)) for k in range(5)]
    verdicts = feed(health, stuck)
    flagged = [bool(v.faulty.get("temperature", [False])[0]) for v in verdicts]
    assert flagged == [k + 1 >= first for k in range(5)]
    alerts = [v.alerts for v in verdicts if v.alerts is not None]
    assert len(alerts) == 1, "one alert per episode; later windows are detections"
    alert = alerts[0].to_pylist()[0]
    assert (alert["rule_id"], alert["kind"], alert["sensor"], alert["severity"]) == (
        "sensor_stuck", "sensor", "temperature", "warning")
    assert "temperature" in alert["message"] and "61.37" in alert["message"]
    assert all(set(v.faulty) <= {"temperature"} for v in verdicts), "only the stuck sensor is faulty"


def test_dropout_of_a_reported_sensor_but_not_of_one_never_reported() -> None:
    rng, health = np.random.default_rng(2), SensorHealth()
    feed(health, [healthy(rng, i) for i in range(60)])
    assert 0.05 / 61 <= 1e-3  # dropout prior 0.05 after 60 reported windows: one null window is enough
    verdict = feed(health, [healthy(rng, 60, pressure=np.full(10, np.nan))])[0]
    assert verdict.faulty.keys() == {"pressure"} and verdict.alerts["rule_id"].to_pylist() == ["sensor_dropout"]
    # rpm and power were never reported by this machine, the channel "flow" neither: not faulty
    assert not any(set(v.faulty) & {"rpm", "power", "flow"} for v in feed(health, [healthy(rng, 61 + i) for i in range(5)]))


def test_spike_one_reading_far_off_the_others() -> None:
    rng, health = np.random.default_rng(3), SensorHealth()
    feed(health, [healthy(rng, i) for i in range(40)])
    vibration = noisy(rng, 2.0, 0.02)
    vibration[6] = 2.0 + 40 * 0.02  # 40 sigma: 5x the spike ratio of 8 the others' spread allows
    verdict = feed(health, [healthy(rng, 40, vibration=vibration)])[0]
    assert verdict.faulty.keys() == {"vibration"}
    assert verdict.alerts["rule_id"].to_pylist() == ["sensor_spike"]
    alert = verdict.alerts.to_pylist()[0]
    assert alert["value"] > alert["threshold"] == 8.0
    # a moderate excursion (5 sigma) is noise, not a spike
    vibration = noisy(rng, 2.0, 0.02)
    vibration[3] = 2.0 + 5 * 0.02
    assert not feed(health, [healthy(rng, 41, vibration=vibration)])[0].faulty


def test_healthy_noisy_windows_at_any_scale_are_not_flagged() -> None:
    for scale in (1e-3, 1.0, 1e3):
        rng, health = np.random.default_rng(4), SensorHealth()
        rows = []
        for i in range(400):
            drift = 1 + 0.05 * math.sin(i / 30)
            rows.append(window(i, {
                "temperature": noisy(rng, 60 * scale * drift, 0.05 * scale),
                "pressure": noisy(rng, 5 * scale * drift, 0.01 * scale),
                "power": noisy(rng, -30 * scale * drift, 0.3 * scale),  # scale-free: negative values too
                "flow": noisy(rng, 12 * scale * drift, 0.2 * scale),
            }))
        verdicts = [health.check(table(rows[i : i + 50]), now_ms=0) for i in range(0, 400, 50)]
        assert all(v.detections is None for v in verdicts), scale


def test_channels_are_judged_like_core_sensors() -> None:
    rng, health = np.random.default_rng(5), SensorHealth()
    feed(health, [healthy(rng, i, flow=noisy(rng, 12, 0.2)) for i in range(40)])
    verdicts = feed(health, [healthy(rng, 40 + k, flow=np.full(10, 12.5)) for k in range(3)])
    assert [bool(v.faulty.get("flow", [False])[0]) for v in verdicts] == [False, True, True]
    assert verdicts[1].alerts.to_pylist()[0]["sensor"] == "flow"


def test_pickle_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(6)
    rows = [healthy(rng, i) for i in range(30)] + [healthy(rng, 30 + k, pressure=np.full(10, 5.0)) for k in range(4)]
    health = SensorHealth()
    feed(health, rows[:25])
    restored = pickle.loads(pickle.dumps(health))
    for a, b in zip(feed(health, rows[25:]), feed(restored, rows[25:])):
        assert a.faulty.keys() == b.faulty.keys() and all((a.faulty[k] == b.faulty[k]).all() for k in a.faulty)
        assert (a.detections is None) == (b.detections is None)
        if a.detections is not None:
            assert a.detections.drop(["raised_at"]).equals(b.detections.drop(["raised_at"]))


def test_many_windows_per_call_equal_one_window_per_call() -> None:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(60):
        for machine in ("A", "B"):
            readings = {"temperature": noisy(rng, 60, 0.05), "pressure": noisy(rng, 5, 0.01)}
            if machine == "A" and i >= 50:
                readings["pressure"] = np.full(10, 5.5)
            rows.append(window(i, readings, machine))
    one, batched = SensorHealth(), SensorHealth()
    singles = [one.check(table([row]), 0).detections for row in rows]
    expected = pa.concat_tables([d for d in singles if d is not None])
    got = pa.concat_tables([d for d in (batched.check(table(rows[i : i + 37]), 0).detections
                                        for i in range(0, len(rows), 37)) if d is not None])
    assert got.sort_by([("machine_id", "ascending"), ("window_start", "ascending")]).equals(
        expected.sort_by([("machine_id", "ascending"), ("window_start", "ascending")]))
    assert set(expected["machine_id"].to_pylist()) == {"A"}


# -- the flow: a spiking sensor raises a `sensor` alert and incident, not an `anomaly` alert -------------------

def _messages(spike_at: int) -> list[bytes]:
    rng = np.random.default_rng(8)
    messages = []
    for t in range(spike_at + 120):
        reading = {"v": 1, "machine_id": "P1", "ts": 1_764_000_000_000 + t * 1000, "seq": t, "status": "running",
                   "temperature": round(60 + 0.05 * rng.standard_normal(), 2),
                   "pressure": round(6 * (1 + 0.004 * rng.standard_normal()), 3),
                   "vibration": round(2 * (1 + 0.01 * rng.standard_normal()), 3),
                   "rpm": round(2950 * (1 + 0.002 * rng.standard_normal()), 1),
                   "power": round(40 * (1 + 0.01 * rng.standard_normal()), 2)}
        if t == spike_at:
            reading["vibration"] = 35.0
        messages.append(json.dumps(reading).encode())
    return messages


def test_flow_spike_is_a_sensor_incident_not_an_anomaly() -> None:
    spike_at = 1205  # the 6th reading of window 120 of a steady machine
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    result = run_pipeline(batches_of(_messages(spike_at), 100),
                          config(rules=[], models=specs, machine_types={"P1": "pump"}, shards=2))
    # Before sensor health, the same windows scored by the models alone raised an anomaly alert on the spike.
    stats = pa.Table.from_pandas(result.window_stats.sort_values("window_start"), preserve_index=False)
    stats = pa.table({f.name: pa.nulls(stats.num_rows, f.type) if f.name.startswith("channel_")  # no channels here
                      else stats[f.name].cast(f.type) for f in WINDOW_STATS_ARROW_SCHEMA}, schema=WINDOW_STATS_ARROW_SCHEMA)
    alone = FleetModels(specs).score(stats, now_ms=0)
    spike_window = (1_764_000_000_000 + spike_at * 1000) // W * W
    assert alone.alerts is not None and spike_window in alone.alerts["window_start"].cast(pa.int64()).to_pylist()
    alerts = result.alerts
    assert sorted(zip(alerts["kind"], alerts["rule_id"], alerts["sensor"], alerts["window_start"])) == [
        ("sensor", "sensor_spike", "vibration", spike_window)]
    opened = result.incident_events[result.incident_events["transition"] == "opened"]
    assert list(zip(opened["kind"], opened["rule_id"], opened["incident_id"])) == [
        ("sensor", "sensor_spike", f"P1/sensor_spike/{spike_window}")]
    resolved = result.incident_events[result.incident_events["transition"] == "resolved"]
    assert list(resolved["resolved_reason"]) == ["quiet"], "it resolves after the quiet windows"


def test_sim_realism_counts_sensor_detections_per_nuisance_kind() -> None:
    from bench.sim_realism import LABEL_SCHEMA, sensor_detection

    labels = pa.Table.from_pylist([
        {"machine_id": "M1", "fault": "stuck_sensor", "start_ts": 5_000, "end_ts": 40_000, "detail": "stuck:rpm"},
        {"machine_id": "M1", "fault": "spike", "start_ts": 95_000, "end_ts": 95_000, "detail": "spike:rpm=3000"},
        {"machine_id": "M2", "fault": "dropout", "start_ts": 0, "end_ts": 30_000, "detail": "silent"},
        {"machine_id": "M2", "fault": "dropout", "start_ts": 50_000, "end_ts": 80_000, "detail": "null:power"},
    ], schema=LABEL_SCHEMA)
    rows = [("M1", "sensor_stuck", 20_000), ("M1", "sensor_stuck", 30_000), ("M1", "sensor_stuck", 60_000),
            ("M1", "sensor_spike", 90_000), ("M2", "sensor_spike", 90_000)]
    detections = pa.table({"machine_id": [r[0] for r in rows], "rule_id": [r[1] for r in rows],
                           "window_start": [r[2] for r in rows], "window_end": [r[2] + W for r in rows]})
    out = sensor_detection(detections, labels)
    # stuck: 1 event detected; windows 20 s and 30 s overlap it, 60 s does not (> end + one window)
    assert out["stuck_sensor"] | {} == {"events": 1, "detected": 1, "recall": 1.0, "faulty_windows": 3,
                                         "faulty_windows_matching": 2, "precision": round(2 / 3, 4)}
    assert (out["spike"]["recall"], out["spike"]["precision"]) == (1.0, 0.5)
    assert (out["dropout"]["events"], out["dropout"]["recall"], out["dropout"]["silent_events_not_judged"]) == (1, 0.0, 1)


def test_anomaly_step_snapshot_carries_sensor_health_and_reads_an_older_snapshot() -> None:
    from flows import snapshots
    from flows.anomaly_logic import AnomalyLogic

    specs = load_model_specs(PACKAGED_MODELS_FILE)
    rng = np.random.default_rng(9)
    logic = AnomalyLogic(FleetModels(specs))
    logic.analyse(table([healthy(rng, i) for i in range(30)]), now_ms=0)
    restored = AnomalyLogic.restore(logic.snapshot(), lambda: FleetModels(specs))
    assert restored.health.index == {"M1": 0} and restored.health.stuck.counts.sum() == logic.health.stuck.counts.sum()
    older = AnomalyLogic.restore(snapshots.pack(logic.models), lambda: FleetModels(specs))  # the models alone
    assert older.health.index == {} and older.models.where.keys() == {"M1"}
