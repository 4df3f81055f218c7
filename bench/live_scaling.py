"""Live-flow scaling: readings/s of `plantpulse run` as 1 and as 2 processes on the same pre-produced backlog.

The embedded tansu broker gets a telemetry topic of `partitions` partitions (PlantPulse's topics, created as
`plantpulse topics ensure` creates them) and, once, a backlog of `readings` readings of `machines` simulated
machines, produced as fast as possible and signed by their device keys (DEVICE_AUTH=required, the default;
faults as `plantpulse sim` defaults them). Then the live flow reads that backlog as production runs it: each
process is `plantpulse run` with a StatefulSet pod's environment (BYTEWAX_POD_NAME=<set>-<i>,
BYTEWAX_STATEFULSET_NAME, BYTEWAX_SERVICE_NAME, BYTEWAX_REPLICAS; on loopback BYTEWAX_ADDRESSES gives each "pod"
its own port), its own RECOVERY_DIR (recovery on, 10 s snapshots, as the manifests set it) and METRICS_PORT,
one worker each, ClickHouse on chDB and the raw lake on file://, all in a fresh directory per run.

A run's throughput: the processes' `plantpulse_readings_received_total` (messages pulled from the telemetry
topic), summed and sampled every `sample_s`; from the first sample that counts any reading (t0, c0) to the
moment the sum reaches the backlog (interpolated between the two samples around it), readings/s =
(backlog - c0) / elapsed. Start-up (imports, cluster connection) is not counted, nor the drain at the stop.
Runs are interleaved (1, 2, 1, 2, ...) so that a noisy stretch of this shared machine hits both; each run
records the load average before it, the CPU the flow processes and the broker used while it was timed, and
the busy share of the whole machine (other work on it included).

    python -m bench.live_scaling [--readings N] [--machines M] [--runs R]   # standalone, prints JSON
    python -m bench.run --only live-scaling [--scaling-readings N] ...      # as a `make bench` section
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.pods import Pods, total
from bench.soak import _cpu_seconds
from connectors.broker import EmbeddedBroker
from connectors.topics import ensure_topics
from plantpulse.settings import Settings
from sim import Simulator, build_fleet, produce, sync_fleet_csv

ROOT = Path(__file__).resolve().parent.parent
RECEIVED = "plantpulse_readings_received_total"
ACCEPTED = "plantpulse_readings_accepted_total"
DEAD_LETTERS = "plantpulse_dead_letters_total"
DUPLICATES = "plantpulse_duplicates_total"


@dataclass(frozen=True)
class ScalingConfig:
    readings: int = 1_000_000
    machines: int = 2_000
    runs: int = 3
    processes: tuple[int, ...] = (1, 2)
    partitions: int = 8
    seed: int = 7
    sample_s: float = 0.25
    timeout_s: float = 900.0  # per run, from the start of the processes to the backlog counted
    stop_grace_s: float = 20.0  # SIGTERM, then SIGKILL after this (not timed; the run's output is discarded)
    extra_env: dict[str, str] = field(default_factory=dict)


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat; idle and iowait are not busy)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return float(sum(values) - values[3] - values[4]), float(sum(values))


# ---- one run ------------------------------------------------------------------------------------------------

def run_once(config: ScalingConfig, base_env: dict[str, str], work: Path, replicas: int, backlog: int,
             broker_pid: int | None) -> dict:
    """The backlog read by `replicas` fresh processes (fresh recovery stores, database and lake): one run's figures."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**base_env, "DATA_DIR": str(work), "CLICKHOUSE_URL": f"chdb://{work / 'chdb'}",
           "LAKE_URL": f"file://{work / 'lake'}"}
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    pods = Pods(env, work, replicas)
    try:
        deadline = started + config.timeout_s
        samples: list[tuple[float, float]] = []
        first: tuple[float, float] | None = None
        cpu_at_first = (0.0, 0.0, (0.0, 0.0))
        while True:
            pods.check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replicas} process(es): backlog not counted after {config.timeout_s:g} s "
                                   f"(last samples {samples[-3:]})")
            scraped = pods.scrape()
            now = time.monotonic()
            counted = total(scraped, RECEIVED)
            if first is None and counted > 0:
                first = (now, counted)
                cpu_at_first = (pods.cpu_seconds(), _broker_cpu(broker_pid), _machine_cpu())
            if first is not None:
                samples.append((now, counted))
                if counted >= backlog:
                    break
            time.sleep(config.sample_s)
        cpu_at_done = (pods.cpu_seconds(), _broker_cpu(broker_pid), _machine_cpu())
        by_pod = [total([s], RECEIVED) for s in scraped]
        # Not timed: until every pulled reading is decided on (accepted, dead-lettered or a duplicate), for the check.
        outcome = _outcomes(pods, backlog, deadline=time.monotonic() + 60)
    finally:
        codes = pods.stop(config.stop_grace_s)
    done_at = _crossing(samples, backlog)
    t0, c0 = samples[0]
    seconds = done_at - t0
    flow_cpu, broker_cpu, (busy0, all0) = cpu_at_first
    busy1, all1 = cpu_at_done[2]
    result = {
        "processes": replicas,
        "readings_per_s": round((backlog - c0) / seconds) if seconds > 0 else None,
        "seconds": round(seconds, 2),
        "counted_at_first_sample": int(c0),
        "samples": len(samples),
        "startup_seconds": round(t0 - started, 1),  # spawn to the first reading counted
        "received_by_process": [int(x) for x in by_pod],
        "loadavg_before": load,
        "flow_cpu_cores": round((cpu_at_done[0] - flow_cpu) / seconds, 2) if seconds > 0 else None,
        "broker_cpu_cores": round((cpu_at_done[1] - broker_cpu) / seconds, 2) if seconds > 0 else None,
        "machine_busy_share": round((busy1 - busy0) / (all1 - all0), 3) if all1 > all0 else None,
        **outcome,
        "exit_codes": codes,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def _broker_cpu(pid: int | None) -> float:
    return _cpu_seconds(pid) if pid else 0.0


def _crossing(samples: list[tuple[float, float]], backlog: int) -> float:
    """When the count reached `backlog`: interpolated between the last sample below it and the first at it."""
    t1, c1 = samples[-1]
    if len(samples) < 2:
        return t1
    t0, c0 = samples[-2]
    return t0 + (t1 - t0) * (backlog - c0) / (c1 - c0) if c1 > c0 else t1


def _outcomes(pods: Pods, backlog: int, deadline: float) -> dict:
    """Accepted, dead-lettered and duplicate readings once they add up to the backlog (or at `deadline`)."""
    while True:
        scraped = pods.scrape()
        figures = {"accepted": total(scraped, ACCEPTED), "dead_letters": total(scraped, DEAD_LETTERS),
                   "duplicates": total(scraped, DUPLICATES)}
        if sum(figures.values()) >= backlog or time.monotonic() > deadline:
            reasons: dict[str, int] = {}
            for sample in filter(None, scraped):
                for key, value in sample.items():
                    if key.startswith(DEAD_LETTERS + "{") and value:
                        reason = key.split('reason="', 1)[-1].split('"', 1)[0]
                        reasons[reason] = reasons.get(reason, 0) + int(value)
            return {**{key: int(value) for key, value in figures.items()}, "dead_letters_by_reason": reasons}
        time.sleep(0.5)


# ---- the section --------------------------------------------------------------------------------------------

def measure(config: ScalingConfig | None = None) -> dict:
    """Produce the backlog once, then `runs` interleaved runs per process count: medians and every run."""
    config = config or ScalingConfig()
    with tempfile.TemporaryDirectory(prefix="plantpulse-live-scaling-") as tmp:
        work = Path(tmp)
        with EmbeddedBroker(log_dir=work) as broker:
            settings = Settings(kafka_bootstrap_servers=broker.bootstrap, data_dir=work,
                                topic_partitions=config.partitions, device_auth="required",
                                device_keys_file=work / "device-keys.json", machines_file=work / "machines.csv")
            ensure_topics(settings)  # every topic of the flow, as `plantpulse topics ensure` creates them
            fleet = build_fleet(config.machines, config.seed)
            sync_fleet_csv(work / "machines.csv", fleet)  # the flow reads machine types from it
            print(f"live scaling: producing {config.readings:,} signed readings of {config.machines:,} machines "
                  f"to {config.partitions} partitions …", flush=True)
            produced = produce(settings, Simulator(fleet, seed=config.seed), count=config.readings,
                               create_missing_keys=True)
            backlog = produced.messages
            print(f"  produced {backlog:,} in {produced.wall_seconds:.1f} s", flush=True)
            base_env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("BYTEWAX_")},
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "DEVICE_AUTH": "required",
                "DEVICE_KEYS_FILE": str(settings.device_keys_file),
                "MACHINES_FILE": str(settings.machines_file),
                "SNAPSHOT_INTERVAL_SECONDS": "10",
                "LOG_LEVEL": "WARNING",
                **config.extra_env,
            }
            runs: dict[int, list[dict]] = {p: [] for p in config.processes}
            for round_ in range(config.runs):
                for replicas in config.processes:
                    result = run_once(config, base_env, work / f"run-{round_}-{replicas}p", replicas, backlog,
                                      broker.pid)
                    runs[replicas].append(result)
                    print(f"  {replicas} process(es), run {round_ + 1}/{config.runs}: "
                          f"{result['readings_per_s']:,} readings/s over {result['seconds']} s (load before "
                          f"{result['loadavg_before'][0]}, flow {result['flow_cpu_cores']} cores, broker "
                          f"{result['broker_cpu_cores']}, machine busy {result['machine_busy_share']:.0%})",
                          flush=True)
    by_processes = {str(p): _summary(runs[p]) for p in config.processes}
    low, high = str(config.processes[0]), str(config.processes[-1])
    return {
        "machine": {"cores": os.cpu_count()},
        "input": {"readings": backlog, "machines": config.machines, "partitions": config.partitions,
                  "seed": config.seed, "device_auth": "required", "faults": "all (simulator default rate)",
                  "produce_seconds": round(produced.wall_seconds, 1)},
        "setup": {"workers_per_process": 1, "recovery": "on, a RECOVERY_DIR per pod, SNAPSHOT_INTERVAL_SECONDS=10",
                  "clickhouse": "chdb (one sink partition)", "lake": "file://", "sample_s": config.sample_s,
                  "order": "interleaved " + ", ".join(str(p) for p in config.processes) + ", ..."},
        "by_processes": by_processes,
        "speedup": round(by_processes[high]["readings_per_s"] / by_processes[low]["readings_per_s"], 2),
        "config": {k: v for k, v in asdict(config).items() if k != "extra_env"},
    }


def _summary(runs: list[dict]) -> dict:
    return {
        "readings_per_s": statistics.median(r["readings_per_s"] for r in runs),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "loadavg_before_median": statistics.median(r["loadavg_before"][0] for r in runs),
        "flow_cpu_cores": statistics.median(r["flow_cpu_cores"] for r in runs),
        "broker_cpu_cores": statistics.median(r["broker_cpu_cores"] for r in runs),
        "machine_busy_share": statistics.median(r["machine_busy_share"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=ScalingConfig.readings)
    parser.add_argument("--machines", type=int, default=ScalingConfig.machines)
    parser.add_argument("--runs", type=int, default=ScalingConfig.runs)
    parser.add_argument("--partitions", type=int, default=ScalingConfig.partitions)
    args = parser.parse_args()
    print(json.dumps(measure(ScalingConfig(readings=args.readings, machines=args.machines, runs=args.runs,
                                           partitions=args.partitions)), indent=2))


if __name__ == "__main__":
    main()
