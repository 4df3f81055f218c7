"""The dashboard-query bench (`bench/dashboard_queries.py`) on a tiny fleet: every query is timed, in both ranges.

20 machines for 5 minutes of event time (faults from the start, on a quarter of them) through the session's
broker and the real flow into a database of its own in the session's chDB; each query runs twice. The full
size (500 machines, an hour) is `python -m bench.run --only dashboard-queries`.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from bench import dashboard_queries
from bench.dashboard_seed import SeedConfig
from bench.readme_dashboard import dashboard_queries as readme_block
from bench.readme_format import Results
from connectors.broker import EmbeddedBroker
from grafana.queries import QUERIES


def _check_timed(key: str, figures: dict, runs: int) -> None:
    assert len(figures["runs_ms"]) == runs, key
    assert all(ms > 0 for ms in figures["runs_ms"]), key
    assert 0 < figures["median_ms"] <= figures["max_ms"] == max(figures["runs_ms"]), key
    assert isinstance(figures["rows"], int) and figures["rows"] >= 0, key
    assert figures["estimated_rows_read"] is None or figures["estimated_rows_read"] >= 0, key


def test_every_query_is_timed_on_a_tiny_fleet(broker: EmbeddedBroker, chdb_dir: Path, tmp_path: Path) -> None:
    config = replace(SeedConfig.sized(20, 5.0), faults_after_s=0.0, fault_rate=0.25)
    runs = 2
    section = dashboard_queries.run(config, tmp_path, chdb_dir, broker.bootstrap,
                                    database=f"bench_dq_{uuid.uuid4().hex[:8]}", runs=runs)

    ingestion = section["ingestion"]
    assert ingestion["readings"] > 5_000 and ingestion["flow_seconds"] > 0 and ingestion["flow_readings_per_s"] > 0
    assert section["stored_rows"]["window_stats"] > 0 and section["stored_rows"]["window_stats_hourly"] > 0
    panels = [key for key in QUERIES if not key.startswith("alert.")]
    alerts = [key for key in QUERIES if key.startswith("alert.")]
    assert alerts and set(section["ranges"]) == {"1h", "24h"}
    for name, timed in section["ranges"].items():
        assert list(timed["queries"]) == panels, name
        for key, figures in timed["queries"].items():
            _check_timed(f"{name} {key}", figures, runs)
        medians = [figures["median_ms"] for figures in timed["queries"].values()]
        assert [q["median_ms"] for q in timed["slowest"]] == sorted(medians, reverse=True)[:3], name
    assert list(section["alert_rules"]["queries"]) == alerts
    for key, figures in section["alert_rules"]["queries"].items():
        _check_timed(key, figures, runs)
        assert figures["rows"] == 1, key  # an alert condition is one row with one value
    hour, day = section["ranges"]["1h"]["queries"], section["ranges"]["24h"]["queries"]
    assert hour["fleet.machine_states"]["rows"] > 0 and hour["machine.sensor.temperature"]["rows"] > 0
    # The long range reads the hourly rollup instead of the 10-s windows.
    assert day["fleet.readings_rate"]["estimated_rows_read"] < hour["fleet.readings_rate"]["estimated_rows_read"]
    slowest = section["slowest_panel_query_1h"]
    assert slowest == {"key": section["ranges"]["1h"]["slowest"][0]["key"], "median_ms": max(
        figures["median_ms"] for figures in hour.values())}

    provenance = {"date": "2026-01-01T00:00:00Z", "commit": None, "dirty": None, "command": None,
                  "reproduce": dashboard_queries.reproduce()}
    block = readme_block(Results({"format": 2, "dashboard_queries": {"provenance": provenance, **section},
                                  "previous": {}}, None))
    assert f"slowest **`{slowest['key']}`" in block
    assert all(f"| `{key}` |" in block for key in panels)
