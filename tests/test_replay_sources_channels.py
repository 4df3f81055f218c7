"""Replay inputs with any sensor channels (`connectors.replay_sources`, `connectors.replay_tables`): SKAB's and
NAB's file formats as they are, directories of files, several sources, the errors; and `plantpulse replay
--scoring skab` end to end against an independent recomputation. The data are written here: never copies
of the real data sets."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.replay_sources import ReplayInput, open_input
from plantpulse.schema import MAX_CHANNELS
from plantpulse.settings import Settings
from tests.processes import PLANTPULSE, flow_env

SKAB_HEADER = ("datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;"
               "Volume Flow RateRMS;anomaly;changepoint")
SKAB_CHANNELS = ["accelerometer1rms", "accelerometer2rms", "current", "thermocouple", "voltage", "volume_flow_raterms"]
T0 = pd.Timestamp("2020-03-09 15:56:30", tz="UTC")


def skab_like(path: Path, rows: int, anomalous: range, *, start: pd.Timestamp = T0, seed: int = 0) -> None:
    """A file in SKAB's layout: `;`, a naive `datetime` at 1 Hz, 8 channels, `anomaly`/`changepoint` 0.0/1.0;
    the anomalous rows have a shifted flow and current."""
    rng = np.random.default_rng(seed)
    lines = [SKAB_HEADER]
    for k in range(rows):
        fault = k in anomalous
        stamp = (start + pd.Timedelta(seconds=k)).strftime("%Y-%m-%d %H:%M:%S")
        values = [0.027 + 0.001 * rng.standard_normal(), 0.04 + 0.001 * rng.standard_normal(),
                  1.29 + (0.8 if fault else 0.0) + 0.02 * rng.standard_normal(), 0.05 + 0.01 * rng.standard_normal(),
                  68.6 + 0.05 * rng.standard_normal(), 24.37 + 0.01 * rng.standard_normal(),
                  240 + rng.standard_normal(), 32.0 - (12.0 if fault else 0.0) + 0.3 * rng.standard_normal()]
        lines.append(";".join([stamp, *(f"{v:.6g}" for v in values), "1.0" if fault else "0.0",
                               "1.0" if k == anomalous.start else "0.0"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def readings_of(data: ReplayInput) -> pa.Table:
    return pa.concat_tables([t for t in data.items if isinstance(t, pa.Table)])


def labelled(data: ReplayInput) -> tuple[pa.Table, pa.Table]:
    """(labels, points) of an input that has both."""
    if data.labels is None or data.points is None:
        raise AssertionError("the input has no labels")
    return data.labels, data.points


def test_a_skab_file_replays_as_it_is(tmp_path: Path) -> None:
    skab_like(tmp_path / "3.csv", 12, range(5, 8))
    data = open_input(str(tmp_path / "3.csv"))
    readings = readings_of(data)
    assert data.readings == 12 and set(readings["machine_id"].to_pylist()) == {"3"}  # named after the file
    assert readings["ts"].to_pylist()[:2] == [int(T0.timestamp() * 1000), int(T0.timestamp() * 1000) + 1000]
    first = readings.slice(0, 1).to_pylist()[0]
    assert [name for name, _ in first["channels"]] == SKAB_CHANNELS  # spaces and capitals normalised
    assert first["temperature"] is not None and first["pressure"] is not None  # core sensors by name
    assert first["vibration"] is None and first["status"] == "running"
    assert readings["seq"].to_pylist() == list(range(12))
    t = int(T0.timestamp() * 1000)
    labels, points = labelled(data)
    assert labels.to_pylist() == [{"machine_id": "3", "fault": "anomaly", "start_ts": t + 5000, "end_ts": t + 7000}]
    assert points["label"].to_pylist() == [5 <= k < 8 for k in range(12)]
    assert points["ts"].to_pylist() == readings["ts"].to_pylist()


def test_a_nab_file_with_its_windows_beside_it(tmp_path: Path) -> None:
    hours = pd.date_range("2013-07-04", periods=24, freq="h")
    frame = pd.DataFrame({"timestamp": hours.strftime("%Y-%m-%d %H:%M:%S"), "value": np.arange(24) * 0.5 + 60})
    frame.to_csv(tmp_path / "ambient.csv", index=False)
    windows = [["2013-07-04 05:00:00.000000", "2013-07-04 07:00:00.000000"],  # rows 5-7
               ["2013-07-04 08:00:00.000000", "2013-07-04 09:00:00.000000"]]  # rows 8-9: touches the first
    (tmp_path / "ambient.windows.json").write_text(json.dumps({"realKnownCause/ambient.csv": windows}))
    data = open_input(str(tmp_path / "ambient.csv"))
    ms = [int(h.timestamp() * 1000) for h in hours.tz_localize("UTC")]
    labels, points = labelled(data)
    assert [(e["start_ts"], e["end_ts"], e["fault"]) for e in labels.to_pylist()] == [
        (ms[5], ms[7], "anomaly"), (ms[8], ms[9], "anomaly")]  # one event per window
    assert points["label"].to_pylist() == [5 <= k <= 9 for k in range(24)]
    readings = readings_of(data)
    assert readings["channels"][3].as_py() == [("value", 61.5)] and readings["temperature"].null_count == 24
    (tmp_path / "ambient.windows.json").write_text(json.dumps({"x/other.csv": windows}))
    with pytest.raises(ValueError, match="one entry for 'ambient.csv', has 0"):
        open_input(str(tmp_path / "ambient.csv"))


def test_directories_and_several_sources_merge_in_event_time_order(tmp_path: Path) -> None:
    skab_like(tmp_path / "rig" / "valve" / "0.csv", 6, range(2, 3), seed=1)
    skab_like(tmp_path / "rig" / "other" / "1.csv", 4, range(0, 0), start=T0 + pd.Timedelta(seconds=3), seed=2)
    pd.DataFrame({"machine_id": ["P1", "P1"], "ts": [T0.value // 10**6 + 500, T0.value // 10**6 + 1500],
                  "Flow": [1.0, 2.0]}).to_parquet(tmp_path / "pumps.parquet")
    data = open_input([str(tmp_path / "rig"), str(tmp_path / "pumps.parquet")])
    readings = readings_of(data)
    assert data.readings == 12
    assert readings["ts"].to_pylist() == sorted(readings["ts"].to_pylist())  # one event-time ordered stream
    by_machine = readings.to_pandas().groupby("machine_id")["seq"].apply(list).to_dict()
    assert by_machine == {"rig_other_1": [0, 1, 2, 3], "rig_valve_0": list(range(6)), "P1": [0, 1]}
    assert readings.filter(pa.compute.equal(readings["machine_id"], "P1"))["channels"].to_pylist()[0] == [("flow", 1.0)]
    # points: the labelled files' readings only (the Parquet file has no labels), in time order per machine
    labels, points = labelled(data)
    assert sorted(set(points["machine_id"].to_pylist())) == ["rig_other_1", "rig_valve_0"]
    assert points.num_rows == 10 and [e["machine_id"] for e in labels.to_pylist()] == ["rig_valve_0"]
    # the same files again under another name: same machines named after the files -> error
    (tmp_path / "copy").mkdir()
    skab_like(tmp_path / "copy" / "x.csv", 3, range(0, 0))
    skab_like(tmp_path / "x.csv", 3, range(0, 0))
    with pytest.raises(ValueError, match=r"x.csv and .*x.csv both are machine 'x'"):
        open_input([str(tmp_path / "copy" / "x.csv"), str(tmp_path / "x.csv")])


def test_bad_channel_columns_fail_naming_them(tmp_path: Path) -> None:
    (tmp_path / "collide.csv").write_text("ts,Flow Rate,flow_rate\n1000,1,2\n")
    with pytest.raises(ValueError, match="columns 'Flow Rate' and 'flow_rate' both mean 'flow_rate'"):
        open_input(str(tmp_path / "collide.csv"))
    (tmp_path / "text.csv").write_text("ts,flow,comment\n1000,1,ok\n2000,2,leaking\n")
    with pytest.raises(ValueError, match="column 'comment' is not numeric"):
        open_input(str(tmp_path / "text.csv"))
    many = ",".join(f"s{k}" for k in range(MAX_CHANNELS + 1))
    (tmp_path / "many.csv").write_text(f"ts,{many}\n1000," + ",".join(["1"] * (MAX_CHANNELS + 1)) + "\n")
    with pytest.raises(ValueError, match=f"has {MAX_CHANNELS + 1} channel columns, at most {MAX_CHANNELS}"):
        open_input(str(tmp_path / "many.csv"))
    (tmp_path / "no_time.csv").write_text("when;flow\n1000;1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['ts'\]"):
        open_input(str(tmp_path / "no_time.csv"))
    (tmp_path / "ok.csv").write_text("Time\t9 Volt\tPower\n1000\t1.5\t3\n")  # tab, leading digit, core sensor
    readings = readings_of(open_input(str(tmp_path / "ok.csv")))
    assert readings["channels"].to_pylist() == [[("c_9_volt", 1.5)]] and readings["power"].to_pylist() == [3.0]


def _skab_protocol_by_hand(source: Path, scores: pd.DataFrame, train_rows: int = 400) -> dict[str, int]:
    """TP/FP/FN/TN recomputed reading by reading, without the scorer's code."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for path in sorted(source.rglob("*.csv")):
        machine = re.sub(r"[^A-Za-z0-9_.:-]+", "_", f"{source.name}/{path.relative_to(source).with_suffix('')}")
        frame = pd.read_csv(path, sep=";").sort_values("datetime", kind="stable").iloc[train_rows:]
        mine = scores[scores["machine_id"] == machine]
        for stamp, label in zip(frame["datetime"], frame["anomaly"]):
            ts = pd.Timestamp(stamp, tz="UTC")
            hit = mine[(mine["window_start"] <= ts) & (ts < mine["window_end"])]
            predicted = bool(len(hit) and hit["is_anomaly"].iloc[0])
            key = ("t" if predicted == (label == 1) else "f") + ("p" if predicted else "n")
            counts[key] += 1
    return counts


