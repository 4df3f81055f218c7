"""`data_quality` (per machine and hour) and `reading_issues` against what the simulator recorded as sent.

The seed (`tests/dashboard_seed.py`) sent a stream with duplicates, late and malformed messages, clean readings
lost on the way, machines quiet for GAP_S mid-run and machines silent before the end; its recording holds
exactly the messages sent. Expectations are computed here from that recording with pandas, independently of
the flow and of the SQL: per machine, accepted readings, duplicates, late readings and the sequence range, and
for each quiet machine the readings it never sent.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests.dashboard_seed import GAP_S, DashboardSeed, run_panel_sql, seed_gaps

ACCEPTED = ("", "out_of_order", "duplicate")  # on time and valid: windowed (a duplicate copy only once)


def _frame(seed: DashboardSeed, sql: str) -> pd.DataFrame:
    columns, rows = run_panel_sql(seed, sql)
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def sent(dashboard_db: DashboardSeed) -> pd.DataFrame:
    if dashboard_db.produced.record_path is None:
        raise RuntimeError("the dashboard seed kept no recording")
    return pd.read_parquet(dashboard_db.produced.record_path,
                           columns=["machine_id", "ts", "seq", "imperfection", "expected_reason"])


@pytest.fixture(scope="module")
def per_machine(dashboard_db: DashboardSeed) -> pd.DataFrame:
    return _frame(dashboard_db, """
        SELECT machine_id, sum(readings) AS readings, sum(late) AS late, sum(duplicates) AS duplicates,
               sum(expected_by_seq) AS expected_by_seq, sum(expected) AS expected, sum(seq_resets) AS seq_resets,
               min(completeness) AS worst
        FROM data_quality GROUP BY machine_id""").set_index("machine_id")


def _expected_per_machine(sent: pd.DataFrame) -> pd.DataFrame:
    valid = sent[sent["imperfection"].isin(ACCEPTED)]
    late = sent[sent["imperfection"] == "late"]
    rows = []
    for machine, mine in valid.groupby("machine_id"):
        seqs = set(mine["seq"])
        late_seqs = set(late.loc[late["machine_id"] == machine, "seq"])
        low, high = min(seqs), max(seqs)
        span = high - low + 1
        rows.append({
            "machine_id": machine,
            "readings": len(seqs),
            "duplicates": len(mine) - len(seqs),
            "late": len(late_seqs),
            "expected_by_seq": span,
            # Sequence numbers inside the machine's range that never arrived at all: lost in transport.
            "lost": span - len(seqs | {s for s in late_seqs if low <= s <= high}),
        })
    return pd.DataFrame(rows).set_index("machine_id")


def test_counts_per_machine_match_the_recording(per_machine: pd.DataFrame, sent: pd.DataFrame) -> None:
    expected = _expected_per_machine(sent)
    assert sorted(per_machine.index) == sorted(expected.index)
    got = per_machine.loc[expected.index]
    for column in ("readings", "duplicates", "late", "expected_by_seq"):
        assert got[column].astype(int).tolist() == expected[column].tolist(), column
    assert (got["seq_resets"] == 0).all()  # the simulator never restarts a counter
    # Positive controls: the seed has every kind of gap this compares.
    assert expected["lost"].sum() > 0 and expected["duplicates"].sum() > 0 and expected["late"].sum() > 0
    missing = got["expected_by_seq"].astype(int) - got["readings"].astype(int) - got["late"].astype(int)
    assert missing.tolist() == expected["lost"].tolist()


def test_dead_letters_by_reason_match_the_malformed_messages_sent(dashboard_db: DashboardSeed,
                                                                  sent: pd.DataFrame) -> None:
    issues = _frame(dashboard_db, "SELECT reason, count() AS n FROM reading_issues FINAL "
                                  "WHERE reason NOT IN ('late', 'duplicate', 'seq_reset') GROUP BY reason")
    malformed = sent[sent["imperfection"].str.startswith("malformed:")]
    assert len(malformed) > 0
    assert dict(zip(issues["reason"], issues["n"])) == malformed["expected_reason"].value_counts().to_dict()
    # The per-machine table counts those that name a real machine of the fleet; none is counted twice.
    attributed = _frame(dashboard_db, "SELECT sum(dead_letters) AS n FROM data_quality")["n"].iloc[0]
    named = _frame(dashboard_db, "SELECT count() AS n FROM reading_issues FINAL WHERE machine_id != '' AND "
                                 "reason NOT IN ('late', 'duplicate', 'seq_reset')")["n"].iloc[0]
    assert 0 < attributed == named < len(malformed)


def test_machines_quiet_mid_run_are_incomplete_by_their_reporting_interval(
    dashboard_db: DashboardSeed, per_machine: pd.DataFrame, sent: pd.DataFrame
) -> None:
    """A quiet device uses up no sequence numbers, so only the interval shows the GAP_S readings it never sent;
    a machine without gaps, lost readings or faults is complete in every hour."""
    machine_ids = sorted(sent["machine_id"].unique())
    quiet, silent = (
        [machine_ids[i] for i in indices] for indices in seed_gaps().machines(len(machine_ids))
    )
    expected = _expected_per_machine(sent)
    labels = pd.read_parquet(dashboard_db.produced.labels_path) if dashboard_db.produced.labels_path else pd.DataFrame()
    dropped_out = set(labels.loc[labels["fault"] == "dropout", "machine_id"]) if len(labels) else set()
    checked = 0
    for machine in quiet:
        if machine in dropped_out:
            continue  # a dropout fault would add silent ticks of its own
        got = per_machine.loc[machine]
        unsent = int(got["expected"]) - int(got["readings"]) - int(got["late"])
        hours = len(_frame(dashboard_db, f"SELECT hour FROM data_quality WHERE machine_id = '{machine}'"))
        # GAP_S ticks of 1 s plus the lost ones; rounding of the covered time may move one reading per hour.
        assert abs(unsent - (GAP_S + int(expected.loc[machine, "lost"]))) <= hours, (machine, unsent)
        assert got["worst"] < 0.99
        checked += 1
    assert checked > 0
    below = set(_frame(dashboard_db, "SELECT DISTINCT machine_id FROM data_quality WHERE completeness < 0.99")["machine_id"])
    assert {m for m in quiet if m not in dropped_out} <= below
    clean = [m for m in machine_ids if m not in quiet and m not in silent and m not in set(labels.get("machine_id", []))
             and expected.loc[m, "lost"] == 0]
    assert clean, "the seed has no machine without gaps"
    assert (per_machine.loc[clean, "worst"] == 1.0).all(), per_machine.loc[clean]


def _issue_stream() -> tuple[list[bytes], set[tuple]]:
    """Four machines at 1 reading/s, with by-hand imperfections, and the issue rows they must give:
    (reason, machine_id, seq, offset)."""
    from tests.flowkit import encode

    base = 1_700_000_000_000
    reading = {"v": 1, "status": "running", "temperature": 60.0, "pressure": 5.0, "vibration": 1.0,
               "rpm": 1500.0, "power": 10.0}
    messages: list[bytes] = []
    expected: set[tuple] = set()

    def send(message: bytes, issue: tuple | None = None) -> None:
        if issue is not None:
            expected.add((*issue, len(messages)))
        messages.append(message)

    for tick in range(120):
        for m in range(4):
            machine = f"M{m}"
            seq = tick if not (m == 1 and tick >= 80) else tick - 80  # M1's counter restarts at tick 80
            send(encode({**reading, "machine_id": machine, "ts": base + tick * 1000, "seq": seq}),
                 ("seq_reset", machine, 0) if m == 1 and tick == 80 else None)
            if m == 2 and tick % 25 == 5:  # a copy re-sent right away
                send(encode({**reading, "machine_id": machine, "ts": base + tick * 1000, "seq": seq}),
                     ("duplicate", machine, seq))
        if tick == 70:  # M3's reading of tick 20 arrives 50 s late
            send(encode({**reading, "machine_id": "M3", "ts": base + 20_500, "seq": 1_000}), ("late", "M3", 1_000))
        if tick == 90:
            send(b"\x00not json", ("not_json", "", None))
            send(encode({**reading, "machine_id": "M0", "ts": base + tick * 1000, "seq": 5_000, "rpm": -5.0}),
                 ("out_of_range", "M0", 5_000))
    return messages, expected


@pytest.mark.parametrize(("workers", "batch"), [(1, 7), (1, 200), (3, 13)])
def test_issue_rows_do_not_depend_on_workers_or_batches(workers: int, batch: int) -> None:
    """Duplicates, a sequence restart, a late reading and invalid messages give exactly their issue rows (by
    hand above), whatever the batch boundaries and whichever worker holds the machines."""
    from tests.flowkit import batches_of, config, run_pipeline

    messages, expected = _issue_stream()
    result = run_pipeline(batches_of(messages, batch), config(lateness_ms=1_000, shards=5), workers=workers)
    issues = result.reading_issues
    got = {(r.reason, r.machine_id, None if pd.isna(r.seq) else int(r.seq), int(r.offset))
           for r in issues.itertuples()}
    assert len(issues) == len(got)  # each message once
    assert got == expected
    assert (issues["partition"] == 0).all() and (issues["topic"].isin(["telemetry", ""])).all()
