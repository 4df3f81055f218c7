"""Sequence resets: a device whose seq counter restarts (reboot, firmware update) keeps every reading.

- A reading newer than all of its machine's readings whose seq is far below the epoch's highest, or was
  seen in it, begins a new sequence epoch (counted in `machine_state.seq_resets`); real duplicates (the
  same reading re-sent, with its original ts) are still dropped.
- A reading older than its machine's latest reset arriving after it is `late`, never counted twice.
- The outcome is the same however the stream is cut into batches (checked against a sequential reference).
- Window state snapshotted by the previous version (no epochs) restores.
"""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.decode import LATE, BatchDecoder, ValidationLimits
from flows.window_logic import restore_windows
from flows.window_state import ShardWindows, WindowConfig
from tests.flowkit import batches_of, config, encode, readings_frame, run_pipeline
from tests.reference import window_stats_reference
from tests.test_windows import assert_frames_match

T0 = 1_700_000_003_000  # not aligned to a window boundary
W, L = 10_000, 2_000
NEVER = -(2**62)


def reading(machine: str, seq: int, ts: int, value: float = 50.0) -> dict:
    return {"machine_id": machine, "seq": seq, "ts": ts, "status": "running", "temperature": value, "rpm": 1000.0}


def rebooting_device(epochs: tuple[int, ...], machine: str = "M1", gap_ms: int = 1_500) -> list[dict]:
    """A reading per second; the counter restarts at 0 after each epoch, `gap_ms` after the last reading."""
    readings, ts = [], T0
    for length in epochs:
        for seq in range(length):
            readings.append(reading(machine, seq, ts, value=float(len(readings) % 97)))
            ts += 1_000
        ts += gap_ms - 1_000
    return readings


def test_a_device_that_reboots_twice_keeps_every_reading() -> None:
    # Epochs of 1,500 (more than DEDUP_SEQ_WINDOW = 1,024: the restart is far below), 300 (fewer: its seqs
    # were all seen, but with newer event times) and 200 readings; a steady machine alongside.
    device = rebooting_device((1_500, 300, 200))
    steady = [reading("M2", seq, T0 + 400 + seq * 1_000) for seq in range(2_000)]
    originals = sorted(device + steady, key=lambda r: r["ts"])
    messages = []
    for i, r in enumerate(originals):
        messages.append(encode(r))
        if i % 97 == 5:  # a real duplicate: the same reading re-sent right after
            messages.append(encode(r))
    # After each reboot's first reading: the last reading of the epoch before, re-sent (its window still open).
    resent = []
    for first_after in (1_500, 1_800):
        before, after = encode(device[first_after - 1]), encode(device[first_after])
        messages.insert(messages.index(after) + 1, before)
        resent.append(before)

    result = run_pipeline(batches_of(messages, 250), config(shards=2, lateness_ms=L, idle_close_s=3600.0))

    expected = window_stats_reference(readings_frame(originals), W)
    assert int(result.window_stats["readings"].sum()) == len(originals)  # every reading, none twice
    assert_frames_match(result.window_stats[expected.columns], expected)
    latest = result.machine_state.sort_values("last_ts", kind="stable").groupby("machine_id").last()
    assert latest.loc["M1", "seq_resets"] == 2 and latest.loc["M2", "seq_resets"] == 0
    assert latest.loc["M1", "last_seq"] == 199
    # The re-sent readings of an earlier epoch went to the dead letters, saying why.
    assert sorted(d.value for d in result.dead_letters) == sorted(resent)
    assert all(d.reason == LATE and "sequence reset" in d.detail for d in result.dead_letters)


# --- the same outcome for any batch boundaries, against a sequential reference ---------------------------------

DEDUP = 8  # a small window, so that short and long epochs and wrapped slots all occur


