"""The demo's pure parts: the incident board folded from transition records, the live view's table of open
incidents, the demo's model specs (short warm-up) and routing file, and the local webhook receiver."""

from __future__ import annotations

import io
import tomllib
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from models.spec import load_model_specs
from notify.routing import load_routing
from plantpulse.demo import (
    IncidentBoard,
    NotificationReceiver,
    demo_routes,
    format_age,
    incident_table,
    toml_document,
    write_demo_models,
)
from plantpulse.settings import PACKAGED_MODELS_FILE

NOW_MS = 1_700_000_100_000


def record(machine: str, opened_s: int, version: int = 1, status: str = "open", kind: str = "threshold",
           **extra: Any) -> dict[str, Any]:
    rule = "overheat_critical" if kind == "threshold" else "pump"
    opened_at = NOW_MS - opened_s * 1000
    return {"incident_id": f"{machine}/{rule}/{opened_at}", "version": version, "status": status, "kind": kind,
            "machine_id": machine, "rule_id": rule, "severity": "critical", "opened_at": opened_at,
            "acknowledged_by": None, **extra}


def render(table: Any) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_the_highest_version_is_the_current_state_and_a_record_folded_twice_changes_nothing() -> None:
    board = IncidentBoard()
    opened = record("M1", 30)
    acked = record("M1", 30, version=2, status="acknowledged", acknowledged_by="ana")
    resolved = record("M2", 90, version=3, status="resolved", kind="anomaly")
    board.fold([opened, acked, resolved, record("M2", 90, kind="anomaly")])  # an older version arrives late
    board.fold([acked, opened])  # re-sent after a crash
    assert board.current["M1/overheat_critical/" + str(NOW_MS - 30_000)]["acknowledged_by"] == "ana"
    assert (board.opened, board.resolved) == (2, 1)
    assert [row["machine_id"] for row in board.open_incidents()] == ["M1"]
    assert board.first_opened_at == {"threshold": NOW_MS - 30_000, "anomaly": NOW_MS - 90_000}


def test_the_table_lists_open_incidents_newest_first_capped_with_a_more_line() -> None:
    board = IncidentBoard()
    board.fold(record(f"M{age:02d}", age) for age in range(10, 25))  # 15 open, M10 the newest
    board.fold([record("M10", 10, version=2, status="acknowledged", acknowledged_by="ana"),
                record("M11", 11, version=2, status="resolved")])
    text = render(incident_table(board, NOW_MS, limit=3))
    cells = [line.strip("│ ") for line in text.splitlines()]
    lines = [line for line in cells if line.startswith(("M", "+"))]
    assert [line.split()[0] for line in lines] == ["M10", "M12", "M13", "+11"]
    assert "ana" in lines[0] and "10 s" in lines[0]
    assert "open incidents: 14" in text and "M11" not in text


def test_an_empty_board_has_no_more_line() -> None:
    text = render(incident_table(IncidentBoard(), NOW_MS))
    assert "more" not in text and "open incidents: 0" in text


@pytest.mark.parametrize(("seconds", "text"), [(-1, "0 s"), (42.9, "42 s"), (125, "2 min 05 s"), (7380, "2 h 03 min")])
def test_ages_read_as_seconds_minutes_hours(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_the_demo_model_specs_are_the_source_with_a_short_warm_up_everywhere(tmp_path: Path) -> None:
    source = tmp_path / "models.toml"
    source.write_text("[default]\nwarmup_windows = 20\n[default.min_deviation]\ntemperature = 0.7\n"
                      "[cnc]\nwarmup_windows = 40\n")
    target, default_warmup = write_demo_models(source, tmp_path / "demo-models.toml", warmup_windows=4)
    demo = load_model_specs(target)
    assert default_warmup == 20
    assert [demo.for_type(t).warmup_windows for t in ("default", "cnc", "pump")] == [4, 4, 4]
    assert demo.for_type("cnc").min_deviation == {"temperature": 0.7}


def test_the_packaged_model_specs_make_demo_specs_that_differ_only_in_warm_up(tmp_path: Path) -> None:
    target, _ = write_demo_models(PACKAGED_MODELS_FILE, tmp_path / "demo-models.toml", warmup_windows=4)
    packaged, demo = load_model_specs(PACKAGED_MODELS_FILE), load_model_specs(target)
    for machine_type in ("pump", "compressor", "cnc", "conveyor", "unknown"):
        assert demo.for_type(machine_type) == replace(packaged.for_type(machine_type), warmup_windows=4)


def test_toml_document_round_trips_spec_like_tables() -> None:
    tables = {"default": {"a": 1, "b": 0.5, "c": "x \"q\"", "d": True, "e": ["f", "g"], "sub": {"h": 1e-5}},
              "odd key": {"i": -2}}
    assert tomllib.loads(toml_document(tables)) == tables


def test_the_routing_file_sends_warning_and_critical_incidents_to_the_webhook(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(demo_routes("DEMO_URL"))
    routing = load_routing(path)
    (route,) = routing.routes
    assert routing.channels[route.channels[0]].url_env == "DEMO_URL"
    assert route.match["severity"] == {"warning", "critical"}
    assert {"opened", "escalated"} <= route.transitions


def test_the_receiver_counts_posts_keeps_the_last_text_and_logs_the_bodies(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "notifications.jsonl"
    with NotificationReceiver(log) as receiver:
        for text in ("first", "second"):
            request = urllib.request.Request(receiver.url, data=orjson.dumps({"text": text, "incident_id": "x"}),
                                             method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 204
        assert receiver.snapshot() == (2, "second")
        url = receiver.url
    assert [orjson.loads(line)["text"] for line in log.read_bytes().splitlines()] == ["first", "second"]
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=2)


def test_the_default_demo_stream_opens_both_kinds_of_incident_within_two_minutes(tmp_path: Path) -> None:
    """The README's promise for `make demo`, checked offline: the demo's first 120 s of simulated readings (its
    fleet, seed, fault options and rate; the demo's short model warm-up) through the flow's steps, no broker.
    Live, the flow adds about a second to threshold incidents and a window close to anomaly ones."""
    from bench.incident_noise import pipeline_config, run_flow
    from plantpulse.demo import DEMO_WARMUP_WINDOWS, write_demo_models
    from plantpulse.schema import RawBatch
    from sim import Simulator, build_fleet

    machines, rate, seed, start_ms = 1000, 20_000, 7, 1_764_000_000_000
    fleet = build_fleet(machines, seed)
    simulator = Simulator(fleet, seed=seed, faults="all", fault_rate=0.1, imperfections={}, start_ts_ms=start_ms,
                          interval_ms=machines * 1000 // rate, faults_after_s=DEMO_WARMUP_WINDOWS * 10)
    run = simulator.run(120 * rate // machines)
    models_file, _ = write_demo_models(PACKAGED_MODELS_FILE, tmp_path / "demo-models.toml")
    config = replace(pipeline_config({m.machine_id: m.machine_type for m in fleet}),
                     models=load_model_specs(models_file))
    polls = (RawBatch("demo", -1, list(range(len(batch))), batch.values, batch.keys) for batch in run)
    opened = run_flow(polls, config).states.to_pylist()
    first = {kind: min((r["first_seen_ts"].timestamp() * 1000 - start_ms for r in opened if r["kind"] == kind),
                       default=None) for kind in ("threshold", "anomaly")}
    print("first incidents (ms after start):", first)
    assert first["threshold"] is not None and first["threshold"] < 110_000, first
    assert first["anomaly"] is not None and first["anomaly"] < 110_000, first
