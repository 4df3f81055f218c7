"""Anomaly-model quality on the simulator's labelled faults: `python -m bench.model_quality [--seeds ...]`.

One recording per fault kind (bearing_wear, overheating, pressure_leak; one kind per run so precision is
exact) plus a fault-free fleet for false alarms per machine-day, each replayed through `flows.replay`
(the live flow's code) and scored with `models.evaluation`. Seeds used for reporting are not the ones
used while tuning `plantpulse/config/models.toml` (tuning used seeds 1-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from connectors.replay_sources import open_input
from flows.pipeline import PipelineConfig
from flows.replay import replay
from models.evaluation import evaluate
from models.spec import load_model_specs
from plantpulse.settings import PACKAGED_MODELS_FILE, Settings
from sim import Simulator, build_fleet, record_only

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results"
KINDS = ("bearing_wear", "overheating", "pressure_leak", "none")


def measure(kind: str, seed: int, machines: int, minutes: float, overrides: dict[str, str] | None = None) -> dict:
    path = DATA / f"quality-{kind}-{machines}m-{minutes:g}min-s{seed}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        simulator = Simulator(build_fleet(machines, seed), seed=seed, faults=kind, fault_rate=0.0 if kind == "none" else 0.5,
                              imperfections={})
        record_only(simulator, duration_s=minutes * 60, path=path)
    data = open_input(str(path))
    specs = load_model_specs(PACKAGED_MODELS_FILE).with_overrides(overrides or {})
    config = PipelineConfig.from_settings(Settings(machines_file=None, max_event_age_seconds=0))
    config = PipelineConfig(config.limits, config.windows, config.rules, data.machine_types, config.shards, specs)
    started = time.perf_counter()
    out = replay(data.items, config, raw=data.raw)
    seconds = time.perf_counter() - started
    result = evaluate(out.scores, data.labels, window_ms=config.windows.window_ms)
    return {"kind": kind, "seed": seed, "readings": data.readings, "seconds": round(seconds, 2),
            "readings_per_s": round(data.readings / seconds), **result.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--set", action="append", default=[], help="spec override key=value")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    runs = [measure(kind, seed, args.machines, args.minutes, overrides) for seed in args.seeds for kind in KINDS]
    table = []
    for kind in KINDS[:-1]:
        rows = [r["by_fault"][0] for r in runs if r["kind"] == kind and r["by_fault"]]
        table.append({
            "fault": kind,
            "events": sum(r["events"] for r in rows),
            "f1_median": statistics.median(r["f1"] for r in rows),
            "recall_median": statistics.median(r["recall"] for r in rows),
            "precision_median": statistics.median(r["precision"] for r in rows),
            "delay_windows_median": statistics.median(r["median_delay_windows"] for r in rows if r["median_delay_windows"] is not None),
        })
    healthy = [r for r in runs if r["kind"] == "none"]
    summary = {
        "seeds": args.seeds, "machines": args.machines, "minutes": args.minutes, "overrides": overrides,
        "targets": {"f1": 0.9, "delay_windows": 3, "false_alarms_per_machine_day": 1.0},
        "by_fault": table,
        "false_alarms_per_machine_day": statistics.median(r["false_alarms_per_machine_day"] for r in healthy),
        "replay_readings_per_s_median": statistics.median(r["readings_per_s"] for r in runs),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