def random_stream(seed: int) -> list[dict]:
    """Three devices with 1-3 sequence epochs of random lengths, delivered with reordering, re-sent
    readings (duplicates, some after a reset), a stray high seq and stragglers."""
    rng = random.Random(seed)
    events = []
    for m in range(3):
        ts = T0 + rng.randrange(2_000)
        for _ in range(rng.randint(1, 3)):
            seq = rng.choice([0, 0, 1])
            for _ in range(rng.choice([rng.randint(1, DEDUP), rng.randint(DEDUP, 5 * DEDUP)])):
                events.append(reading(f"M{m}", seq, ts, value=float(rng.randrange(100))))
                seq += 1
                ts += rng.randint(100, 1_500)
            ts += rng.randint(0, 4_000)
        if rng.random() < 0.3:  # a reading with a bogus, far higher seq
            events.append(reading(f"M{m}", 10_000, ts))
    events.sort(key=lambda r: r["ts"])
    stream = list(events)
    for _ in range(len(stream) // 6):  # neighbours swapped in transit
        i = rng.randrange(len(stream) - 1)
        stream[i], stream[i + 1] = stream[i + 1], stream[i]
    for _ in range(len(stream) // 5):  # re-sent, shortly or much later
        i = rng.randrange(len(stream))
        stream.insert(min(len(stream), i + rng.choice([1, 2, rng.randint(3, 60)])), dict(stream[i]))
    return stream


def sequential_reference(stream: list[dict]) -> tuple[list[str], dict[str, int]]:
    """Outcome per reading ("ok", "duplicate", "late") by the documented rules, one reading at a time."""
    machines: dict[str, dict] = {}
    outcomes = []
    for r in stream:
        m = machines.setdefault(r["machine_id"], {"newest": NEVER, "highest": -1, "start": NEVER, "seen": {}, "resets": 0})
        s, t = r["seq"], r["ts"]
        window_late = t - t % W + W + L <= m["newest"]
        seen = m["seen"].get(s % DEDUP) == s // DEDUP
        if not window_late and t > m["newest"] and (s + DEDUP < m["highest"] or seen):
            m.update(highest=-1, start=t, seen={}, resets=m["resets"] + 1)
            seen = False
        if seen:
            outcomes.append("duplicate")
        elif window_late or t < m["start"]:
            outcomes.append("late")
        else:
            m["seen"][s % DEDUP] = max(m["seen"].get(s % DEDUP, -1), s // DEDUP)  # a slot keeps the highest
            m["highest"], m["newest"] = max(m["highest"], s), max(m["newest"], t)
            outcomes.append("ok")
    return outcomes, {machine: m["resets"] for machine, m in machines.items()}


def run_windows(stream: list[dict], cuts: list[int]) -> dict:
    """Feed `stream` to one shard's windows in batches cut at `cuts`; what came out."""
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    windows = ShardWindows(WindowConfig(window_ms=W, lateness_ms=L, idle_close_s=1e9, stale_after_s=1e9,
                                        dedup_seq_window=DEDUP), [], {})
    messages = [encode(r) for r in stream]
    bounds = sorted({0, len(messages), *(c % (len(messages) + 1) for c in cuts)})
    outputs = []
    for a, b in zip(bounds, bounds[1:]):
        batch = batches_of(messages[a:b], b - a)[0]
        batch = type(batch)(batch.topic, batch.partition, list(range(a, b)), batch.values)
        outputs += [windows.add(decoder.decode(batch, now_ms=T0 + 10**9).readings, 0.0), windows.close(0.0)]
    outputs.append(windows.close(0.0, flush_all=True))
    stats = pa.concat_tables([o.window_stats for o in outputs if o.window_stats is not None])
    states = pa.concat_tables([o.machine_state for o in outputs if o.machine_state is not None])
    final_resets = {}
    for row in states.to_pylist():
        final_resets[row["machine_id"]] = row["seq_resets"]
    return {
        "windows": stats.drop_columns(["emitted_at"]).sort_by([("machine_id", "ascending"), ("window_start", "ascending")]),
        "late": sorted(d.offset for o in outputs for d in (o.dead_letters or [])),
        "duplicates": sum(o.duplicates for o in outputs),
        "accepted": sum(o.accepted for o in outputs),
        "resets": sum(o.seq_resets for o in outputs),
        "machine_resets": final_resets,
    }


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), cuts=st.lists(st.integers(0, 10**6), max_size=15))
def test_any_batch_boundaries_give_the_sequential_outcome(seed: int, cuts: list[int]) -> None:
    stream = random_stream(seed)
    outcomes, resets = sequential_reference(stream)
    whole = run_windows(stream, [])
    cut = run_windows(stream, cuts)
    for key in ("late", "duplicates", "accepted", "resets", "machine_resets"):
        assert cut[key] == whole[key], key
    assert cut["windows"].equals(whole["windows"])
    assert whole["late"] == [i for i, o in enumerate(outcomes) if o == "late"]
    assert whole["duplicates"] == outcomes.count("duplicate")
    assert whole["accepted"] == outcomes.count("ok") == int(pc.sum(whole["windows"]["readings"]).as_py())
    assert whole["resets"] == sum(resets.values())
    assert whole["machine_resets"] == resets


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 120])  # 120: a seq re-sent after one `DEDUP` below it
def test_one_reading_per_batch_equals_one_batch(seed: int) -> None:
    stream = random_stream(seed)
    whole = run_windows(stream, [])
    single = run_windows(stream, list(range(len(stream))))
    assert single["windows"].equals(whole["windows"])
    assert {k: v for k, v in single.items() if k != "windows"} == {k: v for k, v in whole.items() if k != "windows"}
    assert whole["resets"] > 0 or seed != 1  # seed 1 has resets, so the comparison is not vacuous


