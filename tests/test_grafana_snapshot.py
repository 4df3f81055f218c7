"""`grafana.snapshot`: Fleet now and Machine detail as PNG from the dashboards' SQL, on the seeded database
(`dashboard_db`: a short simulator run with faults and transport imperfections through the real flow).

Also checks the seed itself has what dashboard tests rely on: both kinds of incident (some still open),
stale machines, dead letters of several reasons, duplicates, the hourly rollup and the fleet table.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from connectors.kafka import read_topic
from grafana.snapshot import (
    FLEET_KEYS,
    MACHINE_KEYS,
    collect_snapshot,
    fleet_figure,
    machine_figure,
    panel_interval,
    render_snapshot,
)
from tests.dashboard_seed import SILENT_MACHINES, DashboardSeed, run_panel_sql

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scalar(seed: DashboardSeed, sql: str) -> Any:
    _, rows = run_panel_sql(seed, sql)
    return rows[0][0]


def texts(figure, gid_prefix: str) -> list[str]:
    return [t.get_text() for t in figure.findobj(lambda a: (a.get_gid() or "").startswith(gid_prefix))]


def test_the_seed_has_incidents_stale_machines_dead_letters_and_rollups(dashboard_db: DashboardSeed) -> None:
    seed = dashboard_db
    print(f"seed: {seed.produced.messages} messages, flow {seed.flow_seconds:.1f} s")
    _, kinds = run_panel_sql(seed, "SELECT kind, countIf(status != 'resolved') AS open, count() FROM incidents FINAL "
                                   "GROUP BY kind ORDER BY kind")
    # faults "all" includes the instrument faults: sensor incidents may appear beside the machine-fault kinds
    assert {"anomaly", "threshold"} <= {kind for kind, _, _ in kinds} <= {"anomaly", "sensor", "threshold"}, kinds
    assert sum(open_ for _, open_, _ in kinds) > 0, "some incidents must still be open for the 'now' panels"
    assert scalar(seed, "SELECT count() FROM machines FINAL") == len(seed.machine_ids)
    assert scalar(seed, "SELECT uniqExact(machine_id) FROM window_stats FINAL") == len(seed.machine_ids)
    assert scalar(seed, "SELECT count() FROM window_stats_hourly") > 0
    assert scalar(seed, "SELECT countIf(NOT warming_up) FROM anomaly_scores FINAL") > 0
    silent = seed.machine_ids[-SILENT_MACHINES:]
    _, stale = run_panel_sql(seed, "SELECT machine_id FROM machine_state FINAL WHERE state = 'stale' ORDER BY 1")
    assert set(silent) <= {m for (m,) in stale}, stale
    _, span = run_panel_sql(seed, "SELECT min(window_start), max(window_end) FROM window_stats FINAL")
    low, high = (moment.replace(tzinfo=UTC) for moment in span[0])
    assert seed.time_from <= low and high <= seed.time_to
    # The seed's time_to is the wall clock when it was made (plus a window): the session may be much older now.
    assert seed.time_to - high < timedelta(minutes=5), "event time ends about when the seed was made"
    letters = [dict(r.headers)["reason"].decode() for r in read_topic(seed.settings, seed.settings.deadletter_topic)]
    assert {"late", "not_json", "schema", "ts_future"} <= set(letters), sorted(set(letters))
    assert seed.produced.imperfections.get("duplicate", 0) > 0
    if scalar(seed, "EXISTS TABLE reading_issues"):  # the data-quality migration (006)
        _, reasons = run_panel_sql(seed, "SELECT DISTINCT reason FROM reading_issues FINAL")
        assert {"duplicate", "late", "not_json"} <= {r for (r,) in reasons}, reasons


def test_snapshot_writes_two_non_blank_pngs_of_the_chosen_machine(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    seed = dashboard_db
    # Chosen independently of grafana.snapshot: the machine with the most incidents, the latest on a tie.
    expected = scalar(seed, "SELECT machine_id, count() AS n, max(first_seen_ts) AS latest FROM incidents FINAL "
                            "GROUP BY machine_id ORDER BY n DESC, latest DESC, machine_id LIMIT 1")
    paths = render_snapshot(seed.settings, tmp_path / "out", time_from=seed.time_from, time_to=seed.time_to)
    assert [p.name for p in paths] == ["fleet-now.png", f"machine-{expected}.png"]
    for path, size in zip(paths, [(1600, 1000), (1600, 1200)]):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert image.size == size
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 20, f"{path.name} looks blank"
        assert (pixels < 200).mean() > 0.02, f"{path.name}: too little drawn"


def test_the_drawn_numbers_are_the_databases(dashboard_db: DashboardSeed) -> None:
    seed = dashboard_db
    data = collect_snapshot(seed.settings, time_from=seed.time_from, time_to=seed.time_to)
    failed = {key: panel.error for key, panel in data.panels.items() if panel.error}
    assert failed == {}
    empty = [key for key in FLEET_KEYS + MACHINE_KEYS if not data.panels[key].rows]
    assert empty == [], "every panel has data on the seed"
    assert data.machine_id == seed.incident_machine
    # Every machine known to the fleet table is in exactly one state bar.
    machines = scalar(seed, "SELECT count() FROM machine_state FINAL WHERE machine_id IN (SELECT machine_id FROM machines)")
    drawn = texts(fleet_figure(data), "value:" + data.panels["fleet.machine_states"].title)
    assert sum(int(t) for t in drawn) == machines == len(seed.machine_ids)
    assert texts(fleet_figure(data), "no-data") == []
    assert texts(machine_figure(data), "no-data") == []
    assert len(machine_figure(data).findobj(lambda a: a.get_gid() == "incident")) >= 6  # 6 panels, >= 1 span each


def test_panels_without_rows_say_no_data_and_a_failing_query_says_why(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    from grafana.queries import QUERIES

    seed = dashboard_db
    broken = dict(QUERIES)
    broken["fleet.readings_rate"] = replace(QUERIES["fleet.readings_rate"], sql="SELECT time FROM no_such_table")
    long_ago = seed.time_from - timedelta(days=3)
    data = collect_snapshot(seed.settings, time_from=long_ago, time_to=long_ago + timedelta(hours=1),
                            machine_id="M99999", queries=broken)
    assert data.panels["fleet.readings_rate"].error is not None
    assert all(not data.panels[key].rows for key in MACHINE_KEYS)
    notes = texts(machine_figure(data), "no-data")
    assert notes == ["no data"] * 6  # five sensors and the anomaly score
    assert any(note.startswith("query failed") for note in texts(fleet_figure(data), "no-data"))
    paths = render_snapshot(seed.settings, tmp_path, time_from=long_ago, time_to=long_ago + timedelta(hours=1),
                            machine_id="M99999", queries=broken)
    assert [p.name for p in paths] == ["fleet-now.png", "machine-M99999.png"] and all(p.stat().st_size for p in paths)


def test_a_missing_database_is_an_error_naming_it(dashboard_db: DashboardSeed, tmp_path: Path) -> None:
    settings = dashboard_db.settings.model_copy(update={"clickhouse_database": "no_such_db"})
    with pytest.raises(ValueError, match="no_such_db"):
        render_snapshot(settings, tmp_path, time_from=dashboard_db.time_from, time_to=dashboard_db.time_to)


@pytest.mark.parametrize(("span", "seconds"), [(timedelta(minutes=30), 10), (timedelta(hours=1), 30),
                                                (timedelta(days=1), 600), (timedelta(days=30), 21600)])
def test_the_interval_is_a_round_step_of_about_200_points(span: timedelta, seconds: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert panel_interval(start, start + span) == timedelta(seconds=seconds)
