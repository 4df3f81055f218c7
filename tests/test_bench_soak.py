"""The soak bench's results code, on a tiny synthetic series (no broker, no flow, nothing timed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bench import readme as generator
from bench.soak import COLUMNS, IncidentTail, Recording, SoakConfig, section, summarise, write_series


def _series() -> list[dict]:
    # Three minutes at one sample per 30 s; the lag rises in minute 3.
    lags = [1.5, 1.7, 1.6, 1.8, 4.0, 9.0]
    return [{"t_s": 30.0 * (i + 1), "event_time_lag_s": lag, "consumer_lag_msgs": 100 * i, "accepted_per_s": 20_000,
             "flow_rss_mb": 700 + i, "broker_rss_mb": None, "store_mb": 100.0, "incidents_opened": 0}
            for i, lag in enumerate(lags)]


def test_per_minute_medians_and_maxima() -> None:
    openings = [(60.0, 12.0, "threshold"), (90.0, 14.0, "threshold"), (150.0, 20.0, "anomaly")]
    summary = summarise(_series(), openings, every_s=30)
    minutes = summary["per_minute"]
    assert [m["minute"] for m in minutes] == [1, 2, 3]  # t = 60 s belongs to minute 1, t = 90 s to minute 2
    assert minutes[0]["event_time_lag_s"] == {"median": 1.6, "max": 1.7}
    assert minutes[2]["event_time_lag_s"] == {"median": 6.5, "max": 9.0}
    assert minutes[0]["incident_latency_s"] == {"median": 12.0, "max": 12.0}
    assert [m["incidents_opened"] for m in minutes] == [1, 1, 1]
    assert "broker_rss_mb" not in minutes[0]  # not measured (external broker): left out, not zero
    assert summary["overall"]["consumer_lag_msgs"]["max"] == 500
    incidents = summary["incidents"]
    assert incidents["opened_seen"] == 3 and incidents["latency_s"]["max"] == 20.0
    assert incidents["by_kind"]["threshold"] == {"opened_seen": 2, "median": 13.0, "max": 14.0}


def test_no_incidents_is_reported_not_an_error(tmp_path: Path) -> None:
    series = write_series(_series(), tmp_path / "soak.csv")
    result = section(SoakConfig(minutes=3), Recording(samples=_series()), series)
    assert result["incidents"] == {"opened_seen": 0, "note": "no incidents seen"}
    assert "ended_early" not in result
    rows = list(csv.DictReader(series.open()))
    assert list(rows[0]) == list(COLUMNS) and rows[-1]["event_time_lag_s"] == "9.0"
    json.dumps(result)  # what latest.json will hold
    stopped = section(SoakConfig(minutes=3), Recording(samples=_series(), ended_early="the flow exited"), series)
    assert stopped["ended_early"] == "the flow exited"


def test_incident_tail_keeps_openings_of_this_run_only() -> None:
    tail = IncidentTail({}, "incidents", since_ms=1_000_000)
    record = {"transition": "opened", "first_seen_ts": 1_000_000, "at": 1_002_000, "kind": "threshold"}
    tail._record(json.dumps(record).encode(), received_s=1_003.5)
    tail._record(json.dumps({**record, "transition": "escalated"}).encode(), received_s=1_004.0)
    tail._record(json.dumps({**record, "at": 999_000}).encode(), received_s=1_004.0)  # before the soak started
    tail._record(b"not json", received_s=1_004.0)
    assert tail.take() == [(1_003.5, 3.5, "threshold")]
    assert tail.take() == []


def test_the_readme_block_renders_with_and_without_results() -> None:
    results = generator.Results({"format": 2, "previous": {}}, None)
    assert "Not measured yet: `python -m bench.run --only soak`" in generator.soak(results)
    summary = summarise(_series(), [], every_s=30)
    provenance = {"date": "2026-11-26T14:00:00Z", "commit": "0" * 40, "dirty": False,
                  "reproduce": "python -m bench.run --only soak --soak-minutes 3 --soak-rate 20000"}
    soak = {"provenance": provenance, "config": {**SoakConfig(minutes=3).__dict__, "partitions": 8},
            "series_file": "bench/results/soak/x.csv", **summary}
    block = generator.soak(generator.Results({"format": 2, "soak": soak, "previous": {}}, None))
    assert "No incidents seen" in block and "9.0 s" in block
