"""Lake file sizes (row/byte/age thresholds carried across snapshots) and `plantpulse lake compact`."""

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


def test_rows_are_carried_until_the_row_threshold(tmp_path: Path) -> None:
    part = sink(tmp_path, max_rows=1000).build_part("s", "lake-0", None)
    part.write_batch([readings(600, seq0=0)])
    state = part.snapshot()
    assert data_files(tmp_path / "lake") == [] and state.seq == 0 and part.carried_rows == 600
    part.write_batch([readings(600, start_ms=T0 + 600_000, seq0=600)])
    state = part.snapshot()
    assert state.seq == 1 and part.carried_rows == 0
    assert data_files(tmp_path / "lake") == ["dt=2025-11-24/hour=16/part-000-0000000000.parquet"]
    assert read_lake(f"file://{tmp_path / 'lake'}").num_rows == 1200


def test_byte_and_age_thresholds(tmp_path: Path) -> None:
    one_batch = readings(100)
    by_bytes = sink(tmp_path / "bytes", max_bytes=int(one_batch.drop_columns(["raw"]).nbytes * 2.5))
    part = by_bytes.build_part("s", "lake-0", None)
    for i in range(3):
        part.write_batch([readings(100, start_ms=T0 + i * 100_000, seq0=i * 100)])
        part.snapshot()
    assert len(data_files(tmp_path / "bytes" / "lake")) == 1 and part.rows_written == 300

    clock = FakeClock()
    part = sink(tmp_path / "age", clock, max_age_s=60).build_part("s", "lake-0", None)
    part.write_batch([readings(10)])
    part.snapshot()
    clock.now += 30
    part.write_batch([readings(10, seq0=10)])
    part.snapshot()
    assert part.rows_written == 0, "nothing is due 30 s after the first row"
    clock.now += 31  # the oldest row has now waited 61 s
    part.snapshot()
    assert part.rows_written == 20 and len(data_files(tmp_path / "age" / "lake")) == 1


def test_carried_rows_survive_a_crash_exactly_once(tmp_path: Path) -> None:
    """Resume from a state that carries rows: the carry comes back from the state, rows written after
    that snapshot (in an uncommitted sequence) are deleted and replayed."""
    lake = sink(tmp_path, max_rows=500)
    first = lake.build_part("s", "lake-0", None)
    a, b, c = readings(300, seq0=0), readings(300, start_ms=T0 + 300_000, seq0=300), readings(50, seq0=600)
    first.write_batch([a])
    committed = first.snapshot()  # carries a
    first.write_batch([b])
    first.snapshot()  # writes a+b as seq 0; the crash comes before this snapshot's commit
    assert first.rows_written == 600
    resumed = lake.build_part("s", "lake-0", committed)
    assert resumed.seq == 0 and resumed.carried_rows == 300
    assert read_lake(f"file://{tmp_path / 'lake'}").num_rows == 0, "the uncommitted sequence must be gone"
    resumed.write_batch([b, c])  # the replay, batched differently
    resumed.snapshot()
    resumed.close()
    back = read_lake(f"file://{tmp_path / 'lake'}")
    want = pa.concat_tables([a, b, c])
    assert back.num_rows == 650 and keyset(back) == keyset(want)


def test_bytewax_recovery_with_carried_rows_is_exactly_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, lake_file_max_rows=230, lake_file_max_age_seconds=3600)
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
    # Each partition gets a 50-row batch every 20 min: files gather an hour's 2-3 batches, not one each.
    assert len(sizes) < 20 and sorted(sizes)[len(sizes) // 2] >= 100, f"rows not gathered into larger files: {sizes}"


# --- compaction ---


def lake_with_scattered_files(tmp_path: Path) -> tuple[Path, pa.Table]:
    """An hour (T0) written by two partitions over four snapshots each: 8 files, rows unsorted."""
    lake = sink(tmp_path, max_age_s=0)
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
    late_part = sink(tmp_path, max_age_s=0).build_part("s", "lake-0", None)
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
    lake = sink(tmp_path, max_age_s=0)
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
    done = subprocess.run([*PLANTPULSE, "lake", "compact", "--date", "2025-11-24"], env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "hour=16: compacted, 8 -> 1 files, 720 rows" in done.stdout
    assert len(data_files(root)) == 1 and keyset(read_lake(f"file://{root}")) == keyset(want)
    bad = subprocess.run([*PLANTPULSE, "lake", "compact", "--date", "24.11.2025"], env=env, capture_output=True, check=False,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr and "Traceback" not in bad.stderr
    assert os.path.exists(root)
