"""Incidents vs raw detections: how much noise the incident lifecycle removes (issue 13).

    python -m bench.incident_noise [--machines 500 --minutes 60 --seed 42]   # prints the section, records nothing
    python -m bench.run --only incident-noise                               # the defaults, into bench/results

The simulator generates `--minutes` of event time for `--machines` machines with its default fault mix
(`faults="all"`, `sim.faults.DEFAULT_FAULT_RATE` = 5 % of the machines, no transport imperfections), the
first fault after `--faults-after` healthy seconds (default 600, as `bench.model_quality`: the anomaly models
are deployed on a working plant and have learned a healthy baseline). The messages go, as polls, through the
replay flow's path (`flows.replay`: one worker, one state shard, windows closed by event time, no staleness
by wall clock) - decode, windows, the packaged threshold rules, the packaged anomaly-model specs and the
incident step of `flows.pipeline.analyse_readings` - no Kafka, no ClickHouse.

Counted (`summarise`, pure, tested in `tests/test_incident_noise.py`):

- raw detections: the rows of the alerts stream (what was notified one by one before incidents), threshold
  (one per machine, rule and 10 s window) and anomaly (the models' alerts, already debounced by their
  cooldown); also the anomalous windows (scored windows over their threshold, alert or not), which extend an
  open anomaly incident;
- incidents: opened, by kind and rule; resolved by reason, or still open when the input ended; escalations;
  duration in event time (`last_seen_ts - first_seen_ts` of the incident's newest version: `resolved_at` is
  wall-clock time, meaningless offline) and detections (windows with a detection) per incident;
- the noise reduction: raw detections per incident, per kind and overall;
- ground truth: the fault episodes the simulator injected (its labels), how many have an incident, and how
  many incidents each has. An incident belongs to a fault episode of its machine when its event-time span
  `[first_seen_ts, last_seen_ts]` meets `[start_ts, end_ts + MATCH_AFTER_MS]` (the earliest such episode);
  an incident that meets none is counted as without a fault.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

from bench.model_quality import FAULTS_AFTER_S, START_TS_MS
from flows.pipeline import PipelineConfig, process_telemetry
from flows.replay import CollectSink, IterableSource, replay_config
from plantpulse.schema import ALERT_ARROW_SCHEMA, INCIDENT_ARROW_SCHEMA, RawBatch
from plantpulse.settings import PACKAGED_MODELS_FILE, PACKAGED_RULES_FILE, Settings
from sim import FAULT_KINDS, Simulator, build_fleet
from sim.faults import DEFAULT_FAULT_RATE
from sim.simulator import SimulationRun

KINDS = ("threshold", "anomaly", "sensor")  # sensor: instrument faults (models/sensor_health.py)
# An incident still belongs to a fault episode that ended up to this long before it was first seen: the
# models' features lag the signal (rolling statistics) and a window closes after its readings.
MATCH_AFTER_MS = 60_000
LABEL_COLUMNS = ("machine_id", "fault", "start_ts", "end_ts")


@dataclass(frozen=True)
class NoiseConfig:
    machines: int = 500
    minutes: float = 60.0
    seed: int = 42
    faults: str = "all"
    fault_rate: float = DEFAULT_FAULT_RATE
    faults_after_s: float = FAULTS_AFTER_S
    interval_ms: int = 1000  # one reading per machine and second

    def reproduce(self) -> str:
        """The command that measures this configuration again (`bench.run` records only the defaults)."""
        if self == NoiseConfig():
            return "python -m bench.run --only incident-noise"
        return (f"python -m bench.incident_noise --machines {self.machines} --minutes {self.minutes:g} "
                f"--seed {self.seed} --faults-after {self.faults_after_s:g}")


# ---- counting (pure) -------------------------------------------------------------------------------------

def _ms(table: pa.Table, column: str) -> np.ndarray:
    values = table[column]
    if pa.types.is_timestamp(values.type):
        values = values.cast(pa.int64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def spread(values: Iterable[float], places: int = 1) -> dict | None:
    """Median, p90 (linear interpolation between ranks) and max of `values`; None when there are none."""
    x = np.asarray(list(values), dtype=np.float64)
    if len(x) == 0:
        return None
    return {"median": round(float(np.median(x)), places), "p90": round(float(np.percentile(x, 90)), places),
            "max": round(float(x.max()), places)}


def newest_versions(states: pa.Table) -> pa.Table:
    """One row per incident: its highest `version` (its state when the input ended)."""
    if states.num_rows == 0:
        return states
    order = states.sort_by([("incident_id", "ascending"), ("version", "descending")])
    ids = order["incident_id"].to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return order.take(pa.array(keep, pa.int64()))


def _ratio(raw: int, incidents: int) -> float | None:
    return round(raw / incidents, 2) if incidents else None


def match_faults(incidents: pa.Table, labels: pa.Table) -> list[int | None]:
    """For each incident (a row of `newest_versions`), the index of the fault episode (row of `labels`) it
    belongs to, or None (see the module docstring)."""
    by_machine: dict[str, list[tuple[int, int, int]]] = {}
    starts, ends = _ms(labels, "start_ts"), _ms(labels, "end_ts")
    for i, machine in enumerate(labels["machine_id"].to_pylist()):
        by_machine.setdefault(machine, []).append((int(starts[i]), int(ends[i]), i))
    for episodes in by_machine.values():
        episodes.sort()
    first, last = _ms(incidents, "first_seen_ts"), _ms(incidents, "last_seen_ts")
    matched: list[int | None] = []
    for j, machine in enumerate(incidents["machine_id"].to_pylist()):
        matched.append(next((i for start, end, i in by_machine.get(machine, [])
                             if first[j] <= end + MATCH_AFTER_MS and last[j] >= start), None))
    return matched


def summarise(alerts: pa.Table, states: pa.Table, labels: pa.Table, anomalous_windows: int) -> dict:
    """The counts of the section from the run's alert rows (ALERT_ARROW_SCHEMA: `kind`, `rule_id`), every
    incident version (INCIDENT_ARROW_SCHEMA), the simulator's fault labels (`LABEL_COLUMNS`) and the number of
    anomalous scored windows. Timestamps may be Arrow timestamps or epoch ms."""
    alert_kinds = alerts["kind"].to_pylist()
    raw_by_kind = {kind: alert_kinds.count(kind) for kind in KINDS}
    threshold_rules = Counter(rule for rule, kind in zip(alerts["rule_id"].to_pylist(), alert_kinds)
                              if kind == "threshold")
    newest = newest_versions(states)
    kinds, rules = newest["kind"].to_pylist(), newest["rule_id"].to_pylist()
    reasons = newest["resolved_reason"].to_pylist()
    detections = newest["detections"].to_pylist()
    duration_s = (_ms(newest, "last_seen_ts") - _ms(newest, "first_seen_ts")) / 1000.0
    transitions = states["transition"].to_pylist()
    opened = sum(t == "opened" for t in transitions)
    if opened != newest.num_rows:  # every incident of the run opened in it
        raise ValueError(f"{newest.num_rows} incidents but {opened} 'opened' transitions")
    by_kind = {}
    for kind in KINDS:
        mine = [i for i, k in enumerate(kinds) if k == kind]
        by_kind[kind] = {
            "raw_alerts": raw_by_kind[kind],
            "incidents": len(mine),
            "raw_alerts_per_incident": _ratio(raw_by_kind[kind], len(mine)),
            "resolved": dict(sorted(Counter(reasons[i] for i in mine if reasons[i] is not None).items())),
            "open_at_end": sum(reasons[i] is None for i in mine),
            "escalated": sum(t == "escalated" and k == kind
                             for t, k in zip(transitions, states["kind"].to_pylist())),
            "duration_s": spread(duration_s[i] for i in mine),
            "detections": spread((detections[i] for i in mine), places=1),
            "detections_total": sum(detections[i] for i in mine),
        }
    by_kind["threshold"]["by_rule"] = {
        rule: {"raw_alerts": threshold_rules.get(rule, 0),
               "incidents": sum(r == rule and k == "threshold" for r, k in zip(rules, kinds))}
        for rule in sorted(set(threshold_rules) | {r for r, k in zip(rules, kinds) if k == "threshold"})
    }
    for row in by_kind["threshold"]["by_rule"].values():
        row["raw_alerts_per_incident"] = _ratio(row["raw_alerts"], row["incidents"])
    by_kind["anomaly"]["anomalous_windows"] = anomalous_windows
    by_kind["anomaly"]["anomalous_windows_per_incident"] = _ratio(anomalous_windows, by_kind["anomaly"]["incidents"])
    raw_total = sum(raw_by_kind.values())
    return {
        "raw_alerts": raw_total,
        "incidents": newest.num_rows,
        "raw_alerts_per_incident": _ratio(raw_total, newest.num_rows),
        "incident_duration_s": spread(duration_s),
        "detections_per_incident": spread(detections),
        "by_kind": by_kind,
        "faults": faults_vs_incidents(newest, labels),
    }


def faults_vs_incidents(newest: pa.Table, labels: pa.Table) -> dict:
    """Fault episodes per kind, how many have an incident, and the incidents (per kind) that belong to them."""
    matched = match_faults(newest, labels)
    faults = labels["fault"].to_pylist()
    kinds = newest["kind"].to_pylist()
    rows = {}
    for fault in [f for f in FAULT_KINDS if f in faults] + sorted(set(faults) - set(FAULT_KINDS)):
        episodes = [i for i, f in enumerate(faults) if f == fault]
        mine = [j for j, i in enumerate(matched) if i is not None and faults[i] == fault]
        with_incident = len({matched[j] for j in mine})
        rows[fault] = {
            "episodes": len(episodes),
            "with_incident": with_incident,
            "incidents": {kind: sum(kinds[j] == kind for j in mine) for kind in KINDS},
            "incidents_per_episode_with_one": round(len(mine) / with_incident, 2) if with_incident else None,
        }
    unmatched = [j for j, i in enumerate(matched) if i is None]
    return {
        "match_after_ms": MATCH_AFTER_MS,
        "episodes": len(faults),
        "machines_with_faults": len(set(labels["machine_id"].to_pylist())),
        "by_fault": rows,
        "without_fault": {kind: sum(kinds[j] == kind for j in unmatched) for kind in KINDS},
    }


# ---- the run ---------------------------------------------------------------------------------------------

@dataclass
class FlowRun:
    alerts: pa.Table
    states: pa.Table
    windows: int
    windows_scored: int
    anomalous_windows: int


def _polls(run: SimulationRun, counted: list[int]) -> Iterator[RawBatch]:
    """The simulator's message batches as Kafka-like polls (a block of ticks each, ~8,000 messages)."""
    offset = 0
    for batch in run:
        counted[0] += len(batch)
        yield RawBatch("replay", -1, list(range(offset, offset + len(batch))), batch.values, batch.keys)
        offset += len(batch)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def run_flow(polls: Iterable[RawBatch], config: PipelineConfig) -> FlowRun:
    """`polls` through the replay flow's path (decode to incidents, one worker), keeping alerts, every incident
    version and counts of the windows and scores."""
    flow = Dataflow("incident_noise")
    streams = process_telemetry("process", op.input("in", flow, IterableSource(polls)), replay_config(config))
    alerts: list[pa.Table] = []
    states: list[pa.Table] = []
    windows: list[int] = []
    scored: list[tuple[int, int]] = []
    op.output("alerts_out", streams.alerts, CollectSink(alerts))
    op.output("states_out", streams.incident_states, CollectSink(states))
    op.output("windows_out", op.map("window_rows", streams.window_stats, lambda t: t.num_rows), CollectSink(windows))
    counts = op.map("score_counts", streams.anomaly_scores,
                    lambda t: (t.num_rows, int(pc.sum(t["is_anomaly"].cast(pa.int64())).as_py() or 0)))
    op.output("scores_out", counts, CollectSink(scored))
    cli_main(flow, workers_per_process=1)
    return FlowRun(_concat(alerts, ALERT_ARROW_SCHEMA), _concat(states, INCIDENT_ARROW_SCHEMA), sum(windows),
                   sum(n for n, _ in scored), sum(a for _, a in scored))