def test_replay_scores_a_skab_like_directory_with_the_skab_protocol(tmp_path: Path) -> None:
    source = tmp_path / "skab_like"
    skab_like(source / "valve" / "0.csv", 700, range(520, 620), seed=3)
    skab_like(source / "valve" / "1.csv", 650, range(450, 500), start=T0 + pd.Timedelta(hours=2), seed=4)
    out = tmp_path / "report"
    done = subprocess.run([*PLANTPULSE, "replay", str(source), "--scoring", "skab", "--out", str(out)],
                          env=flow_env(Settings(data_dir=tmp_path), tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = pq.read_table(out / "run-01" / "scores.parquet").to_pandas()
    assert set(scores["machine_id"]) == {"skab_like_valve_0", "skab_like_valve_1"}
    counts = _skab_protocol_by_hand(source, scores)
    assert sum(counts.values()) == (700 - 400) + (650 - 400)
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    f1 = 2 * tp / (2 * tp + fp + fn)
    far, mar = fp / (fp + tn), fn / (fn + tp)
    benchmark = json.loads((out / "run-01" / "metrics.json").read_text())["benchmark"]
    assert {k: benchmark[k] for k in ("tp", "fp", "fn", "tn")} == counts
    assert (benchmark["f1"], benchmark["far"], benchmark["mar"]) == (round(f1, 4), round(far, 4), round(mar, 4))
    assert (f"SKAB: F1 {round(f1, 4)}, FAR {100 * far:.1f} %, MAR {100 * mar:.1f} % "
            f"(TP {tp}, FP {fp}, FN {fn}, TN {tn};") in done.stdout, done.stdout