# --- snapshots of the previous version ---------------------------------------------------------------------------

# What ShardWindows pickled before sequence epochs and rule keys (its __dict__ less configuration).
PREVIOUS_STATE_KEYS = {"ids", "index", "types", "max_ts", "closed_until", "last_arrival_s", "stale", "seen_generation",
                       "last_state", "carry", "stream_max_ts", "buffer"}


def as_previous_version(windows: ShardWindows) -> bytes:
    """`windows` snapshotted as the previous version did: a bare duplicate memory, no seq_resets column."""
    restored = pickle.loads(pickle.dumps(windows))
    state = restored.__dict__
    state["seen_generation"] = state.pop("epochs").seen_generation
    del state["rule_keys"]
    del state["early"], state["pending_early"]  # early detection came later still (issue 13)
    state["last_state"].table = state["last_state"].table.drop_columns(["seq_resets"])
    return pickle.dumps(restored)


def test_a_snapshot_of_the_previous_version_restores() -> None:
    dedup = 16
    cfg = WindowConfig(window_ms=W, lateness_ms=L, idle_close_s=1e9, stale_after_s=30.0, dedup_seq_window=dedup)
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    device = rebooting_device((50, 40), gap_ms=5_000)  # restarts far below (0 + 16 < 49)
    quiet = [reading("M2", seq, T0 + seq * 1_000) for seq in range(20)]  # then silent: turns stale
    stream = sorted(device + quiet, key=lambda r: r["ts"])
    split = stream.index(device[45])

    def table(readings: list[dict], offset: int) -> pa.Table:
        batch = batches_of([encode(r) for r in readings], len(readings))[0]
        return decoder.decode(type(batch)(batch.topic, 0, list(range(offset, offset + len(readings))), batch.values),
                              now_ms=T0 + 10**9).readings

    windows = ShardWindows(cfg, [], {})
    windows.add(table(stream[:split], 0), 0.0)
    windows.close(0.0)
    snapshot = as_previous_version(windows)
    assert set(pickle.loads(snapshot).__dict__) - {"config", "rules", "type_of", "_ids_array"} == PREVIOUS_STATE_KEYS

    restored = restore_windows(ShardWindows(cfg, [], {}), snapshot, 0.0)
    assert restored.epochs.max_seq[restored.index["M1"]] == 44  # the highest seq, recovered from the memory
    again = restored.add(table([device[40]], 10_000), 0.0)  # re-sent from before the snapshot: still a duplicate
    assert (again.duplicates, again.accepted) == (1, 0)
    rest = restored.add(table(stream[split:], split), 0.0)
    assert rest.seq_resets == 1 and rest.accepted == len(stream) - split
    states = [restored.close(100.0), restored.close(100.0, flush_all=True)]
    rows = pa.concat_tables([o.machine_state for o in states if o.machine_state is not None]).to_pylist()
    resets = {row["machine_id"]: row["seq_resets"] for row in rows}
    assert resets == {"M1": 1, "M2": 0}
    assert any(row["state"] == "stale" for row in rows), "a stale marker from the restored table"