def pipeline_config(machine_types: dict[str, str]) -> PipelineConfig:
    """Default settings with the packaged rules and model specs, the simulated fleet's machine types."""
    settings = Settings(rules_file=PACKAGED_RULES_FILE, models_file=PACKAGED_MODELS_FILE, max_event_age_seconds=0)
    config = PipelineConfig.from_settings(settings)
    return replace(config, machine_types=machine_types, machine_sites={})


def measure(config: NoiseConfig = NoiseConfig()) -> dict:
    """Simulate, run the flow, count: the `incident_noise` section of latest.json (without provenance)."""
    fleet = build_fleet(config.machines, config.seed)
    simulator = Simulator(fleet, seed=config.seed, faults=config.faults, fault_rate=config.fault_rate,
                          imperfections={}, start_ts_ms=START_TS_MS, interval_ms=config.interval_ms,
                          faults_after_s=config.faults_after_s)
    ticks = round(config.minutes * 60_000 / config.interval_ms)
    run = simulator.run(ticks)
    pipeline = pipeline_config({m.machine_id: m.machine_type for m in fleet})
    print(f"incident noise: {config.machines} machines, {config.minutes:g} min of event time, seed {config.seed} "
          "(simulated and replayed in this process) …", flush=True)
    started = time.perf_counter()
    counted = [0]
    out = run_flow(_polls(run, counted), pipeline)
    seconds = time.perf_counter() - started
    labels = pa.Table.from_pylist([{name: getattr(lb, name) for name in LABEL_COLUMNS} for lb in run.labels()],
                                  schema=pa.schema([("machine_id", pa.string()), ("fault", pa.string()),
                                                    ("start_ts", pa.int64()), ("end_ts", pa.int64())]))
    counts = summarise(out.alerts, out.states, labels, out.anomalous_windows)
    return {
        "config": {**asdict(config), "imperfections": "none", "window_seconds": pipeline.windows.window_ms / 1000,
                   "resolve_after_windows": pipeline.resolve_after_windows,
                   "rules": [rule.id for rule in pipeline.rules], "models_file": PACKAGED_MODELS_FILE.name},
        "input": {"readings": counted[0], "windows": out.windows, "windows_scored": out.windows_scored},
        "seconds": round(seconds, 1),
        **counts,
    }


