"""`make bench`: engine throughput (project flow vs per-event flow), replay speed, anomaly-model quality on
held-out seeds (`bench.model_quality`) and end-to-end latency.

    python -m bench.run [--readings N] [--machines M] [--runs K] [--skip-e2e] [--skip-replay] [--skip-quality]

Writes `bench/results/latest.json` (and a timestamped copy). Figures are medians of K runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sim import Simulator, build_fleet, record_only

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT / "data"
KEY = ["machine_id", "window_start"]


def recording(readings: int, machines: int, seed: int = 42) -> Path:
    path = DATA / f"fleet-{machines}m-{readings}r-s{seed}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        print(f"recording {readings:,} readings of {machines:,} machines to {path} …", flush=True)
        simulator = Simulator(build_fleet(machines, seed), seed=seed, faults="all", fault_rate=0.05)
        record_only(simulator, count=readings, path=path)
    return path


def run_variant(name: str, data: Path, runs: int) -> tuple[dict, Path]:
    measured = []
    out = RESULTS / f"windows-{name}.parquet"
    for i in range(runs):
        completed = subprocess.run(
            [sys.executable, "-m", "bench.variant", name, str(data), str(out)],
            check=True, capture_output=True, text=True, cwd=ROOT.parent,
        )
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"  {name} run {i + 1}/{runs}: {result['events_per_s']:,} readings/s, {result['seconds']} s, "
              f"peak RSS {result['peak_rss_mb']} MB", flush=True)
        measured.append(result)
    summary = dict(measured[0])
    for field in ("seconds", "events_per_s", "peak_rss_mb", "rss_after_loading_input_mb"):
        summary[field] = statistics.median(m[field] for m in measured)
    summary["runs"] = [{k: m[k] for k in ("seconds", "events_per_s", "peak_rss_mb")} for m in measured]
    return summary, out


def compare(flow_out: Path, per_event_out: Path) -> dict:
    """Both variants must produce the same window rows (same keys, values equal to 1e-9 relative)."""
    a = pq.read_table(flow_out).to_pandas().sort_values(KEY).reset_index(drop=True)
    b = pq.read_table(per_event_out).to_pandas().sort_values(KEY).reset_index(drop=True)
    if len(a) != len(b) or not (a[KEY].values == b[KEY].values).all():
        return {"equal": False, "why": f"window keys differ: {len(a)} vs {len(b)} rows"}
    mismatched = []
    for column in b.columns:
        if column not in a:
            continue
        left, right = a[column], b[column]
        if left.dtype.kind in "fiu" and right.dtype.kind in "fiu":
            if not np.allclose(left.astype(float), right.astype(float), rtol=1e-9, atol=1e-9, equal_nan=True):
                mismatched.append(column)
        elif left.astype(str).tolist() != right.astype(str).tolist():
            mismatched.append(column)
    return {"equal": not mismatched, "rows": len(a), "columns_compared": len(b.columns), "mismatched": mismatched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=2_000_000)
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--per-event-runs", type=int, default=1)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-engine", action="store_true", help="keep the engine figures of latest.json")
    parser.add_argument("--recovery-readings", type=int, default=8_000_000,
                        help="input of the recovery-cost runs: long enough for several 10 s snapshot intervals")
    parser.add_argument("--skip-recovery-cost", action="store_true", help="keep the recovery figures of latest.json")
    parser.add_argument("--skip-replay", action="store_true", help="keep the replay figures of latest.json")
    parser.add_argument("--skip-quality", action="store_true", help="keep the model-quality figures of latest.json")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = json.loads((RESULTS / "latest.json").read_text()) if (RESULTS / "latest.json").exists() else {}
    if args.skip_engine:
        results = dict(previous)
        results.pop("end_to_end", None)
    else:
        results = engine(args)
    if args.skip_recovery_cost:
        if "recovery_cost" in previous:
            results["recovery_cost"] = previous["recovery_cost"]
    else:
        results["recovery_cost"] = recovery_cost(args)
    if args.skip_replay:
        if "replay" in previous:
            results["replay"] = previous["replay"]
    else:
        results["replay"] = replay_speed(args)
    if args.skip_quality:
        if "model_quality" in previous:
            results["model_quality"] = previous["model_quality"]
    else:
        results["model_quality"] = model_quality()
    if args.skip_e2e:
        if "end_to_end" in previous:
            results["end_to_end"] = previous["end_to_end"]
    else:
        from bench.e2e import run_e2e

        print("end-to-end benchmark (embedded broker, chDB):", flush=True)
        results["end_to_end"] = run_e2e()
        results["end_to_end"]["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(results, indent=2)
    (RESULTS / "latest.json").write_text(text + "\n")
    (RESULTS / f"run-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text + "\n")
    print(text)


def engine(args: argparse.Namespace) -> dict:
    data = recording(args.readings, args.machines)
    print("engine benchmark (broker bypassed):", flush=True)
    flow, flow_out = run_variant("flow", data, args.runs)
    per_event, per_event_out = run_variant("per_event", data, args.per_event_runs)
    with_recovery = {name: run_variant(name, data, args.runs)[0] for name in ("flow_recovery_10s", "flow_recovery_1s")}
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count()},
        "input": {"file": data.name, "readings": args.readings, "machines": args.machines},
        "engine": {
            "flow": flow,
            "per_event": per_event,
            "speedup": round(flow["events_per_s"] / per_event["events_per_s"], 2),
            "results_equal": compare(flow_out, per_event_out),
            "recovery_snapshots": {
                name: {
                    "events_per_s": result["events_per_s"],
                    "slowdown_vs_no_recovery": round(1 - result["events_per_s"] / flow["events_per_s"], 3),
                    "runs": result["runs"],
                }
                for name, result in with_recovery.items()
            },
            "targets": {"flow_events_per_s": 300_000, "speedup": 5.0, "peak_rss_mb": 1536},
        },
    }


def _median_of(summaries: list[dict]) -> dict:
    """One summary from single-run summaries of `run_variant`: medians, and every run listed."""
    merged = dict(summaries[0])
    for field in ("seconds", "events_per_s", "peak_rss_mb", "rss_after_loading_input_mb"):
        merged[field] = statistics.median(s[field] for s in summaries)
    merged["runs"] = [run for s in summaries for run in s["runs"]]
    return merged


def recovery_cost(args: argparse.Namespace) -> dict:
    """Throughput of the live flow's stateful parts (windows, rules, raw lake) with and without recovery
    snapshots every 10 s, on an input that lasts several intervals."""
    data = recording(args.recovery_readings, args.machines)
    print("recovery cost (lake sink on, 10 s snapshots):", flush=True)
    # Interleaved (A, B, A, B, ...) so that a noisy stretch of the shared machine hits both variants.
    names = ("flow_lake_10s", "flow_lake_recovery_10s")
    runs = {name: [run_variant(name, data, 1)[0] for _ in [0]] for name in names}
    for _ in range(args.runs - 1):
        for name in names:
            runs[name].append(run_variant(name, data, 1)[0])
    without, with_recovery = (_median_of(runs[name]) for name in names)
    return {
        "input": {"file": data.name, "readings": args.recovery_readings, "machines": args.machines},
        "without_recovery": without,
        "with_recovery_10s": with_recovery,
        "slowdown": round(1 - with_recovery["events_per_s"] / without["events_per_s"], 3),
        "target_slowdown": 0.15,
    }


def replay_speed(args: argparse.Namespace) -> dict:
    """`plantpulse replay`'s flow (decode, windows, rules, anomaly models; one process, one worker) on two
    recordings: the engine input (many machines, 20 windows each: mostly warm-up) and an hour of 500
    machines (360 windows each: models past warm-up, alerts raised)."""
    inputs = {"fleet": recording(args.readings, args.machines), "hour_500_machines": hour_recording()}
    print("replay speed (plantpulse replay's flow, one process):", flush=True)
    out: dict = {"target_events_per_s": 200_000}
    for name, data in inputs.items():
        measured = []
        for i in range(args.runs):
            completed = subprocess.run([sys.executable, "-m", "bench.replay_speed", str(data)], check=True,
                                       capture_output=True, text=True, cwd=ROOT.parent)
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            print(f"  {name} run {i + 1}/{args.runs}: {result['events_per_s']:,} readings/s "
                  f"({result['events_per_s_with_read']:,}/s with reading the file), peak RSS {result['peak_rss_mb']} MB",
                  flush=True)
            measured.append(result)
        summary = dict(measured[0])
        for field in ("seconds", "read_seconds", "events_per_s", "events_per_s_with_read", "peak_rss_mb"):
            summary[field] = statistics.median(m[field] for m in measured)
        summary["runs"] = [{k: m[k] for k in ("seconds", "events_per_s", "peak_rss_mb")} for m in measured]
        out[name] = {"file": data.name, **summary}
    return out


def model_quality() -> dict:
    """`python -m bench.model_quality` (seeds 101-103, never used for tuning): its summary, without the
    per-run rows (those stay in `results/model_quality.json`)."""
    print("model quality (held-out seeds 101-103; a few minutes):", flush=True)
    subprocess.run([sys.executable, "-m", "bench.model_quality", "--speed"], check=True, cwd=ROOT.parent,
                   stdout=subprocess.DEVNULL)
    summary = json.loads((RESULTS / "model_quality.json").read_text())
    for row in summary["by_fault"]:
        print(f"  {row['fault']}: F1 {row['f1']}, median delay {row['median_delay_windows']} windows", flush=True)
        if "median_delay_windows_from_effect" in row:
            print(f"    from its +5 % point: {row['median_delay_windows_from_effect']} windows "
                  f"({row['median_delay_s_from_effect']} s)", flush=True)
    print(f"  healthy: {summary['healthy']['false_alarms_per_machine_day']} false alarms per machine-day", flush=True)
    if "bearing_wear_oracle" in summary:
        oracle = summary["bearing_wear_oracle"]
        print(f"  bearing-wear oracle bound: median delay {oracle['median_delay_windows_window']} windows", flush=True)
    return {key: value for key, value in summary.items() if key != "runs"}


def hour_recording(machines: int = 500, seconds: int = 3600, seed: int = 42) -> Path:
    path = DATA / f"replay-{machines}m-{seconds}s-s{seed}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        print(f"recording {seconds} s of {machines} machines to {path} …", flush=True)
        record_only(Simulator(build_fleet(machines, seed), seed=seed, faults="all", fault_rate=0.1),
                    duration_s=seconds, path=path)
    return path


if __name__ == "__main__":
    main()
