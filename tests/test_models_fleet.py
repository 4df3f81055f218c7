"""FleetModels: alerts on drifts and not on steady or stopped machines; independent of sharding, batching
and restarts (pickle); outputs in the documented schemas."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.window_state import ShardWindows, WindowConfig
from models.features import FEATURES, MODES
from models.fleet_models import FleetModels
from models.spec import ModelSpecs, load_model_specs
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    ANOMALY_SCORE_ARROW_SCHEMA,
    SENSORS,
    STATUSES,
    WINDOW_STATS_ARROW_SCHEMA,
)
from plantpulse.settings import PACKAGED_MODELS_FILE
from sim import Simulator, build_fleet

W = 10_000
T0 = 1_764_000_000_000


def synthetic(machines: int, count: int, *, seed: int = 0, drift: dict[str, str] | None = None, onset: int = 60,
              stop: tuple[str, int, int] | None = None) -> pa.Table:
    """Window rows of running pumps with noisy steady signals. `drift`: machine -> "overheating" (+3 degC per
    window) or "bearing" (vibration x1.5 per window) from window `onset`; `stop`: (machine, from, to) stopped."""
    rng = np.random.default_rng(seed)
    drift = drift or {}
    rows = []
    for k in range(count):
        for m in range(machines):
            machine = f"M{m:03d}"
            hot = drift.get(machine) == "overheating" and k >= onset
            worn = drift.get(machine) == "bearing" and k >= onset
            stopped = stop is not None and stop[0] == machine and stop[1] <= k < stop[2]
            temperature = 60 + m + rng.normal(0, 0.05) + (3.0 * (k - onset + 1) if hot else 0.0)
            if stop is not None and stop[0] == machine and k >= stop[2]:  # warming up again after the stop
                temperature -= 0.3 * (stop[2] - stop[1]) * np.exp(-(k - stop[2]) / 30)
            vibration = (2 + rng.normal(0, 0.02)) * (1.5 ** min(k - onset + 1, 4) if worn else 1.0)
            row = {f.name: [] if pa.types.is_map(f.type) else 0 for f in WINDOW_STATS_ARROW_SCHEMA}
            row.update(
                machine_id=machine, machine_type="pump", window_start=T0 + k * W, window_end=T0 + (k + 1) * W,
                readings=10, first_ts=T0 + k * W, last_ts=T0 + k * W + 9000, status_last="running",
                secs_running=10.0, temperature_mean=temperature, temperature_min=temperature - 0.2,
                temperature_max=temperature + 0.2, temperature_last=temperature + rng.normal(0, 0.05),
                pressure_mean=5 + rng.normal(0, 0.01), pressure_min=4.95 + rng.normal(0, 0.01),
                pressure_max=5.05, pressure_last=5 + rng.normal(0, 0.01), vibration_mean=vibration,
                vibration_std=0.05, rpm_mean=2900 + rng.normal(0, 2), power_mean=30 + rng.normal(0, 0.1),
                emitted_at=T0,
            )
            if stopped:
                row.update(status_last="stopped", secs_running=0.0, secs_stopped=10.0, rpm_mean=0.0,
                           vibration_mean=0.1 + rng.normal(0, 0.001), power_mean=0.3,
                           temperature_mean=temperature - 0.3 * (k - stop[1]),
                           temperature_last=temperature - 0.3 * (k - stop[1]) - 0.15,
                           pressure_mean=2.0, pressure_min=2.0, pressure_max=2.0, pressure_last=2.0)
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=WINDOW_STATS_ARROW_SCHEMA)


@pytest.fixture(scope="module")
def simulated() -> pa.Table:
    """Window stats of a small simulated fleet with all fault kinds (real modes, starts and stops)."""
    fleet = build_fleet(40, 5)
    run = Simulator(fleet, seed=5, faults="all", fault_rate=0.3, imperfections={}, start_ts_ms=T0).run(1800)
    windows = ShardWindows(WindowConfig(window_ms=W), [], {m.machine_id: m.machine_type for m in fleet})
    ids = pa.array([m.machine_id for m in fleet])
    parts = []
    for batch in run:
        columns = {"machine_id": ids.take(pa.array(batch.machine)), "ts": pa.array(batch.ts), "seq": pa.array(batch.seq)}
        columns |= {s: pa.array(batch.sensors[:, i], from_pandas=True) for i, s in enumerate(SENSORS)}
        columns["status"] = pa.array(STATUSES).take(pa.array(batch.status.astype(np.int64)))
        windows.add(pa.table(columns), 0.0)
        out = windows.close(0.0)
        parts += [out.window_stats] if out.window_stats is not None else []
    parts.append(windows.close(0.0, flush_all=True).window_stats)
    return pa.concat_tables(parts)


def specs(**overrides: str) -> ModelSpecs:
    return load_model_specs(PACKAGED_MODELS_FILE).with_overrides(overrides)


def run(models: FleetModels, table: pa.Table, batch: int) -> tuple[pa.Table, pa.Table | None]:
    scores, alerts = [], []
    for offset in range(0, table.num_rows, batch):
        out = models.score(table.slice(offset, batch), now_ms=T0)
        scores.append(out.scores)
        alerts += [out.alerts] if out.alerts is not None else []
    return pa.concat_tables(scores), (pa.concat_tables(alerts) if alerts else None)


def sort_scores(table: pa.Table) -> pa.Table:
    return table.sort_by([("machine_id", "ascending"), ("window_start", "ascending")])


def test_drifts_raise_anomaly_alerts_and_steady_machines_stay_quiet() -> None:
    table = synthetic(8, 90, drift={"M001": "overheating", "M005": "bearing"}, onset=60)
    scores, alerts = run(FleetModels(specs()), table, batch=8)
    assert alerts is not None
    alerted = dict(zip(alerts["machine_id"].to_pylist(), alerts["sensor"].to_pylist()))
    assert alerted == {"M001": "temperature", "M005": "vibration"}
    first = {m: min(s for s, a in zip(alerts["window_start"].to_pylist(), alerts["machine_id"].to_pylist()) if a == m)
             for m in alerted}
    onset = table["window_start"][60 * 8].as_py()
    assert all((t - onset).total_seconds() <= 2 * W / 1000 for t in first.values()), "alerted within 3 windows"
    warming = scores.filter(pc.field("warming_up"))
    assert warming["threshold"].null_count == warming.num_rows and not pc.any(warming["alert_raised"]).as_py()


def test_a_stopped_machine_is_not_an_anomaly() -> None:
    table = synthetic(4, 120, stop=("M002", 60, 100))
    scores, alerts = run(FleetModels(specs()), table, batch=4)
    assert alerts is None
    assert not pc.any(scores["is_anomaly"]).as_py()


def test_a_new_run_of_a_mode_starts_its_trends_afresh() -> None:
    table = synthetic(4, 110, stop=("M002", 60, 100))
    models = FleetModels(specs())
    run(models, table.slice(0, 100 * 4), batch=4)  # windows 0-99: M002 ran until 59, then stood still
    name, local = models.where["M002"]
    trend = models.groups[name].detector.trend
    running = MODES.index("running")
    vibration = FEATURES.index("log_vibration_residual")
    assert trend[local, running, vibration] != 0, "60 running windows left a trend (so the check is not vacuous)"
    run(models, table.slice(100 * 4, 4), batch=4)  # window 100: running again
    assert (trend[local, running] == 0).all(), "the restart dropped what the windows before the stop summed"
    other = models.where["M001"][1]
    assert trend[other, running, vibration] != 0, "machines that kept running keep their trends"


def test_scores_do_not_depend_on_sharding_or_batching(simulated: pa.Table) -> None:
    whole, whole_alerts = run(FleetModels(specs()), simulated, batch=simulated.num_rows)
    assert whole_alerts is not None, "the fault fleet raises alerts (so the comparison is not vacuous)"
    odd = pc.is_in(simulated["machine_id"], pa.array(sorted(set(simulated["machine_id"].to_pylist()))[::2]))
    part_a, _ = run(FleetModels(specs()), simulated.filter(odd), batch=97)
    part_b, _ = run(FleetModels(specs()), simulated.filter(pc.invert(odd)), batch=1000)
    split = pa.concat_tables([part_a, part_b])
    assert sort_scores(split).equals(sort_scores(whole))


def test_pickle_mid_stream_continues_exactly(simulated: pa.Table) -> None:
    uninterrupted, _ = run(FleetModels(specs()), simulated, batch=500)
    models = FleetModels(specs())
    half = simulated.num_rows // 2
    first, _ = run(models, simulated.slice(0, half), batch=500)
    restored = pickle.loads(pickle.dumps(models))
    second, _ = run(restored, simulated.slice(half), batch=500)
    assert pa.concat_tables([first, second]).equals(uninterrupted)


def test_half_space_trees_spec_is_deterministic_and_order_free(simulated: pa.Table) -> None:
    hst = specs(**{"physics.detector": "half_space_trees", "physics.threshold.floor": "0.8"})
    subset = simulated.filter(pc.is_in(simulated["machine_id"], pa.array(["M00001", "M00002", "M00003"])))
    a, _ = run(FleetModels(hst), subset, batch=50)
    b, _ = run(FleetModels(hst), subset.filter(pc.equal(subset["machine_id"], "M00002")), batch=7)
    assert set(a["detector"].to_pylist()) == {"half_space_trees"}
    assert sort_scores(a.filter(pc.equal(a["machine_id"], "M00002"))).equals(sort_scores(b))
    assert pc.max(a["score"]).as_py() <= 1.0


def test_outputs_follow_the_documented_schemas(simulated: pa.Table) -> None:
    scores, alerts = run(FleetModels(specs()), simulated, batch=2000)
    assert scores.schema.equals(ANOMALY_SCORE_ARROW_SCHEMA) and scores.num_rows == simulated.num_rows
    assert alerts is not None and alerts.schema.equals(ALERT_ARROW_SCHEMA)
    row = alerts.slice(0, 1).to_pylist()[0]
    start_ms = int(row["window_start"].timestamp() * 1000)
    assert row["alert_id"] == f"{row['machine_id']}/anomaly/{start_ms}"
    assert (row["kind"], row["rule_id"], row["severity"], row["duration_s"]) == ("anomaly", "anomaly", "warning", 10.0)
    assert row["value"] > row["threshold"] and "top features" in row["message"]
    for text in scores["top_features"].to_pylist()[:500]:
        pairs = json.loads(text)
        assert [v for _, v in pairs] == sorted((v for _, v in pairs), reverse=True)
    assert set(scores["scored_at"].cast(pa.int64()).to_pylist()) == {T0}
