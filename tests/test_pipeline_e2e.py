"""End to end on real parts: simulator -> tansu broker -> the live Bytewax flow -> chDB + Kafka topics.

The simulator records exactly what it sent (with labels and imperfections); every expectation below is
computed from that recording independently of the flow (pandas, plain Python), then compared with what
landed in ClickHouse and in the dead-letter and alerts topics.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main

from connectors.clickhouse import run_sql
from connectors.kafka import read_topic
from flows import metrics
from flows.rules import load_rules
from flows.telemetry import build_flow
from sim import Simulator, build_fleet, produce
from tests.brokerkit import isolated_settings
from tests.reference import threshold_alerts_reference, window_stats_reference

pytestmark = pytest.mark.integration

WINDOW_MS = 10_000
LATENESS_MS = 1_000  # the default ALLOWED_LATENESS_SECONDS
MACHINES = 150
SECONDS = 800  # 150 machines x 800 s = 120k readings (+ imperfection extras)


def expected_acceptance(recording: pd.DataFrame) -> pd.Series:
    """'accepted' / 'duplicate' / 'late' / the malformed reason, per message, by the documented rules:
    walk each machine's messages in send order; a seen (machine, seq) is a duplicate; a reading whose window
    end plus the lateness is not after the newest reading seen before it is late."""
    outcome = pd.Series("accepted", index=recording.index, dtype=object)
    malformed = recording["expected_reason"].notna()
    outcome[malformed] = recording.loc[malformed, "expected_reason"]
    valid = recording[~malformed].sort_values("send_index")
    for _, machine in valid.groupby("machine_id", sort=False):
        seen: set[int] = set()
        newest = None
        for index, ts, seq in zip(machine.index, machine["ts"].tolist(), machine["seq"].tolist()):
            if seq in seen:
                outcome[index] = "duplicate"
                continue
            window_end = ts // WINDOW_MS * WINDOW_MS + WINDOW_MS
            if newest is not None and window_end + LATENESS_MS <= newest:
                outcome[index] = "late"
                continue
            seen.add(seq)
            newest = ts if newest is None else max(newest, ts)
    return outcome


@pytest.fixture(scope="module")
def run(broker, chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from connectors.topics import ensure_topics

    work = tmp_path_factory.mktemp("e2e")
    suffix = uuid.uuid4().hex[:8]
    settings = isolated_settings(
        broker.bootstrap,
        work,
        label="e2e",
        topic_partitions=4,
        clickhouse_url=f"chdb://{chdb_dir}",
        clickhouse_database=f"e2e_{suffix}",
        clickhouse_flush_seconds=0.2,
        machines_file=work / "machines.csv",
        idle_close_seconds=3600,  # no wall-clock closing: the outcome must not depend on machine speed
        metrics_port=0,
    )
    ensure_topics(settings)
    fleet = build_fleet(MACHINES, seed=21)
    simulator = Simulator(
        fleet,
        seed=21,
        faults="all",
        fault_rate=0.3,
        imperfections={"duplicates": 0.01, "late": 0.003, "out_of_order": 0.01, "malformed": 0.003, "clock_skew": 0.05},
    )
    recording_path = work / "run.parquet"
    summary = produce(settings, simulator, duration_s=SECONDS, record_path=recording_path)
    (work / "run.machines.csv").rename(settings.machines_file)

    duplicates_before = metrics.DUPLICATES._value.get()
    run_main(build_flow(settings, tail=False))
    duplicates = metrics.DUPLICATES._value.get() - duplicates_before

    recording = pq.read_table(recording_path).to_pandas()
    return settings, summary, recording, duplicates


def test_window_aggregates_equal_reference(run) -> None:
    settings, summary, recording, _ = run
    outcome = expected_acceptance(recording)
    accepted = recording[outcome == "accepted"]
    assert len(accepted) >= 100_000
    expected = window_stats_reference(accepted, WINDOW_MS)

    columns, rows = run_sql(
        settings, "SELECT * EXCEPT (ingested_at) FROM window_stats FINAL ORDER BY machine_id, window_start"
    )
    actual = pd.DataFrame(rows, columns=columns)
    for column in ("window_start", "window_end", "first_ts", "last_ts", "emitted_at"):
        actual[column] = actual[column].map(lambda t: int(t.timestamp() * 1000))
    actual = actual.sort_values(["machine_id", "window_start"]).reset_index(drop=True)
    expected = expected.sort_values(["machine_id", "window_start"]).reset_index(drop=True)
    assert len(actual) == len(expected)
    for column in expected.columns:
        if expected[column].dtype.kind == "f":
            np.testing.assert_allclose(actual[column].astype(float), expected[column], rtol=1e-9, atol=1e-9, err_msg=column)
        else:
            assert actual[column].tolist() == expected[column].tolist(), column
    types = dict(zip(*(pd.read_csv(settings.machines_file)[c] for c in ("machine_id", "machine_type"))))
    assert actual["machine_type"].tolist() == [types[m] for m in actual["machine_id"]]


def test_bad_late_and_duplicate_records_are_routed_with_reasons(run) -> None:
    settings, _, recording, duplicates = run
    outcome = expected_acceptance(recording)
    letters = read_topic(settings, settings.deadletter_topic)
    by_value = {}
    for record in letters:
        headers = dict(record.headers or [])
        by_value.setdefault(record.value, []).append(headers["reason"].decode())
        assert headers["source_topic"].decode() == settings.telemetry_topic
        assert int(headers["source_offset"].decode()) >= 0
    expected_letters = recording[~outcome.isin(["accepted", "duplicate"])]
    assert len(letters) == len(expected_letters)
    for raw, reason in zip(expected_letters["raw"], outcome[expected_letters.index]):
        assert reason in by_value[raw]
    # Every bad-input category the simulator makes, and late events, really occurred in this run.
    assert {"late", "not_json", "schema", "non_finite", "out_of_range", "bad_machine_id", "bad_status",
            "ts_future", "ts_too_old", "oversized", "unsupported_version"} <= set(outcome)
    assert duplicates == int((outcome == "duplicate").sum()) > 0


def test_critical_faults_raise_expected_alerts_and_no_others(run) -> None:
    settings, _, recording, _ = run
    outcome = expected_acceptance(recording)
    accepted = recording[outcome == "accepted"]
    types = dict(zip(*(pd.read_csv(settings.machines_file)[c] for c in ("machine_id", "machine_type"))))
    expected: set[tuple[str, str, int]] = set()
    for rule in load_rules(settings.rules_file):
        above = rule.threshold if rule.op.startswith(">") else None
        below = rule.threshold if rule.op.startswith("<") else None
        fired = threshold_alerts_reference(
            accepted, WINDOW_MS, rule.sensor, above, below, rule.for_seconds, types, rule.machine_types
        )
        expected |= {(machine, rule.id, ws) for machine, ws in fired}

    columns, rows = run_sql(settings, "SELECT machine_id, rule_id, toUnixTimestamp64Milli(window_start) FROM alerts FINAL "
                           "WHERE kind = 'threshold'")
    actual = {(m, r, int(ws)) for m, r, ws in rows}
    assert actual == expected
    assert len(rows) == len(actual)  # no duplicate alerts

    # Alerts come only from the injected critical faults, and every injected breach raised one.
    labels = pq.read_table(settings.data_dir / "run.labels.parquet").to_pandas()
    critical = labels[labels["fault"].isin(["overheating", "pressure_leak"]) & labels["breach_start_ts"].notna()]
    assert len(critical) > 0
    for machine, _, ws in actual:
        spans = critical[critical["machine_id"] == machine]
        assert ((spans["start_ts"] <= ws + WINDOW_MS) & (ws <= spans["end_ts"])).any(), (machine, ws)
    for label in critical.itertuples():
        long_enough = label.breach_end_ts - label.breach_start_ts >= 30_000
        if long_enough and not label.truncated:
            assert any(m == label.machine_id and label.breach_start_ts <= ws + WINDOW_MS and ws <= label.breach_end_ts
                       for m, _, ws in actual), label

    kafka_alerts = read_topic(settings, settings.alerts_topic)
    _, (total,) = run_sql(settings, "SELECT count() FROM alerts FINAL")
    assert len(kafka_alerts) == total[0]  # threshold and anomaly alerts share the table and the topic



def test_readme_analyst_queries_run_and_return_rows(run) -> None:
    """Every ```sql block of the README runs on the flow's tables; all but the stale query return rows."""
    from connectors.clickhouse import connect, refresh_rollups

    settings, *_ = run
    client = connect(settings)
    try:
        refresh_rollups(client, settings.clickhouse_database)
    finally:
        client.close()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    queries = [block.strip() for block in readme.split("```sql")[1:]]
    queries = [q[: q.index("```")].strip() for q in queries]
    assert len(queries) >= 8
    assert sum("file('/path/to/.plantpulse/lake" in q for q in queries) == 2
    lake_path = settings.lake_url.removeprefix("file://")
    for query in queries:
        query = query.replace("now() - INTERVAL 1 HOUR", "now() - INTERVAL 1 DAY")
        columns, rows = run_sql(settings, query.replace("/path/to/.plantpulse/lake", lake_path))
        assert columns, query
        if "stale" not in query:
            assert rows, query


def test_raw_lake_holds_every_valid_message_once(run) -> None:
    """Every message that passed validation (duplicates and late ones included: the lake is the raw
    record) is in the Parquet lake exactly once, by Kafka (partition, offset)."""
    from connectors.lake import read_lake

    settings, _, recording, _ = run
    lake = read_lake(settings.lake_url).to_pandas()
    valid = recording[recording["expected_reason"].isna()]
    assert len(lake) == len(valid)
    assert not lake.duplicated(["kafka_partition", "kafka_offset"]).any()
    assert sorted(zip(lake["machine_id"], lake["seq"])) == sorted(zip(valid["machine_id"], valid["seq"]))


def test_dead_letters_are_kept_in_the_lake_quarantine(run) -> None:
    from connectors.lake import read_quarantine

    settings, _, recording, _ = run
    outcome = expected_acceptance(recording)
    quarantine = read_quarantine(settings.lake_url).to_pandas()
    expected = recording[~outcome.isin(["accepted", "duplicate"])]
    assert len(quarantine) == len(expected)
    assert sorted(zip(quarantine["value"], quarantine["reason"])) == sorted(
        zip(expected["raw"], outcome[expected.index])
    )
    assert not quarantine.duplicated(["source_partition", "source_offset"]).any()
