"""Lake files: a small file at every snapshot, roll-ups at the row/byte/age thresholds, `plantpulse lake compact`."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from connectors import lake_compact, lake_store
from connectors.lake import FileThresholds, LakeSink, read_lake
from plantpulse.schema import READING_ARROW_SCHEMA
from plantpulse.settings import Settings
from tests.processes import PLANTPULSE, flow_env
from tests.test_lake import HOUR_MS, T0, checksum, crashing_lake_flow, keyset, readings

HOUR = T0 // HOUR_MS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def data_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("dt=*/hour=*/*.parquet"))


def sink(tmp_path: Path, clock: FakeClock | None = None, **limits: float) -> LakeSink:
    thresholds = FileThresholds(**({"max_rows": 10**9, "max_bytes": 2**40, "max_age_s": 10**9} | limits))
    return LakeSink(Settings(data_dir=tmp_path), thresholds=thresholds, clock=clock or FakeClock())


def small_files(root: Path) -> list[str]:
    return [f for f in data_files(root) if "/part-" in f]


def rolled_up(root: Path) -> list[str]:
    return [f for f in data_files(root) if "/compacted-p" in f]


def test_every_snapshot_writes_and_small_files_roll_up_at_the_row_threshold(tmp_path: Path) -> None:
    part = sink(tmp_path, max_rows=1000).build_part("s", "lake-0", None)
    part.write_batch([readings(600, seq0=0)])
    state = part.snapshot()
    root = tmp_path / "lake"
    # Visible at the first snapshot, and the snapshot holds no rows: only counters.
    assert data_files(root) == ["dt=2025-11-24/hour=16/part-000-0000000000.parquet"] and state.seq == 1
    assert state.pending[HOUR].rows == 600 and state.carried == {}
    part.write_batch([readings(600, start_ms=T0 + 600_000, seq0=600)])
    state = part.snapshot()
    assert state.seq == 2 and state.pending == {} and part.roll_ups == 1
    assert small_files(root) == [] and len(rolled_up(root)) == 1
    assert rolled_up(root)[0].startswith("dt=2025-11-24/hour=16/compacted-p000-")
    back = read_lake(f"file://{root}")
    assert back.num_rows == 1200 and keyset(back) == keyset(
        pa.concat_tables([readings(600, seq0=0), readings(600, start_ms=T0 + 600_000, seq0=600)])
    )


def test_byte_and_age_thresholds(tmp_path: Path) -> None:
    one_batch = readings(100)
    by_bytes = sink(tmp_path / "bytes", max_bytes=int(one_batch.drop_columns(["raw"]).nbytes * 2.5))
    part = by_bytes.build_part("s", "lake-0", None)
    for i in range(3):
        part.write_batch([readings(100, start_ms=T0 + i * 100_000, seq0=i * 100)])
        part.snapshot()
    assert part.roll_ups == 1 and part.rows_written == 300
    assert len(rolled_up(tmp_path / "bytes" / "lake")) == 1 and small_files(tmp_path / "bytes" / "lake") == []

    clock = FakeClock()
    part = sink(tmp_path / "age", clock, max_age_s=60).build_part("s", "lake-0", None)
    part.write_batch([readings(10)])
    part.snapshot()
    clock.now += 30
    part.write_batch([readings(10, seq0=10)])
    part.snapshot()
    root = tmp_path / "age" / "lake"
    assert part.rows_written == 20 and len(small_files(root)) == 2, "every snapshot wrote its rows"
    assert part.roll_ups == 0, "nothing is rolled up 30 s after the first file"
    clock.now += 31  # the oldest small file is now 61 s old
    part.write_batch([readings(10, seq0=20)])
    part.snapshot()
    assert part.roll_ups == 1 and small_files(root) == [] and len(rolled_up(root)) == 1
    assert read_lake(f"file://{root}").num_rows == 30


def test_a_roll_up_of_an_uncommitted_sequence_is_undone_on_resume(tmp_path: Path) -> None:
    """The snapshot that writes sequence 1 also rolls sequences 0 and 1 up; the crash comes before that
    snapshot's commit. The resumed sink must take sequence 1's rows back out of the roll-up and rewrite
    them from the replay: exactly once, and the committed rows of sequence 0 stay."""
    lake = sink(tmp_path, max_rows=500)
    first = lake.build_part("s", "lake-0", None)
    a, b, c = readings(300, seq0=0), readings(300, start_ms=T0 + 300_000, seq0=300), readings(50, seq0=600)
    first.write_batch([a])
    committed = first.snapshot()  # seq 0 written
    first.write_batch([b])
    first.snapshot()  # seq 1 written, then 0 + 1 rolled up; never committed
    root = tmp_path / "lake"
    assert first.roll_ups == 1 and small_files(root) == [] and read_lake(f"file://{root}").num_rows == 600
    resumed = lake.build_part("s", "lake-0", committed)
    assert resumed.seq == 1 and read_lake(f"file://{root}").num_rows == 300, "sequence 1 must be gone"
    resumed.write_batch([b, c])  # the replay, batched differently
    resumed.snapshot()
    resumed.close()
    back = read_lake(f"file://{root}")
    want = pa.concat_tables([a, b, c])
    assert back.num_rows == 650 and keyset(back) == keyset(want)


def test_a_failed_roll_up_keeps_the_small_files_and_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = sink(tmp_path, max_rows=150).build_part("s", "lake-0", None)
    real = lake_compact._merge

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError("store refused the roll-up")

    monkeypatch.setattr(lake_compact, "_merge", failing)
    for i in range(2):
        part.write_batch([readings(100, start_ms=T0 + i * 100_000, seq0=i * 100)])
        part.snapshot()
    root = tmp_path / "lake"
    assert part.roll_ups == 0 and len(small_files(root)) == 2 and part.pending_files == 2
    monkeypatch.setattr(lake_compact, "_merge", real)
    part.write_batch([readings(100, start_ms=T0 + 200_000, seq0=200)])
    part.snapshot()
    assert part.roll_ups == 1 and small_files(root) == [] and read_lake(f"file://{root}").num_rows == 300


def test_rows_carried_in_a_snapshot_of_an_earlier_release_are_written_on_resume(tmp_path: Path) -> None:
    """Snapshots of the previous release kept rows waiting for a file inside the state (`carried`, lz4 Arrow
    IPC): a resume from such a snapshot must write them, once."""
    from connectors.lake import CarriedHour, LakeState

    rows = readings(120, seq0=0).drop_columns(["raw"]).cast(READING_ARROW_SCHEMA)
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, rows.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(rows)
    old = LakeState(3, {HOUR: CarriedHour([stream.getvalue().to_pybytes()], 120, rows.nbytes, 0.0)})
    del old.__dict__["pending"]  # as unpickled from the earlier release, which had no such field
    part = sink(tmp_path).build_part("s", "lake-0", old)
    part.snapshot()
    back = read_lake(f"file://{tmp_path / 'lake'}")
    assert back.num_rows == 120 and keyset(back) == keyset(rows)
    assert small_files(tmp_path / "lake") == ["dt=2025-11-24/hour=16/part-000-0000000003.parquet"]


def test_bytewax_recovery_with_roll_ups_is_exactly_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lake_file_max_rows=120, lake_file_max_age_seconds=3600)
    db_dir = tmp_path / "recovery"
    db_dir.mkdir()
    init_db_dir(db_dir, 1)
    batches = [(f"lake-{i % 2}", readings(50, start_ms=T0 + i * 600_000, seq0=i * 50, partition=i % 2))
               for i in range(40)]

    def build(fail_after: int | None) -> Dataflow:
        return crashing_lake_flow(batches, LakeSink(settings, partitions=2), fail_after)

    for fail_after in (17, 12):
        with pytest.raises(Exception, match="crash_midway"):
            run_main(build(fail_after), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db_dir))
    run_main(build(None), epoch_interval=timedelta(0), recovery_config=RecoveryConfig(db_dir))
    back = read_lake(settings.lake_url)
    want = pa.concat_tables([t for _, t in batches])
    assert back.num_rows == want.num_rows and checksum(back) == checksum(want)
    sizes = [pq.read_metadata(tmp_path / "lake" / f).num_rows for f in data_files(tmp_path / "lake")]
    # Each partition gets a 50-row batch every 20 min: an hour's 2-3 small files are rolled up into one.
    assert len(sizes) < 20 and sorted(sizes)[len(sizes) // 2] >= 100, f"small files not rolled up: {sizes}"


# --- compaction ---


def lake_with_scattered_files(tmp_path: Path) -> tuple[Path, pa.Table]:
    """An hour (T0) written by two partitions over four snapshots each: 8 files, rows unsorted."""
    lake = sink(tmp_path)  # thresholds out of reach: no roll-ups
    tables = []
    for partition in (0, 1):
        part = lake.build_part("s", f"lake-{partition}", None)
        for i in range(4):
            t = readings(90, start_ms=T0 + (3 - i) * 700_000 + partition, seq0=partition * 1000 + i * 90,
                         partition=partition)
            tables.append(t)
            part.write_batch([t])
            part.snapshot()
    return tmp_path / "lake", pa.concat_tables(tables)


def test_compaction_merges_sorted_and_is_idempotent(tmp_path: Path) -> None:
    root, want = lake_with_scattered_files(tmp_path)
    assert len(data_files(root)) == 8
    now = (HOUR + 3) * 3600.0
    result = lake_compact.compact_hour(lake_store.open_lake(f"file://{root}")[0], str(root), HOUR, now_s=now,
                                       min_age_s=3600)
    assert (result.note, result.files_before, result.rows) == ("compacted", 8, 720)
    files = data_files(root)
    assert len(files) == 1 and files[0].split("/")[-1].startswith("compacted-")
    table = pq.read_table(root / files[0])
    assert table.schema.remove_metadata().equals(READING_ARROW_SCHEMA)
    expected_order = sorted(zip(want["machine_id"].to_pylist(), want["ts"].cast(pa.int64()).to_pylist(),
                                want["seq"].to_pylist()))
    got = list(zip(table["machine_id"].to_pylist(), table["ts"].cast(pa.int64()).to_pylist(), table["seq"].to_pylist()))
    assert got == expected_order
    before = (root / files[0]).read_bytes()
    again = lake_compact.compact_hour(lake_store.open_lake(f"file://{root}")[0], str(root), HOUR, now_s=now,
                                      min_age_s=3600)
    assert again.note == "already compact" and data_files(root) == files and (root / files[0]).read_bytes() == before
    too_recent = lake_compact.compact_hour(lake_store.open_lake(f"file://{root}")[0], str(root), HOUR,
                                           now_s=(HOUR + 1) * 3600.0 + 10, min_age_s=3600)
    assert too_recent.note == "too recent"


def test_compaction_interrupted_before_the_swap_finishes_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, want = lake_with_scattered_files(tmp_path)
    fs, _ = lake_store.open_lake(f"file://{root}")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("killed between writing the compacted file and deleting the old ones")

    monkeypatch.setattr(lake_compact.store, "remove_quietly", crash)
    with pytest.raises(OSError, match="killed"):
        lake_compact.compact_hour(fs, str(root), HOUR, now_s=1e12, min_age_s=0)
    monkeypatch.undo()
    assert len(data_files(root)) == 9, "old files and the new compacted one are all there"
    back = read_lake(f"file://{root}")
    assert back.num_rows == want.num_rows and keyset(back) == keyset(want), "a reader saw a half state"
    finished = lake_compact.compact_hour(fs, str(root), HOUR, now_s=1e12, min_age_s=0)
    assert finished.note == "finished an interrupted run" and len(data_files(root)) == 1
    assert keyset(read_lake(f"file://{root}")) == keyset(want)


def test_late_files_are_merged_into_the_compacted_one(tmp_path: Path) -> None:
    root, want = lake_with_scattered_files(tmp_path)
    fs, _ = lake_store.open_lake(f"file://{root}")
    lake_compact.compact_hour(fs, str(root), HOUR, now_s=1e12, min_age_s=0)
    late_part = sink(tmp_path).build_part("s", "lake-0", None)
    late = readings(5, start_ms=T0 + 3_000_000, seq0=9000)
    late_part.write_batch([late])
    late_part.snapshot()
    assert len(data_files(root)) == 2
    result = lake_compact.compact_hour(fs, str(root), HOUR, now_s=1e12, min_age_s=0)
    assert result.note == "compacted" and len(data_files(root)) == 1
    back = read_lake(f"file://{root}")
    assert keyset(back) == keyset(pa.concat_tables([want, late.cast(want.schema)]))


def test_resume_after_compaction_of_an_uncommitted_sequence_stays_exactly_once(tmp_path: Path) -> None:
    """The flow wrote a sequence, crashed before committing it, and the hour was compacted while it was
    down. On resume the sink must take that sequence's rows back out of the compacted file."""
    lake = sink(tmp_path)
    part = lake.build_part("s", "lake-0", None)
    a, b = readings(200, seq0=0), readings(100, start_ms=T0 + 200_000, seq0=200)
    other = readings(70, seq0=5000, partition=1)
    part.write_batch([a])
    committed = part.snapshot()
    part.write_batch([b])
    part.snapshot()  # seq 1 (rows b): never committed
    neighbour = lake.build_part("s", "lake-1", None)
    neighbour.write_batch([other])
    neighbour.snapshot()
    root = tmp_path / "lake"
    fs, _ = lake_store.open_lake(f"file://{root}")
    lake_compact.compact_hour(fs, str(root), HOUR, now_s=1e12, min_age_s=0)
    assert read_lake(f"file://{root}").num_rows == 370

    resumed = lake.build_part("s", "lake-0", committed)
    assert read_lake(f"file://{root}").num_rows == 270, "rows of the uncommitted sequence must leave the compacted file"
    resumed.write_batch([b])
    resumed.snapshot()
    back = read_lake(f"file://{root}")
    assert back.num_rows == 370 and keyset(back) == keyset(pa.concat_tables([a, b, other.cast(a.schema)]))
    assert pc.sum(pc.equal(back["kafka_partition"], 1)).as_py() == 70


def test_cli_compacts_a_date(tmp_path: Path) -> None:
    root, want = lake_with_scattered_files(tmp_path)
    env = flow_env(Settings(data_dir=tmp_path), tmp_path, LAKE_URL=f"file://{root}")
    done = subprocess.run(
        [*PLANTPULSE, "lake", "compact", "--date", "2025-11-24"],
        env=env, capture_output=True, check=False, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "hour=16: compacted, 8 -> 1 files, 720 rows" in done.stdout
    assert len(data_files(root)) == 1 and keyset(read_lake(f"file://{root}")) == keyset(want)
    bad = subprocess.run([*PLANTPULSE, "lake", "compact", "--date", "24.11.2025"], env=env, capture_output=True, check=False,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr and "Traceback" not in bad.stderr
    assert os.path.exists(root)
