"""The README's benchmark figures stay true to `bench/results`, and every result says where it came from.

- Every benchmark figure of the README's "Measured performance" section and of its model-quality and
  replay-speed paragraphs is generated from the results files by `python -m bench.readme`; the README must
  equal what the generator renders now, and outside the generated blocks those parts of the README may hold
  no figure but the design constants listed (and checked) here.
- Every section of `bench/results/latest.json`, and of each `run-*.json`, carries its provenance; a
  partial run keeps older sections only under `previous`, and its run file holds only what it measured.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from bench import readme as generator
from bench import results_file
from bench.recovery_store import StoreSampler, measure_store
from bench.run import parse_args, plan, selected

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
# The parts of the README whose figures must come from bench/results: (first line, the line that ends it).
OWNED = (("### Real data: SKAB and NAB", "### Model quality, measured"), ("### Model quality, measured", "**Tests.**"),
         ("## Measured performance", "## What does not run here"))
# Figures allowed outside the generated blocks: design constants, not measurements. Each names where it is
# defined; `expected` (when given) is checked against the results the README quotes.
ALLOWED = {
    "runs from 0 to 1 over an event of 4–10 minutes and `L` is 2.5–4": "the wear curve, sim/faults.py",
    "the whole budget of 1 false alarm per machine-day": "the false-alarm target of bench.model_quality",
    "seeds 101–103": "the held-out seeds of bench.model_quality",
    "(0.05 degC per window)": "sim.signals.SENSOR_NOISE temperature 0.15 degC over a window's 10 readings",
    "at most ~1.25 s": "window close cadence and the ClickHouse sink's one insert per second (design)",
}
PROVENANCE_KEYS = {"date", "commit", "dirty", "command", "reproduce"}


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _owned_text(readme: str) -> str:
    parts = []
    for first, last in OWNED:
        start = readme.index(first)
        parts.append(readme[start: readme.index(last, start)])
    return "\n".join(parts)


def test_readme_benchmark_blocks_are_generated_from_the_results() -> None:
    readme = README.read_text()
    rendered = generator.render(readme, generator.Results.from_files())
    assert rendered == readme, "README.md's benchmark blocks are stale: run `python -m bench.readme`"


def test_no_figure_outside_the_generated_blocks() -> None:
    """A figure typed into these sections by hand has no source: it must be generated (bench/readme.py)."""
    text = _owned_text(README.read_text())
    text = re.sub(r"<!-- bench:(\S+) begin.*?<!-- bench:\1 end -->", " ", text, flags=re.S)
    text = _normal(text)
    for phrase in ALLOWED:
        text = text.replace(phrase, " ")
    text = re.sub(r"`[^`]*`", " ", text)  # commands, paths and config keys, not figures
    stray = [text[max(0, m.start() - 50): m.end() + 30] for m in re.finditer(r"\d[\d,.]*", text)]
    assert stray == [], "README figures without a source (generate them in bench/readme.py):\n" + "\n".join(stray)


def test_allowed_phrases_are_still_in_the_readme_and_true() -> None:
    text = _normal(_owned_text(README.read_text()))
    assert [phrase for phrase in ALLOWED if phrase not in text] == []
    quality = results_file.sections(results_file.load())["model_quality"]
    assert f"seeds {quality['seeds'][0]}–{quality['seeds'][-1]}" in ALLOWED
    assert quality["targets"]["false_alarms_per_machine_day"] == 1.0


def _check_provenance(name: str, section: dict) -> None:
    provenance = section.get("provenance")
    assert provenance is not None, f"section {name} has no provenance"
    assert PROVENANCE_KEYS <= provenance.keys(), f"{name}: provenance lacks {PROVENANCE_KEYS - provenance.keys()}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", provenance["date"]), (name, provenance["date"])
    assert provenance["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", provenance["commit"]), name
    assert provenance["dirty"] in (None, True, False), name
    assert provenance["reproduce"].startswith("python -m bench.run --only "), name


def test_every_section_of_latest_json_says_where_it_came_from() -> None:
    latest = results_file.load()
    measured = [name for name in results_file.SECTIONS if name in latest]
    assert latest["run"]["sections"] == measured
    for name, section in results_file.sections(latest).items():
        _check_provenance(name, section)


def test_run_files_hold_only_what_their_run_measured() -> None:
    run_files = sorted(RESULTS.glob("run-*.json"))
    assert run_files
    for path in run_files:
        run = json.loads(path.read_text())
        assert run["format"] == results_file.FORMAT, path.name
        assert "previous" not in run, path.name
        present = [name for name in results_file.SECTIONS if name in run]
        assert sorted(present) == sorted(run["run"]["sections"]), path.name
        for name in present:
            _check_provenance(f"{path.name}:{name}", run[name])


def test_model_quality_rows_are_those_of_the_quoted_run() -> None:
    rows = json.loads((RESULTS / "model_quality.json").read_text())
    quality = results_file.sections(results_file.load())["model_quality"]
    assert {k: v for k, v in rows.items() if k != "runs"} == quality, (
        "bench/results/model_quality.json is not the run latest.json quotes: "
        "`python -m bench.run --only model-quality`")


def _section(date: str) -> dict:
    return {"provenance": {"date": date, "commit": None, "dirty": None, "command": None,
                           "reproduce": "python -m bench.run --only engine"}, "figure": 1}


def test_a_partial_run_keeps_older_sections_only_under_previous(tmp_path: Path) -> None:
    old = {"format": 2, "run": {"sections": ["engine", "replay"]}, "engine": _section("2026-01-01T00:00:00Z"),
           "replay": _section("2026-01-01T00:00:00Z"), "previous": {"end_to_end": _section("2025-12-01T00:00:00Z")}}
    (tmp_path / "latest.json").write_text(json.dumps(old))
    new_replay = _section("2026-02-01T00:00:00Z")
    latest_path, run_path = results_file.write({"replay": new_replay}, {"date": "2026-02-01T00:00:00Z"},
                                               stamp="20260201T000000", results_dir=tmp_path)
    latest = json.loads(latest_path.read_text())
    assert latest["replay"] == new_replay and "engine" not in latest
    assert latest["previous"] == {"engine": old["engine"], "end_to_end": old["previous"]["end_to_end"]}
    assert latest["run"]["sections"] == ["replay"]
    run = json.loads(run_path.read_text())
    assert run_path.name == "run-20260201T000000.json"
    assert [k for k in run if k in results_file.SECTIONS] == ["replay"]


def test_a_section_without_provenance_is_not_carried() -> None:
    with pytest.raises(ValueError, match="no provenance"):
        results_file.merge({"format": 2, "engine": {"figure": 1}}, {"replay": _section("2026-02-01T00:00:00Z")}, {})


def test_one_section_runs_on_its_own_and_names_its_command() -> None:
    args = parse_args(["--only", "recovery-cost", "--readings", "200000"])
    assert selected(args) == ["recovery-cost"]
    assert plan(args)["recovery-cost"][0] == (
        "python -m bench.run --only recovery-cost --recovery-readings 200000 --machines 10000 --runs 3")
    assert selected(parse_args(["--skip-e2e", "--skip-tuning"])) == ["engine", "recovery-cost", "replay",
                                                                     "model-quality", "soak", "incident-noise",
                                                                     "incident-latency", "dashboard-queries",
                                                                     "real-data", "sim-realism", "device-auth",
                                                                     "live-scaling"]
    assert selected(parse_args(["--only", "incident_noise"])) == ["incident-noise"]
    assert plan(parse_args(["--only", "live-scaling", "--scaling-readings", "5000"]))["live-scaling"][0] == (
        "python -m bench.run --only live-scaling --scaling-readings 5000 --scaling-machines 2000 --runs 3")
    with pytest.raises(SystemExit):
        parse_args(["--only", "engine", "--skip-e2e"])


def test_a_block_without_results_says_how_to_measure_them() -> None:
    latest = results_file.load()
    without_tuning = {k: v for k, v in latest.items() if k != "tuning"}
    without_tuning["previous"] = {k: v for k, v in latest.get("previous", {}).items() if k != "tuning"}
    results = generator.Results(without_tuning, None)
    assert "Not measured yet: `python -m bench.run --only tuning`" in generator.tuning(results)


def test_the_recovery_store_is_measured_per_step(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    flow = Dataflow("store_test")
    numbers = op.input("in", flow, TestingSource([("key", i) for i in range(2_000)]))
    totals = op.stateful_map("sum", numbers, lambda total, value: ((total or 0) + value, value))
    op.output("out", totals, TestingSink([]))
    with StoreSampler(tmp_path, interval_s=0.01) as sampler:
        run_main(flow, epoch_interval=timedelta(milliseconds=1), recovery_config=RecoveryConfig(tmp_path))
    store = measure_store(tmp_path, sampler)
    assert store["bytes_on_disk"] > 0 and store["epochs_committed"] >= 1
    step = next(name for name in store["steps"] if name.startswith("store_test.sum"))
    assert store["steps"][step]["retained_keys"] == 1
    assert store["steps"][step]["largest_epoch_bytes"] > 0
    assert store["largest_epoch_bytes"] >= store["steps"][step]["largest_epoch_bytes"]


def test_the_recovery_store_table_has_a_row_per_step() -> None:
    latest = results_file.load()
    section = json.loads(json.dumps(results_file.sections(latest)["recovery_cost"]))
    section["recovery_store"] = {
        "bytes_on_disk": 150e6, "epochs_committed": 6, "final_snapshot_bytes": 70_001_400,
        "final_snapshot_bytes_by_step": {"flow.windows": 70e6, "flow.lake_out": 1_400},
        "seconds_per_snapshot_from_run_time": 0.25, "pickle_seconds_of_final_snapshot": 0.02,
        "sampled_run": {"largest_snapshot_bytes": 79e6, "epochs_committed": 6, "epochs_seen": 6, "samples": 30,
                        "largest_snapshot_bytes_by_step": {"flow.windows": 79e6, "flow.lake_out": 2_000}},
    }
    block = generator.recovery_cost(generator.Results({"format": 2, "recovery_cost": section, "previous": {}}, None))
    assert "150.0 MB on disk after 6 snapshots" in block and "0.25 s of run time per snapshot" in block
    assert "| `flow.windows` | 70.0 MB | 79.0 MB |" in block
    assert "| `flow.lake_out` | 1.4 kB | 2.0 kB |" in block
    assert "| all steps | 70.0 MB | 79.0 MB |" in block


def _scaling_run(processes: int, rate: int, busy: float, codes: list[int]) -> dict:
    return {"processes": processes, "readings_per_s": rate, "seconds": 1_000_000 / rate, "loadavg_before": [1.5, 1, 1],
            "flow_cpu_cores": 0.9 * processes, "broker_cpu_cores": 0.1, "machine_busy_share": busy,
            "accepted": 1_000_000, "dead_letters": 0, "duplicates": 0, "exit_codes": codes}


def test_the_live_scaling_block_quotes_both_process_counts() -> None:
    from bench.live_scaling import _crossing, total

    assert total([{"x_total": 2.0, 'x_total{reason="a"}': 3.0, "x_totally": 9.0}, None, {"x_total": 1.0}], "x_total") == 6
    assert _crossing([(0.0, 0.0), (1.0, 40.0), (2.0, 120.0)], 80) == 1.5
    one = [_scaling_run(1, rate, 0.6, [0]) for rate in (40_000, 50_000, 45_000)]
    two = [_scaling_run(2, rate, 1.0, [0, -9]) for rate in (60_000, 70_000, 65_000)]
    section = {
        "provenance": {"date": "2026-11-27T01:00:00Z", "commit": None, "dirty": None, "command": None,
                       "reproduce": "python -m bench.run --only live-scaling"},
        "machine": {"cores": 2},
        "input": {"readings": 1_000_000, "machines": 2_000, "partitions": 8, "device_auth": "required"},
        "setup": {"workers_per_process": 1},
        "by_processes": {str(p): {"readings_per_s": runs[2]["readings_per_s"], "seconds": runs[2]["seconds"],
                                  "flow_cpu_cores": 0.9 * p, "broker_cpu_cores": 0.1,
                                  "machine_busy_share": runs[0]["machine_busy_share"], "runs": runs}
                         for p, runs in ((1, one), (2, two))},
        "speedup": 1.44,
        "config": {"stop_grace_s": 20.0},
    }
    block = generator.live_scaling(generator.Results({"format": 2, "live_scaling": section, "previous": {}}, None))
    assert "| 1 | **45,000** | 40k, 50k, 45k |" in block and "| 0.90 | 20 | 0.10 | 60% |" in block
    assert "| 2 | **65,000** | 60k, 70k, 65k |" in block
    assert "| 2 vs 1 | **1.44×** |" in block
    assert "**2 cores**" in block and "all 1,000,000 readings" in block
    assert "range from 60,000 to 70,000 readings/s: the fastest had the flow processes on 1.80 cores (1.56×" in block
    assert "In 3 of 6 runs a process did not exit within 20 s of SIGTERM" in block
