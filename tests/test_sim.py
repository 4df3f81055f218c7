"""Fleet simulator: determinism, wire validity, fault signatures, imperfections. No broker needed."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from plantpulse.schema import MACHINE_ID_PATTERN, MAX_SEQ, PHYSICAL_LIMITS, SENSORS, STATUSES, Reading
from sim import (
    DEAD_LETTER_REASONS,
    FAULT_KINDS,
    IMPERFECTION_KINDS,
    LABELS_SCHEMA,
    MALFORMED_KINDS,
    RECORDING_SCHEMA,
    Simulator,
    build_fleet,
    parse_faults,
    parse_imperfections,
    read_fleet_csv,
    record_only,
    sync_fleet_csv,
    write_fleet_csv,
)
from sim.producer import interval_for_rate, plan

START = 1_764_000_000_000  # 2025-11-24T16:00:00Z
ID_RE = re.compile(MACHINE_ID_PATTERN)
IMPERFECT = {"duplicates": 0.02, "out_of_order": 0.02, "late": 0.01, "malformed": 0.03, "clock_skew": 0.1}
MAX_PAYLOAD, MAX_FUTURE_MS, MAX_AGE_MS = 4096, 300_000, 7 * 86_400_000


def classify(raw: bytes, now_ms: int) -> str | None:
    """Reference validator: the dead-letter reason for `raw`, or None for a valid reading."""
    if len(raw) > MAX_PAYLOAD:
        return "oversized"
    try:
        doc = json.loads(raw)  # Python's parser accepts NaN/Infinity, so those reach the finiteness check
    except (ValueError, UnicodeDecodeError):
        return "not_json"
    if not isinstance(doc, dict):
        return "schema"
    if doc.get("v", 1) != 1:
        return "unsupported_version"
    required = {"machine_id": str, "ts": int, "seq": int, "status": str}
    for name, kind in required.items():
        if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool):
            return "schema"
    values = {s: doc.get(s) for s in SENSORS}
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in values.values()):
        return "schema"
    if not ID_RE.fullmatch(doc["machine_id"]):
        return "bad_machine_id"
    if doc["status"] not in STATUSES:
        return "bad_status"
    if any(v is not None and not math.isfinite(v) for v in values.values()):
        return "non_finite"
    if any(v is not None and not PHYSICAL_LIMITS[s][0] <= v <= PHYSICAL_LIMITS[s][1] for s, v in values.items()):
        return "out_of_range"
    if not 0 <= doc["seq"] < MAX_SEQ:
        return "out_of_range"
    if doc["ts"] > now_ms + MAX_FUTURE_MS:
        return "ts_future"
    if doc["ts"] < now_ms - MAX_AGE_MS:
        return "ts_too_old"
    return None


def _values(sim: Simulator, n_ticks: int) -> list[bytes]:
    return [value for batch in sim.run(n_ticks) for value in batch.values]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """15 minutes of 200 machines, every fault kind on half of them, every imperfection."""
    path = tmp_path_factory.mktemp("rec") / "run.parquet"
    fleet = build_fleet(200, 11)
    sim = Simulator(fleet, seed=11, faults="all", fault_rate=0.5, imperfections=IMPERFECT, start_ts_ms=START)
    summary = record_only(sim, duration_s=900, path=path)
    assert summary.messages == pq.read_metadata(path).num_rows
    frame = pq.read_table(path).to_pandas()
    labels = pq.read_table(summary.labels_path).to_pandas()
    return frame, labels, path


def _valid(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.expected_reason.isna()]


# -- fleet ------------------------------------------------------------------------------------------------
def test_fleet_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    fleet = build_fleet(5000, seed=3)
    assert fleet == build_fleet(5000, seed=3)
    assert [m.machine_type for m in fleet] != [m.machine_type for m in build_fleet(5000, seed=4)]
    assert [m.machine_id for m in fleet[:2]] == ["M00001", "M00002"]
    assert len({m.machine_id for m in fleet}) == 5000
    assert all(re.fullmatch(r"M\d{5,}", m.machine_id) for m in fleet)
    assert {m.machine_type for m in fleet} == {"pump", "compressor", "cnc", "conveyor"}
    assert {m.site for m in fleet} == {"plant-a", "plant-b", "plant-c"}
    assert all(re.fullmatch(r"line-\d{2,}", m.line) for m in fleet)
    path = write_fleet_csv(tmp_path / "machines.csv", fleet)
    with path.open() as handle:
        assert next(csv.reader(handle)) == ["machine_id", "site", "line", "machine_type"]
    assert read_fleet_csv(path) == fleet
    with pytest.raises(ValueError, match="n_machines"):
        build_fleet(0)


def test_fleet_file_is_synced_to_the_simulated_fleet(tmp_path: Path) -> None:
    """The machines file is rewritten only when it lists another fleet (types depend on seed and size), and
    atomically: no temporary file is left behind."""
    path = tmp_path / "machines.csv"
    first, second = build_fleet(50, seed=1), build_fleet(80, seed=2)
    assert sync_fleet_csv(path, first) is None  # created
    assert read_fleet_csv(path) == first
    written = path.stat().st_mtime_ns
    assert sync_fleet_csv(path, list(reversed(first))) is None  # same fleet, other order: left alone
    assert path.stat().st_mtime_ns == written
    replaced = sync_fleet_csv(path, second)
    assert replaced is not None and "50 machines" in replaced
    assert read_fleet_csv(path) == second
    path.write_text("machine_id,machine_type\nM00001,pump\n")  # not a fleet file (missing columns)
    assert "not a readable fleet" in (sync_fleet_csv(path, second) or "")
    assert read_fleet_csv(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["machines.csv"]


# -- determinism ------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    fleet = build_fleet(300, seed=1)

    def sim(seed: int) -> Simulator:
        return Simulator(fleet, seed=seed, fault_rate=0.2, imperfections=IMPERFECT, start_ts_ms=START)

    first, again, other = _values(sim(1), 120), _values(sim(1), 120), _values(sim(2), 120)
    assert first == again
    assert first != other
    keys = [key for batch in sim(1).run(120) for key in batch.keys]
    assert keys == [key for batch in sim(1).run(120) for key in batch.keys]


def test_imperfections_do_not_change_clean_readings() -> None:
    fleet = build_fleet(100, seed=5)
    plain = _values(Simulator(fleet, seed=5, start_ts_ms=START), 60)
    messy = Simulator(fleet, seed=5, imperfections={"duplicates": 0.05, "malformed": 0.05}, start_ts_ms=START)
    clean = [v for b in messy.run(60) for v, code in zip(b.values, b.imperfection.tolist()) if code == 0]
    assert clean == plain


# -- wire validity -----------------------------------------------------------------------------------------
def test_every_valid_message_decodes_to_its_recorded_reading(recording) -> None:
    frame, _, _ = recording
    valid = _valid(frame)
    decoder = msgspec.json.Decoder(Reading)
    readings = [decoder.decode(raw) for raw in valid.raw]
    assert [r.machine_id for r in readings] == valid.machine_id.tolist()
    assert [r.ts for r in readings] == valid.ts.tolist()
    assert [r.seq for r in readings] == valid.seq.tolist()
    assert [r.status for r in readings] == valid.status.tolist()
    assert {r.v for r in readings} == {1}
    assert set(valid.status) <= set(STATUSES)
    for sensor in SENSORS:
        wire = np.array([np.nan if getattr(r, sensor) is None else getattr(r, sensor) for r in readings])
        recorded = valid[sensor].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(wire), np.isnan(recorded))
        np.testing.assert_allclose(wire[~np.isnan(wire)], recorded[~np.isnan(recorded)], rtol=0, atol=1e-9)
        low, high = PHYSICAL_LIMITS[sensor]
        present = recorded[~np.isnan(recorded)]
        assert present.min() >= low and present.max() <= high, sensor
    assert all(ID_RE.fullmatch(m) for m in valid.machine_id.unique())
    assert (frame.key == frame.machine_id.str.encode("ascii")).all()
    assert frame.send_index.tolist() == list(range(len(frame)))
    assert all(classify(raw, ts) is None for raw, ts in zip(valid.raw, valid.ts))


def test_seq_counts_readings_per_machine(recording) -> None:
    frame, _, _ = recording
    originals = frame[frame.imperfection.isin(["", "late", "out_of_order"])]
    for machine, group in originals.groupby("machine_id"):
        seqs = np.sort(group.seq.to_numpy())
        assert seqs.tolist() == list(range(len(seqs))), machine  # from 0, no gaps, no repeats
        by_seq = group.sort_values("seq")
        assert (np.diff(by_seq.ts.to_numpy()) > 0).all(), machine  # timestamps increase with seq


def test_recording_files(recording) -> None:
    frame, labels, path = recording
    assert pq.read_schema(path).names == RECORDING_SCHEMA.names
    assert pq.read_schema(path.with_name("run.labels.parquet")).names == LABELS_SCHEMA.names
    assert [m.machine_id for m in read_fleet_csv(path.with_name("run.machines.csv"))][:1] == ["M00001"]
    assert set(labels.fault) == set(FAULT_KINDS)
    assert (labels.end_ts >= labels.start_ts).all()
    assert set(FAULT_KINDS) - {"dropout"} <= set(frame.label) <= {""} | set(FAULT_KINDS)
    assert set(frame.expected_reason.dropna()) == set(DEAD_LETTER_REASONS)


# -- faults ------------------------------------------------------------------------------------------------
def _readings_in(frame: pd.DataFrame, label) -> pd.DataFrame:
    rows = frame[(frame.machine_id == label.machine_id) & frame.ts.between(label.start_ts, label.end_ts)]
    return rows.sort_values("seq")


def _longest_run_s(rows: pd.DataFrame, breach: np.ndarray, interval_ms: int = 1000) -> float:
    """Longest stretch of consecutive readings in breach, in seconds (each reading holds one interval)."""
    best = start = None
    ts = rows.ts.to_numpy()
    for i, hit in enumerate(breach):
        if hit and start is None:
            start = i
        if start is not None and (not hit or i == len(breach) - 1):
            stop = i if hit else i - 1
            length = (ts[stop] - ts[start] + interval_ms) / 1000
            best = length if best is None else max(best, length)
            start = None
    return best or 0.0


def test_critical_faults_breach_for_at_least_30_seconds(recording) -> None:
    frame, labels, _ = recording
    valid = _valid(frame)
    complete = labels[~labels.truncated]
    for fault, sensor, breached in (
        ("overheating", "temperature", lambda v: v > 95.0),
        ("pressure_leak", "pressure", lambda v: v < 1.0),
    ):
        events = complete[complete.fault == fault]
        assert len(events) >= 5, fault
        for event in events.itertuples():
            rows = _readings_in(valid[valid.imperfection == ""], event)
            hit = breached(rows[sensor].to_numpy())
            assert _longest_run_s(rows, hit) >= 30.0, (fault, event)
            assert (rows.label == fault).all()
            assert event.breach_start_ts <= rows.ts[hit].min() and rows.ts[hit].max() <= event.breach_end_ts
            assert event.breach_end_ts - event.breach_start_ts >= 30_000
    leak_types = set(pd.read_csv(Path(recording[2]).with_name("run.machines.csv")).set_index("machine_id")
                     .loc[labels[labels.fault == "pressure_leak"].machine_id, "machine_type"])
    assert leak_types <= {"pump", "compressor"}  # the machine types the pressure rule covers


def test_nothing_but_critical_faults_crosses_thresholds(recording) -> None:
    frame, _, _ = recording
    valid = _valid(frame)
    others = valid[~valid.label.isin(["overheating", "pressure_leak"])]
    assert len(others) > 100_000
    assert not (others.temperature > 90.0).any()
    assert not (others.pressure < 1.5).any()
    assert not (others.status == "fault").any()  # a protective trip only follows a critical fault
    assert not (valid.vibration > 45.0).any()  # the vibration rule's threshold: never crossed


def test_other_fault_signatures(recording) -> None:
    frame, labels, _ = recording
    valid = _valid(frame)
    clean = valid[valid.imperfection == ""]
    complete = labels[~labels.truncated]
    for event in complete[complete.fault == "stuck_sensor"].itertuples():
        sensor = event.detail.split(":")[1]
        rows = _readings_in(clean, event)
        assert len(rows) > 10 and rows[sensor].nunique() == 1, event
    for event in complete[complete.fault == "spike"].itertuples():
        sensor, value = event.detail.split(":")[1].split("=")
        rows = _readings_in(valid, event)
        assert event.start_ts == event.end_ts and len(rows) >= 1
        assert abs(rows[sensor].iloc[0] - float(value)) < 0.1, event
        assert rows[sensor].iloc[0] <= PHYSICAL_LIMITS[sensor][1]
    for event in complete[complete.fault == "dropout"].itertuples():
        rows = _readings_in(valid, event)
        if event.detail == "silent":
            assert rows.empty, event
        else:
            sensors = SENSORS if event.detail == "null:all" else [event.detail.split(":")[1]]
            assert rows[list(sensors)].isna().all().all(), event
    bearing = complete[complete.fault == "bearing_wear"]
    assert len(bearing) >= 3
    for event in bearing.itertuples():
        rows = _readings_in(clean, event)
        running = rows[rows.status == "running"]
        early, late = running.vibration.iloc[: len(running) // 10], running.vibration.iloc[-len(running) // 10 :]
        if len(early) > 5 and len(late) > 5:
            assert late.median() > 1.5 * early.median(), event


def test_fault_spec_parsing() -> None:
    assert parse_faults("all") == FAULT_KINDS
    assert parse_faults("none") == parse_faults("") == parse_faults(None) == ()
    assert parse_faults("spike, overheating") == ("spike", "overheating")
    with pytest.raises(ValueError, match="melting"):
        parse_faults("overheating,melting")
    with pytest.raises(ValueError, match="fault_rate"):
        Simulator(build_fleet(10), fault_rate=1.5)


def test_fault_rate_and_no_faults() -> None:
    fleet = build_fleet(400, seed=2)
    run = Simulator(fleet, seed=2, faults="all", fault_rate=0.05, start_ts_ms=START).run(120)
    for _ in run:
        pass
    affected = {label.machine_id for label in run.labels()}
    assert len(affected) == 20  # 5 % of 400
    quiet = Simulator(fleet, seed=2, faults="none", start_ts_ms=START).run(120)
    assert all((batch.label == 0).all() for batch in quiet) and quiet.labels() == []


# -- imperfections ---------------------------------------------------------------------------------------
def test_imperfection_rates_and_delays() -> None:
    fleet = build_fleet(200, seed=8)
    sim = Simulator(fleet, seed=8, faults="none", imperfections=IMPERFECT, start_ts_ms=START)
    n_ticks = 400
    batches = list(sim.run(n_ticks))
    names = ("tick", "machine", "ts", "seq", "imperfection")
    cols = {name: np.concatenate([getattr(b, name) for b in batches]) for name in names}
    values = [v for b in batches for v in b.values]
    code = cols["imperfection"]
    # Readings early enough for every delay to fit before the end of the stream.
    eligible = cols["tick"] < n_ticks - 46
    readings = int((eligible & np.isin(code, [0, 2, 3])).sum())
    malformed_codes = range(4, 4 + len(MALFORMED_KINDS))
    for kind, codes in (("duplicates", [1]), ("late", [2]), ("out_of_order", [3]), ("malformed", malformed_codes)):
        observed = int((eligible & np.isin(code, list(codes))).sum())
        expected = IMPERFECT[kind] * readings
        assert abs(observed - expected) < 5 * math.sqrt(expected) + 5, (kind, observed, expected)

    skew = sim.skew_ms
    assert 0.05 < (skew != 0).mean() < 0.15 and np.abs(skew).max() <= 5000
    np.testing.assert_array_equal(cols["ts"], START + cols["tick"] * 1000 + skew[cols["machine"]])

    last_ts: dict[int, int] = {}  # per machine: latest event time sent so far
    stream_ts = np.maximum.accumulate(cols["ts"] - skew[cols["machine"]])  # stream event time (skew removed)
    seen: set[bytes] = set()
    overtaken = 0
    for i, (machine, ts, c) in enumerate(zip(cols["machine"].tolist(), cols["ts"].tolist(), code.tolist())):
        behind = stream_ts[i] - (ts - skew[machine])  # how far event time had moved on when this was sent
        if c == 3:  # out of order: held back at most 1.5 s, usually overtaken by the machine's next reading
            assert 0 < behind <= 1500
            overtaken += last_ts.get(machine, 0) > ts
        elif c == 2:
            assert behind >= 30_000
        elif c == 1:  # duplicate: the very same bytes were sent before, at most 10 s earlier
            assert values[i] in seen and behind <= 10_000
        else:  # on time, like malformed extras (sent right after their tick's readings)
            assert behind == 0
        seen.add(values[i])
        last_ts[machine] = max(last_ts.get(machine, 0), ts)
    assert overtaken >= 0.9 * int((code == 3).sum())


def test_malformed_messages_fail_as_their_expected_reason(recording) -> None:
    frame, _, _ = recording
    bad = frame[frame.expected_reason.notna()]
    assert set(bad.imperfection.str.removeprefix("malformed:")) == set(MALFORMED_KINDS)
    for raw, ts, reason, kind in zip(bad.raw, bad.ts, bad.expected_reason, bad.imperfection):
        # `ts` is the clean reading's time, i.e. the wall clock of a live run when it was sent.
        assert classify(raw, ts) == reason, (kind, raw[:200])
        assert MALFORMED_KINDS[kind.removeprefix("malformed:")] == reason
    decoder = msgspec.json.Decoder(Reading)
    for raw, reason in zip(bad.raw, bad.expected_reason):
        if reason in ("not_json", "non_finite"):  # not JSON to a strict parser (NaN/Infinity are not JSON)
            with pytest.raises(msgspec.DecodeError):
                msgspec.json.decode(raw)
        elif reason == "schema":
            with pytest.raises(msgspec.ValidationError):
                decoder.decode(raw)
        else:  # well-formed wire shape, rejected by validation
            decoder.decode(raw)
    assert (bad[bad.expected_reason == "oversized"].raw.map(len) > MAX_PAYLOAD).all()


def test_imperfection_spec_parsing() -> None:
    assert parse_imperfections("duplicates=0.1,late") == {
        "duplicates": 0.1, "out_of_order": 0.0, "late": 0.01, "clock_skew": 0.0, "malformed": 0.0
    }
    assert set(parse_imperfections("none")) == set(IMPERFECTION_KINDS)
    with pytest.raises(ValueError, match="reorder"):
        parse_imperfections("reorder=0.1")
    with pytest.raises(ValueError, match="add up"):
        parse_imperfections("duplicates=0.6,malformed=0.6")
    with pytest.raises(ValueError, match="interval_ms"):
        Simulator(build_fleet(10), imperfections={"out_of_order": 0.1}, interval_ms=2000)


def test_message_iteration_meta() -> None:
    sim = Simulator(build_fleet(20), seed=1, imperfections={"malformed": 0.2}, start_ts_ms=START)
    messages = list(sim.messages(10))
    key, value, meta = messages[0]
    assert key == b"M00001" and meta.machine_id == "M00001" and meta.ts == START and meta.seq == 0
    assert {m.imperfection for _, _, m in messages} >= {""} and any(m.expected_reason for _, _, m in messages)
    assert all((m.expected_reason is None) == (not m.imperfection.startswith("malformed:")) for _, _, m in messages)


# -- scale and timing ------------------------------------------------------------------------------------
def test_ten_thousand_machines(tmp_path: Path) -> None:
    fleet = build_fleet(10_000, seed=9)
    sim = Simulator(fleet, seed=9, imperfections={"duplicates": 0.001}, start_ts_ms=START)
    summary = record_only(sim, count=50_000, path=tmp_path / "big.parquet")
    assert summary.messages == 50_000
    frame = pq.read_table(tmp_path / "big.parquet", columns=["machine_id", "raw", "imperfection"]).to_pandas()
    assert frame.machine_id.nunique() >= 9_900
    decoder = msgspec.json.Decoder(Reading)
    assert all(decoder.decode(raw).machine_id == m for raw, m in zip(frame.raw, frame.machine_id))


def test_timing_plan() -> None:
    sim = Simulator(build_fleet(1000), seed=1)
    paced, ticks = plan(sim, rate=5000, duration_s=10, count=None, now_ms=START)
    assert (paced.start_ts_ms, paced.interval_ms, ticks) == (START, 200.0, 50)
    fast, ticks = plan(sim, rate=None, duration_s=60, count=None, now_ms=START)
    assert (fast.start_ts_ms, fast.interval_ms, ticks) == (START - 60_000, 1000.0, 60)
    fixed, _ = plan(sim.retimed(start_ts_ms=123), rate=None, duration_s=None, count=10, now_ms=START)
    assert fixed.start_ts_ms == 123
    with pytest.raises(ValueError, match="at most 1000000 msg/s"):
        interval_for_rate(1000, 2e6)
    with pytest.raises(ValueError, match="duration_s or a count"):
        plan(sim, rate=None, duration_s=None, count=None)


def test_record_only_duration_and_interval(tmp_path: Path) -> None:
    sim = Simulator(build_fleet(50), seed=4, faults="none", start_ts_ms=START, interval_ms=250)
    summary = record_only(sim, duration_s=30, path=tmp_path / "short.parquet")
    assert summary.messages == 50 * 120
    frame = pq.read_table(tmp_path / "short.parquet", columns=["ts"]).to_pandas()
    assert frame.ts.min() == START and frame.ts.max() == START + 119 * 250


# -- delivery failures --------------------------------------------------------------------------------------
class _FailingProducer:
    """Stands in for confluent_kafka.Producer: the queue is full once, then a delivery fails."""

    def __init__(self, config: dict) -> None:
        self.on_delivery, self.sent, self.full_once, self.reported = config["on_delivery"], [], True, False

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        self.sent.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        if self.sent and not self.reported:
            self.reported = True
            from confluent_kafka import KafkaError

            class _Message:
                def key(self) -> bytes:
                    return b"M00001"

            self.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Message())
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self) -> None:
        self.sent.clear()

    def close(self) -> bool:
        return True


def test_failed_delivery_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sim.producer as producer_module
    from plantpulse.settings import Settings
    from sim import ProduceError, produce

    monkeypatch.setattr(producer_module, "Producer", _FailingProducer)
    monkeypatch.setattr(producer_module, "ensure_topic", lambda settings: False)
    sim = Simulator(build_fleet(10), seed=1, start_ts_ms=START)
    with pytest.raises(ProduceError, match=r"failed for 1 message\(s\).*M00001"):
        produce(Settings(telemetry_topic="t"), sim, count=100, record_path=tmp_path / "r.parquet")
    assert (tmp_path / "r.parquet").exists()  # what was recorded before the failure stays readable


def test_longer_run_extends_shorter_one() -> None:
    sim = Simulator(build_fleet(50), seed=6, fault_rate=0.2, imperfections={"malformed": 0.05}, start_ts_ms=START)
    short, long = _values(sim, 300), _values(sim, 700)
    assert long[: len(short)] == short