def report(section: dict) -> str:
    """A few lines for the terminal."""
    k = section["by_kind"]
    lines = [f"{section['input']['readings']:,} readings in {section['seconds']} s (simulated + replayed)"]
    for kind in KINDS:
        lines.append(f"  {kind}: {k[kind]['raw_alerts']:,} raw alerts -> {k[kind]['incidents']:,} incidents "
                     f"({k[kind]['raw_alerts_per_incident']} per incident); resolved {k[kind]['resolved']}, "
                     f"open at end {k[kind]['open_at_end']}, duration {k[kind]['duration_s']}")
    lines.append(f"  overall: {section['raw_alerts']:,} raw alerts -> {section['incidents']:,} incidents "
                 f"({section['raw_alerts_per_incident']} per incident)")
    f = section["faults"]
    lines.append(f"  faults injected: {f['episodes']} episodes on {f['machines_with_faults']} machines")
    for fault, row in f["by_fault"].items():
        lines.append(f"    {fault}: {row['episodes']} episodes, {row['with_incident']} with an incident, "
                     f"incidents {row['incidents']}")
    lines.append(f"    without a fault: {f['without_fault']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> NoiseConfig:
    defaults = NoiseConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, default=defaults.machines)
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="event time simulated")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--faults-after", type=float, default=defaults.faults_after_s,
                        help="healthy seconds before the first fault (default 600)")
    args = parser.parse_args(argv)
    if args.machines < 1 or args.minutes <= 0 or args.faults_after < 0:
        parser.error("--machines and --minutes must be positive, --faults-after >= 0")
    return NoiseConfig(machines=args.machines, minutes=args.minutes, seed=args.seed, faults_after_s=args.faults_after)


def main(argv: list[str] | None = None) -> None:
    section = measure(parse_args(argv))
    print(json.dumps(section, indent=2))
    print(report(section))
    print("(standalone: nothing recorded; `python -m bench.run --only incident-noise` records the defaults)")


if __name__ == "__main__":
    main()
