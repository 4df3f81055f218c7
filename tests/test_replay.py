"""Replay inputs (`connectors.replay_sources`): the documented CSV/Parquet format, labels as events, and a
simulator recording scored the same whether read as raw messages or as a decoded table file."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.replay_sources import open_input
from flows.pipeline import PipelineConfig
from flows.replay import replay
from plantpulse.settings import Settings
from sim import Simulator, build_fleet, record_only

T0 = 1_764_000_000_000


def _readings(data) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    table = pa.concat_tables(list(data.items))
    return table.to_pandas().sort_values(["machine_id", "ts", "seq"]).reset_index(drop=True)


def test_csv_labels_become_one_event_per_run_of_a_fault(tmp_path: Path) -> None:
    # A: normal, leak, leak, (empty), leak, overheating, overheating  -> leak [1,2], leak [4], overheating [5,6]
    # B: normal x3, bearing_wear (last row)                           -> bearing_wear [3]
    rows = [("A", k, label) for k, label in enumerate(["normal", "leak", "leak", "", "leak", "overheating", "overheating"])]
    rows += [("B", k, label) for k, label in enumerate(["normal", "Normal", "", "bearing_wear"])]
    rows.reverse()  # the file's order does not matter, time does
    frame = pd.DataFrame(rows, columns=["machine_id", "second", "label"])
    frame["ts"] = T0 + frame.pop("second") * 1000
    frame["temperature"] = 60.0
    path = tmp_path / "labelled.csv"
    frame.to_csv(path, index=False)
    data = open_input(str(path))
    events = sorted(tuple(e.values()) for e in data.labels.to_pylist())
    assert events == sorted([
        ("A", "leak", T0 + 1000, T0 + 2000), ("A", "leak", T0 + 4000, T0 + 4000),
        ("A", "overheating", T0 + 5000, T0 + 6000), ("B", "bearing_wear", T0 + 3000, T0 + 3000),
    ])
    readings = _readings(data)
    assert len(readings) == 11 and data.readings == 11
    assert readings["status"].unique().tolist() == ["running"]  # the documented default
    assert readings.groupby("machine_id")["seq"].apply(list).to_dict() == {"A": list(range(7)), "B": list(range(4))}
    assert readings["pressure"].isna().all()  # absent sensors are null


def test_iso_and_epoch_timestamps_read_alike(tmp_path: Path) -> None:
    epoch = pd.DataFrame({"machine_id": ["M1", "M1", "M2"], "ts": [T0, T0 + 1000, T0 + 500],
                          "temperature": [1.0, 2.0, 3.0], "status": ["running", "idle", "running"]})
    iso = epoch.assign(ts=pd.to_datetime(epoch["ts"], unit="ms", utc=True).map(lambda t: t.isoformat()))
    (tmp_path / "iso.csv").write_text(iso.to_csv(index=False))
    pq.write_table(pa.Table.from_pandas(epoch), tmp_path / "epoch.parquet")
    a, b = (_readings(open_input(str(tmp_path / name))) for name in ("iso.csv", "epoch.parquet"))
    pd.testing.assert_frame_equal(a.drop(columns="kafka_offset"), b.drop(columns="kafka_offset"))
    assert a["ts"].tolist() == [T0, T0 + 1000, T0 + 500]  # int64 epoch ms, as the window step takes them
    assert a["status"].tolist() == ["running", "idle", "running"]


def test_bad_inputs_fail_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    (tmp_path / "no_ts.csv").write_text("machine_id,temperature\nM1,3\n")
    with pytest.raises(ValueError, match=r"no_ts.csv lacks column\(s\) \['ts'\]"):
        open_input(str(tmp_path / "no_ts.csv"))
    (tmp_path / "bad_ts.csv").write_text("machine_id,ts\nM1,yesterday\n")
    with pytest.raises(ValueError, match="bad_ts.csv column ts is neither epoch ms nor ISO 8601"):
        open_input(str(tmp_path / "bad_ts.csv"))
    with pytest.raises(ValueError, match="does not exist"):
        open_input(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty-lake").mkdir()
    with pytest.raises(ValueError, match="holds no readings"):
        open_input(str(tmp_path / "empty-lake"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither .csv nor .parquet"):
        open_input(str(tmp_path / "notes.txt"))


def test_a_recording_scores_the_same_as_its_readings_in_a_table_file(tmp_path: Path) -> None:
    """Raw messages (decoded by the replay) and the same readings as a Parquet table: identical scores."""
    path = tmp_path / "run.parquet"
    record_only(Simulator(build_fleet(30, 4), seed=4, faults="all", fault_rate=0.3, imperfections={}, start_ts_ms=T0),
                duration_s=400, path=path)
    recording = open_input(str(path))
    columns = ["machine_id", "ts", "seq", "temperature", "pressure", "vibration", "rpm", "power", "status"]
    pq.write_table(pq.read_table(path, columns=columns), tmp_path / "readings.parquet")
    table_file = open_input(str(tmp_path / "readings.parquet"))
    assert recording.raw and not table_file.raw and recording.readings == table_file.readings > 11_000
    assert recording.labels is not None and recording.labels.num_rows > 0
    config = PipelineConfig.from_settings(Settings(machines_file=None, max_event_age_seconds=0))
    config = replace(config, machine_types=recording.machine_types)
    key = [("machine_id", "ascending"), ("window_start", "ascending")]
    a, b = (replay(d.items, config, raw=d.raw).scores.drop(["scored_at"]).sort_by(key) for d in (recording, table_file))
    assert a.num_rows > 1_100 and a["warming_up"].to_pylist().count(False) > 100  # models past warm-up
    assert a.equals(b)
    # A recording is read lazily and can be replayed again (once per grid point).
    again = replay(recording.items, config, raw=True).scores.drop(["scored_at"]).sort_by(key)
    assert again.equals(a)


def test_an_s3_lake_is_replayed_hour_by_hour_in_event_time_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hours of lake files (two partitions each, out of order within a file) on S3 (a moto server):
    the reader yields every reading once, hours in order, each hour sorted by (ts, machine_id, seq)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    from connectors.broker import free_port
    from plantpulse.schema import READING_ARROW_SCHEMA

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
        bucket = f"replay-{uuid.uuid4().hex[:8]}"  # moto's backend is shared by the session's S3 tests
        fs.call_s3("create_bucket", Bucket=bucket)
        hour0 = T0 - T0 % 3_600_000
        rows = []
        for i in range(400):  # 200 readings in each of two hours, 4 machines; files hold them in reverse order
            ts = hour0 + (3_600_000 if i >= 200 else 0) + (i % 200) // 4 * 60_000
            rows.append({"machine_id": f"M{i % 4}", "ts": ts, "seq": i // 4, "temperature": float(i), "pressure": None,
                         "vibration": None, "rpm": None, "power": None, "status": "running",
                         "kafka_partition": i % 2, "kafka_offset": i})
        frame = pd.DataFrame(rows)
        for (hour, partition), part in frame.groupby([frame["ts"] // 3_600_000, "kafka_partition"]):
            stamp = pd.Timestamp(hour * 3_600_000, unit="ms", tz="UTC")
            path = f"{bucket}/raw/dt={stamp:%Y-%m-%d}/hour={stamp:%H}/part-{partition:03d}-0000000000.parquet"
            reverse = part.iloc[::-1]
            # Files as written before readings carried channels (issue 15): they still replay (channels null).
            before_channels = READING_ARROW_SCHEMA.remove(READING_ARROW_SCHEMA.get_field_index("channels"))
            table = pa.Table.from_pandas(reverse.assign(ts=pd.to_datetime(reverse["ts"], unit="ms", utc=True)),
                                         schema=before_channels, preserve_index=False)
            with fs.open(path, "wb") as handle:
                pq.write_table(table, handle)
        data = open_input(f"s3://{bucket}/raw", chunk_rows=150, s3_endpoint_url=endpoint)
        assert not data.raw and data.readings == 400
        chunks = list(data.items)
        assert [c.num_rows for c in chunks] == [150, 50, 150, 50]  # chunked within each hour
        got = pa.concat_tables(chunks).to_pandas()
        expected = frame.sort_values(["ts", "machine_id", "seq"]).reset_index(drop=True)
        assert got[["machine_id", "ts", "seq", "temperature"]].values.tolist() == \
            expected[["machine_id", "ts", "seq", "temperature"]].values.tolist()
        assert len(list(data.items)) == 4  # read again on a second pass (one per grid point)
    finally:
        server.stop()
