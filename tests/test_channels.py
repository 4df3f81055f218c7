"""Extra sensor channels: validated at decode, aggregated per window (one worker and a cluster), stored in
ClickHouse, and scored by the generic model spec at any scale, sampling rate and window length."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from connectors.clickhouse_schema import apply_schema
from flows.decode import BAD_CHANNELS, BatchDecoder
from flows.window_stats import ClosedReadings, Groups, window_stats_table
from models.fleet_models import FleetModels
from models.spec import ModelSpecs, load_model_specs
from plantpulse.schema import CHANNEL_STATS, MAX_CHANNELS, SENSORS, RawBatch
from plantpulse.settings import PACKAGED_MODELS_FILE
from tests.flowkit import batches_of, config, encode, run_pipeline

T0 = 1_700_000_003_000
NOW = 1_764_000_000_000


def reading(seq: int, **fields: object) -> dict:
    return {"machine_id": "M1", "ts": NOW + seq, "seq": seq, "status": "running", **fields}


def test_decode_keeps_valid_channels_and_dead_letters_each_kind_of_bad_one() -> None:
    bad = {
        "name not matching the pattern": {"Flow Rate": 1.0},
        "core sensor name": {"temperature": 20.0},
        "string value": {"flow": "high"},
        "too large": {"flow": 1e13},
        "too many": {f"c{i}": 1.0 for i in range(MAX_CHANNELS + 1)},
        "not an object": [1.0, 2.0],
    }
    messages = [encode(reading(0)), encode(reading(1, channels={"flow": 2.5, "acc_1": None})),
                encode(reading(2, channels={}))]
    messages += [encode(reading(10 + i, channels=value)) for i, value in enumerate(bad.values())]
    messages.append(b'{"machine_id": "M1", "ts": %d, "seq": 99, "status": "running", "channels": {"x": NaN}}' % NOW)
    out = BatchDecoder().decode(RawBatch("telemetry", 0, list(range(len(messages))), messages), now_ms=NOW)
    channels = out.readings["channels"].to_pylist()
    assert out.readings["seq"].to_pylist() == [0, 1, 2]
    assert channels[0] is None and channels[2] is None
    assert channels[1][0] == ("flow", 2.5) and channels[1][1][0] == "acc_1" and np.isnan(channels[1][1][1])
    letters = sorted(out.dead_letters, key=lambda d: d.offset)
    assert [d.offset for d in letters] == list(range(3, 3 + len(bad) + 1))
    assert {d.reason for d in letters} == {BAD_CHANNELS}
    assert "Flow Rate" in letters[0].detail and "core sensor" in letters[1].detail and "outside" in letters[3].detail
    assert f"at most {MAX_CHANNELS}" in letters[4].detail and "NaN or infinite" in letters[-1].detail


def channel_fleet(machines: int, seconds: int, seed: int) -> list[dict]:
    """~1 Hz readings; each machine sends a random subset of channels, some null, one channel appearing late."""
    rng = random.Random(seed)
    readings = []
    for second in range(seconds):
        for m in range(machines):
            channels: dict[str, float | None] = {}
            for name in ("flow", "acc_1", "current"):
                if rng.random() < 0.8:
                    channels[name] = None if rng.random() < 0.05 else round(rng.gauss(10 * (m + 1), 3), 4)
            if second > seconds // 2:
                channels["late_channel"] = float(second)
            readings.append({"machine_id": f"M{m:03d}", "ts": T0 + second * 1000 + rng.randrange(0, 900),
                             "seq": second, "status": "running", "temperature": 50.0,
                             **({"channels": channels} if channels else {})})
    return readings


def channel_reference(readings: list[dict], window_ms: int) -> dict[tuple[str, int], dict[str, dict[str, float]]]:
    """(machine, window_start) -> channel -> stat, computed with pandas from the readings."""
    rows = [{"machine_id": r["machine_id"], "ws": r["ts"] // window_ms * window_ms, "ts": r["ts"], "channel": name,
             "value": value} for r in readings for name, value in r.get("channels", {}).items() if value is not None]
    frame = pd.DataFrame(rows).sort_values(["machine_id", "ws", "ts"])
    out: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    for (machine, ws, name), group in frame.groupby(["machine_id", "ws", "channel"]):
        values = group["value"]
        out.setdefault((machine, int(ws)), {})[name] = {
            "count": len(values), "mean": values.mean(), "min": values.min(), "max": values.max(),
            "std": values.std(ddof=0), "last": values.iloc[-1]}
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_window_channel_stats_equal_a_reference_on_one_worker_and_a_cluster(workers: int) -> None:
    readings = channel_fleet(machines=6, seconds=45, seed=workers)
    result = run_pipeline(batches_of([encode(r) for r in readings], 97), config(shards=4), workers=workers)
    expected = channel_reference(readings, 10_000)
    frame = result.window_stats  # map columns arrive as lists of (channel, value) pairs
    keys = list(zip(frame["machine_id"], frame["window_start"].astype(int)))
    assert set(keys) == set(expected)
    for row, key in enumerate(keys):
        got = {stat: dict(frame[f"channel_{stat}"].iloc[row]) for stat in CHANNEL_STATS}
        assert set(got["count"]) == set(expected[key]), key
        for name, want in expected[key].items():
            for stat in CHANNEL_STATS:
                assert got[stat][name] == pytest.approx(want[stat], rel=1e-9, abs=1e-9), (key, name, stat)


def test_window_channel_stats_are_stored_and_queried_by_name_in_clickhouse(chdb_client) -> None:
    n = 30
    start = (int(pd.Timestamp.now(tz="UTC").timestamp()) // 10) * 10_000  # recent: the tables have a TTL
    ts = start + np.arange(n) * 1000
    flow = np.linspace(1.0, 3.0, n)
    readings = ClosedReadings(midx=np.zeros(n, np.int64), ws=ts - ts % 10_000, ts=ts, seq=np.arange(n),
                              sensors={s: np.full(n, np.nan) for s in SENSORS}, status=np.zeros(n, np.int8),
                              channels={"flow": flow, "acc_1": np.where(np.arange(n) < 10, np.nan, 0.5)})
    table = window_stats_table(readings, Groups.of(readings, 10_000), np.array(["CH-1"], dtype=object),
                               np.array(["rig"], dtype=object), 10_000, start)
    client, database = chdb_client
    client.insert_arrow("window_stats", table, database=database)
    rows = client.query(
        f"SELECT toUnixTimestamp64Milli(window_start), channel_mean['flow'], channel_count['acc_1'], "
        f"channel_max['acc_1'] FROM {database}.window_stats FINAL WHERE machine_id = 'CH-1' ORDER BY window_start"
    ).result_rows
    expected = [(int(ws), float(flow[i:i + 10].mean()), 0 if i < 10 else 10, 0.0 if i < 10 else 0.5)
                for i, ws in zip(range(0, n, 10), ts[::10])]
    assert [(r[0], pytest.approx(r[1]), r[2], r[3]) for r in rows] == expected


@pytest.fixture
def chdb_client(chdb_dir: Path):
    """The session's chDB directory with a database of this test's own (the schema's migrations applied)."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    database = "channels_test"
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    apply_schema(client, database)
    yield client, database
    client.command(f"DROP DATABASE IF EXISTS {database}")


def rig_windows(readings_per_window: int, window_s: int, windows: int, fault_from: int, scale: float,
                offset: float, seed: int = 0) -> pa.Table:
    """Window stats of one machine with two channels that follow a common load; from window `fault_from`
    the second channel moves against the first (a leak: the flow falls while the current holds)."""
    rng = np.random.default_rng(seed)
    n = readings_per_window * windows
    step_ms = window_s * 1000 // readings_per_window
    ts = T0 - T0 % (window_s * 1000) + np.arange(n) * step_ms
    load = np.repeat(rng.normal(50.0, 5.0, windows), readings_per_window) + rng.normal(0, 0.5, n)
    current = 0.1 * load + rng.normal(0, 0.05, n)
    flow = 2.0 * load + rng.normal(0, 1.0, n)
    fault = np.arange(n) >= fault_from * readings_per_window
    flow[fault] -= 12.0
    channels = {"current": current * scale + offset, "flow": flow * scale + offset}
    readings = ClosedReadings(midx=np.zeros(n, np.int64), ws=ts - ts % (window_s * 1000), ts=ts, seq=np.arange(n),
                              sensors={s: np.full(n, np.nan) for s in SENSORS}, status=np.zeros(n, np.int8),
                              channels=channels)
    return window_stats_table(readings, Groups.of(readings, window_s * 1000), np.array(["RIG-1"], dtype=object),
                              np.array(["never-tuned"], dtype=object), window_s * 1000, 0)


@pytest.mark.parametrize(("readings_per_window", "window_s"), [(100, 1), (10, 10), (1, 3600)],
                         ids=["100Hz-1s", "1Hz-10s", "hourly-1h"])
def test_the_packaged_default_spec_has_no_units_and_works_from_100_hz_to_1_per_hour(
    readings_per_window: int, window_s: int
) -> None:
    """The packaged [default] spec (no absolute floor anywhere) on a machine type nobody tuned: the same
    anomalies whatever the units (x1e-3, x1e3, shifted), the fault caught, the healthy part quiet."""
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    assert specs.for_type("never-tuned").features == "channels"
    outcomes = []
    for scale, offset in [(1.0, 0.0), (1e-3, 0.0), (1e3, -5e4)]:
        stats = rig_windows(readings_per_window, window_s, windows=300, fault_from=200, scale=scale, offset=offset)
        scores = FleetModels(specs).score(stats, now_ms=0).scores
        outcomes.append((scores["is_anomaly"].to_pylist(), np.asarray(scores["score"].to_pylist())))
    anomalous = np.asarray(outcomes[0][0])
    for flags, values in outcomes[1:]:
        assert flags == outcomes[0][0]
        np.testing.assert_allclose(values, outcomes[0][1], rtol=1e-6, atol=1e-6)
    relearn = specs.default.alert_relearn_after_windows
    assert anomalous[200:203].all(), "the fault is caught in its first window"
    assert anomalous[200:200 + relearn].mean() > 0.8, "and held until it has lasted relearn_after_windows"
    assert not anomalous[200 + relearn + 5:].any(), "then it is the new normal"
    assert anomalous[:200].sum() <= 2, "the healthy part is quiet"


def test_channel_models_do_not_depend_on_batch_boundaries() -> None:
    stats = rig_windows(10, 10, windows=240, fault_from=180, scale=1.0, offset=0.0)
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    whole = FleetModels(specs).score(stats, now_ms=0).scores
    models = FleetModels(specs)
    parts = [models.score(stats.slice(i, 37), now_ms=0).scores for i in range(0, stats.num_rows, 37)]
    pieces = pa.concat_tables(parts)
    for column in ("score", "threshold", "is_anomaly", "alert_raised", "top_features"):
        assert pieces[column].to_pylist() == whole[column].to_pylist(), column


def test_faulty_sensor_features_are_neither_scored_nor_learned() -> None:
    stats = rig_windows(10, 10, windows=240, fault_from=180, scale=1.0, offset=0.0)
    specs = ModelSpecs({"default": {"features": "channels", "detector": "robust_zscore"}})
    flow_faulty = {"flow": np.arange(stats.num_rows) >= 180}
    scores = FleetModels(specs).score(stats, now_ms=0, faulty=flow_faulty).scores
    tops = [json.loads(t) for t in scores["top_features"].to_pylist()[180:]]
    assert all(name.split(":")[0] != "flow" for top in tops for name, _ in top)
    assert not any(scores["is_anomaly"].to_pylist()[180:]), "the fault is only on the faulty flow meter"


def test_a_spec_names_the_channels_it_uses() -> None:
    stats = rig_windows(10, 10, windows=240, fault_from=180, scale=1.0, offset=0.0)
    only_current = ModelSpecs({"default": {"features": "channels", "detector": "multivariate", "channels": ["current"],
                                           "alert": {"learn_in_warmup": True}}})
    models = FleetModels(only_current)
    scores = models.score(stats, now_ms=0).scores
    assert models.groups["default"].features == ["current"]
    assert {name for top in scores["top_features"].to_pylist() for name, _ in json.loads(top)} <= {"current"}
    assert not any(scores["is_anomaly"].to_pylist()[180:]), "the fault is in the flow, which this spec leaves out"
    with pytest.raises(ValueError, match="channel names match"):
        ModelSpecs({"default": {"features": "channels", "channels": ["Flow Rate"]}})
