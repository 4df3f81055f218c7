"""The sections of `make bench`, each measured in processes of its own; `bench.run` chooses and records them.

Every function returns one section of `bench/results/latest.json` (without its provenance).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sim import Simulator, build_fleet, record_only

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DATA = BENCH / "data"
KEY = ["machine_id", "window_start"]
_MEDIANS = ("seconds", "events_per_s", "peak_rss_mb", "rss_after_loading_input_mb")


def recording(readings: int, machines: int, seed: int = 42) -> Path:
    path = DATA / f"fleet-{machines}m-{readings}r-s{seed}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        print(f"recording {readings:,} readings of {machines:,} machines to {path} …", flush=True)
        simulator = Simulator(build_fleet(machines, seed), seed=seed, faults="all", fault_rate=0.05)
        record_only(simulator, count=readings, path=path)
    return path


def hour_recording(machines: int = 500, seconds: int = 3600, seed: int = 42) -> Path:
    path = DATA / f"replay-{machines}m-{seconds}s-s{seed}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        print(f"recording {seconds} s of {machines} machines to {path} …", flush=True)
        record_only(Simulator(build_fleet(machines, seed), seed=seed, faults="all", fault_rate=0.1),
                    duration_s=seconds, path=path)
    return path


def _last_json_line(command: list[str], *, progress: bool = False) -> dict:
    """The last stdout line of `command`, as JSON; with `progress` its stderr goes to ours as it runs."""
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE,
                               stderr=None if progress else subprocess.PIPE, text=True, cwd=BENCH.parent)
    lines = completed.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{' '.join(command)} printed nothing; stderr: {(completed.stderr or '')[-2000:]}")
    return json.loads(lines[-1])


def run_variant(name: str, data: Path, runs: int, *, sample_store: bool = False) -> tuple[dict, Path]:
    """`runs` runs of one `bench.variant`, each in its own process: the medians, and every run listed (with
    its recovery-store report, for variants that have a store)."""
    measured = []
    out = RESULTS / f"windows-{name}.parquet"
    for i in range(runs):
        command = [sys.executable, "-m", "bench.variant", name, str(data), str(out)]
        result = _last_json_line(command + ["--sample-store"] if sample_store else command)
        print(f"  {name} run {i + 1}/{runs}: {result['events_per_s']:,} readings/s, {result['seconds']} s, "
              f"peak RSS {result['peak_rss_mb']} MB", flush=True)
        measured.append(result)
    return _median_of(measured), out


def _median_of(measured: list[dict]) -> dict:
    """Medians of single runs (or of summaries of runs), with every run listed."""
    summary = {key: value for key, value in measured[0].items() if key not in ("recovery_store", "runs")}
    for field in _MEDIANS:
        summary[field] = statistics.median(m[field] for m in measured)
    summary["runs"] = [run for m in measured for run in m.get("runs", [_run_entry(m)])]
    return summary


def _run_entry(result: dict) -> dict:
    entry = {k: result[k] for k in ("seconds", "events_per_s", "peak_rss_mb")}
    if "recovery_store" in result:
        entry["recovery_store"] = result["recovery_store"]
    return entry


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


def engine(readings: int, machines: int, runs: int, per_event_runs: int) -> dict:
    data = recording(readings, machines)
    print("engine benchmark (broker bypassed):", flush=True)
    flow, flow_out = run_variant("flow", data, runs)
    per_event, per_event_out = run_variant("per_event", data, per_event_runs)
    with_recovery = {name: run_variant(name, data, runs)[0] for name in ("flow_recovery_10s", "flow_recovery_1s")}
    return {
        "machine": {"cores": os.cpu_count()},
        "input": {"file": data.name, "readings": readings, "machines": machines},
        "flow": flow,
        "per_event": per_event,
        "speedup": round(flow["events_per_s"] / per_event["events_per_s"], 2),
        "results_equal": compare(flow_out, per_event_out),
        "recovery_snapshots": {
            name: {
                "events_per_s": result["events_per_s"],
                "seconds": result["seconds"],
                "peak_rss_mb": result["peak_rss_mb"],
                "slowdown_vs_no_recovery": round(1 - result["events_per_s"] / flow["events_per_s"], 3),
                "runs": result["runs"],
            }
            for name, result in with_recovery.items()
        },
        "targets": {"flow_events_per_s": 300_000, "speedup": 5.0, "peak_rss_mb": 1536},
    }


def _interleaved(names: tuple[str, ...], data: Path, runs: int) -> list[dict]:
    """`runs` runs of each variant, interleaved (A, B, A, B, ...) so that a noisy stretch of the shared machine
    hits all of them; the medians per variant, in `names` order."""
    measured: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            measured[name].append(run_variant(name, data, 1)[0])
    return [_median_of(measured[name]) for name in names]


def device_auth(readings: int, machines: int, runs: int) -> dict:
    """The engine flow with and without device-signature verification (every message signed by its machine's
    key, verified in the decode step), interleaved so a noisy stretch of the shared machine hits both."""
    data = recording(readings, machines)
    print("device signature verification (engine flow, broker bypassed):", flush=True)
    unsigned, signed = _interleaved(("flow", "flow_signed"), data, runs)
    return {
        "input": {"file": data.name, "readings": readings, "machines": machines},
        "unsigned": unsigned,
        "signed": signed,
        "throughput_loss": round(1 - signed["events_per_s"] / unsigned["events_per_s"], 3),
        "verify_us_per_message": round((signed["seconds"] - unsigned["seconds"]) / readings * 1e6, 2),
        "target_loss": 0.20,
    }


def recovery_cost(readings: int, machines: int, runs: int) -> dict:
    """Throughput of the live flow's stateful parts (windows, rules, raw lake) with and without recovery
    snapshots every 10 s, on an input that lasts several intervals; and the recovery store those runs left:
    its size on disk, the largest snapshot per step, and the time one snapshot costs."""
    data = recording(readings, machines)
    print("recovery cost (lake sink on, 10 s snapshots):", flush=True)
    names = ("flow_lake_10s", "flow_lake_recovery_10s")
    without, with_recovery = _interleaved(names, data, runs)
    stores = [run["recovery_store"] for run in with_recovery["runs"]]
    epochs = statistics.median(store["epochs_committed"] for store in stores)
    extra_seconds = with_recovery["seconds"] - without["seconds"]
    # Each epoch's snapshot is read while a separate run goes on: not timed, its size on disk not counted.
    sampled = run_variant(names[1], data, 1, sample_store=True)[0]["runs"][0]["recovery_store"]
    for store in stores:
        print(f"  store: {store['bytes_on_disk']:,} bytes on disk after {store['epochs_committed']} epochs, final "
              f"snapshot {store['snapshot_bytes_retained']:,} bytes", flush=True)
    print(f"  sampled run: largest snapshot of an epoch {sampled['largest_epoch_bytes']:,} bytes", flush=True)
    return {
        "input": {"file": data.name, "readings": readings, "machines": machines},
        "without_recovery": without,
        "with_recovery_10s": with_recovery,
        "slowdown": round(1 - with_recovery["events_per_s"] / without["events_per_s"], 3),
        "target_slowdown": 0.15,
        "recovery_store": {  # medians over the timed runs with recovery
            "bytes_on_disk": statistics.median(store["bytes_on_disk"] for store in stores),
            "epochs_committed": epochs,
            "final_snapshot_bytes": statistics.median(store["snapshot_bytes_retained"] for store in stores),
            "final_snapshot_bytes_by_step": {
                step: statistics.median(store["steps"].get(step, {}).get("retained_bytes", 0) for store in stores)
                for step in sorted({step for store in stores for step in store["steps"]})
            },
            # What recovery adds to the run time, spread over its snapshots (medians of the interleaved runs).
            "seconds_per_snapshot_from_run_time": round(extra_seconds / epochs, 3) if epochs else None,
            "pickle_seconds_of_final_snapshot": statistics.median(s["pickle_seconds_retained"] for s in stores),
            "sampled_run": {
                "largest_snapshot_bytes": sampled["largest_epoch_bytes"],
                "largest_snapshot_bytes_by_step": {
                    step: figures.get("largest_epoch_bytes", 0) for step, figures in sampled["steps"].items()},
                "epochs_committed": sampled["epochs_committed"],
                "epochs_seen": sampled["epochs_seen"],
                "samples": sampled["samples"],
            },
        },
    }


def replay_speed(readings: int, machines: int, runs: int) -> dict:
    """`plantpulse replay`'s flow (decode, windows, rules, anomaly models; one process, one worker) on two
    recordings: the engine input (many machines, 20 windows each: mostly warm-up) and an hour of 500
    machines (360 windows each: models past warm-up, alerts raised)."""
    inputs = {"fleet": recording(readings, machines), "hour_500_machines": hour_recording()}
    print("replay speed (plantpulse replay's flow, one process):", flush=True)
    out: dict = {"target_events_per_s": 200_000}
    for name, data in inputs.items():
        measured = []
        for i in range(runs):
            result = _last_json_line([sys.executable, "-m", "bench.replay_speed", str(data)])
            print(f"  {name} run {i + 1}/{runs}: {result['events_per_s']:,} readings/s "
                  f"({result['events_per_s_with_read']:,}/s with reading the file), "
                  f"peak RSS {result['peak_rss_mb']} MB", flush=True)
            measured.append(result)
        summary = dict(measured[0])
        for field in ("seconds", "read_seconds", "events_per_s", "events_per_s_with_read", "peak_rss_mb"):
            summary[field] = statistics.median(m[field] for m in measured)
        summary["runs"] = [{k: m[k] for k in ("seconds", "events_per_s", "peak_rss_mb")} for m in measured]
        out[name] = {"file": data.name, **summary}
    return out


def model_quality() -> dict:
    """`python -m bench.model_quality --speed` (seeds 101-103, never used for tuning): its summary, without the
    per-run rows (those stay in `results/model_quality.json`)."""
    print("model quality (held-out seeds 101-103; a few minutes):", flush=True)
    subprocess.run([sys.executable, "-m", "bench.model_quality", "--speed"], check=True, cwd=BENCH.parent,
                   stdout=subprocess.DEVNULL)
    summary = json.loads((RESULTS / "model_quality.json").read_text())
    for row in summary["by_fault"]:
        print(f"  {row['fault']}: F1 {row['f1']}, median delay {row['median_delay_windows']} windows", flush=True)
    print(f"  healthy: {summary['healthy']['false_alarms_per_machine_day']} false alarms per machine-day", flush=True)
    return {key: value for key, value in summary.items() if key != "runs"}


def tuning() -> dict:
    """`python -m bench.tuning`: the spec variants behind the packaged spec, on the tuning seeds 1-3."""
    print("spec variants on the tuning seeds (bench.tuning; a few minutes):", flush=True)
    return _last_json_line([sys.executable, "-m", "bench.tuning"], progress=True)


def end_to_end() -> dict:
    from bench.e2e import run_e2e  # starts a broker; imported only when this section runs

    print("end-to-end benchmark (embedded broker, chDB):", flush=True)
    return run_e2e()


def live_scaling(readings: int, machines: int, runs: int) -> dict:
    """`plantpulse run` as 1 and as 2 processes (StatefulSet environment on loopback) on the same pre-produced
    backlog in the embedded broker, runs interleaved (`bench.live_scaling`)."""
    from bench.live_scaling import ScalingConfig, measure  # starts a broker; imported only when this section runs

    print("live-flow scaling (embedded broker, chDB, lake on file://; 1 vs 2 processes):", flush=True)
    return measure(ScalingConfig(readings=readings, machines=machines, runs=runs))