def test_a_changed_dedup_window_restores() -> None:
    """DEDUP_SEQ_WINDOW changed between runs: the memory starts empty at the new size; the epochs go on."""
    decoder = BatchDecoder(ValidationLimits(max_event_age_ms=0))
    device = rebooting_device((60, 30), gap_ms=5_000)

    def batch(rows: list[dict]) -> pa.Table:
        return decoder.decode(batches_of([encode(r) for r in rows], len(rows))[0], now_ms=T0 + 10**9).readings

    def config(dedup: int) -> WindowConfig:
        return WindowConfig(window_ms=W, lateness_ms=L, idle_close_s=1e9, stale_after_s=1e9, dedup_seq_window=dedup)

    windows = ShardWindows(config(16), [], {})
    windows.add(batch(device[:60]), 0.0)
    restored = restore_windows(ShardWindows(config(8), [], {}), pickle.dumps(windows), 0.0)
    assert restored.epochs.seen_generation.shape[1] == 8 and restored.epochs.max_seq[0] == 59
    again = restored.add(batch(device[52:60]), 0.0)  # remembered across the resize: still duplicates
    assert (again.accepted, again.duplicates) == (0, 8)
    out = restored.add(batch(device[60:]), 0.0)
    assert (out.seq_resets, out.accepted, out.duplicates) == (1, 30, 0)


# --- the ClickHouse column ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_an_existing_machine_state_table_gets_the_column(chdb_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database migrated by the previous version (001-003) gains `seq_resets`; its old rows read 0."""
    from connectors.clickhouse_client import connect
    from plantpulse.settings import Settings

    client = connect(Settings(clickhouse_url=f"chdb://{chdb_dir}"))
    try:
        _upgrade(client, monkeypatch)
    finally:
        client.close()


def _upgrade(client, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import clickhouse_schema
    from plantpulse.schema import MACHINE_STATE_ARROW_SCHEMA

    database = f"seq_resets_upgrade_{random.randrange(10**9)}"
    every = clickhouse_schema.load_migrations()
    monkeypatch.setattr(clickhouse_schema, "load_migrations", lambda: [m for m in every if m.version < 4])
    assert clickhouse_schema.apply_schema(client, database) == [m.version for m in every if m.version < 4]
    now = datetime.now(UTC)
    old_row = {"machine_id": "M1", "machine_type": "pump", "last_ts": now, "last_seq": 7, "status": "running",
               "state": "ok", "updated_at": now}
    previous = pa.schema([f for f in MACHINE_STATE_ARROW_SCHEMA if f.name != "seq_resets"])
    client.insert_arrow("machine_state", pa.Table.from_pylist([old_row], schema=previous), database=database)
    monkeypatch.undo()

    assert clickhouse_schema.apply_schema(client, database) == [m.version for m in every if m.version >= 4]
    assert client.query(f"SELECT seq_resets FROM `{database}`.machine_state FINAL").result_rows == [(0,)]
    columns = [row[0] for row in client.query(f"DESCRIBE TABLE `{database}`.machine_state").result_rows]
    assert columns == [*MACHINE_STATE_ARROW_SCHEMA.names, "ingested_at"]
    new_row = {**old_row, "machine_id": "M2", "seq_resets": 2}
    client.insert_arrow("machine_state", pa.Table.from_pylist([new_row], schema=MACHINE_STATE_ARROW_SCHEMA),
                        database=database)
    rows = client.query(f"SELECT machine_id, seq_resets FROM `{database}`.machine_state FINAL ORDER BY machine_id")
    assert rows.result_rows == [("M1", 0), ("M2", 2)]
