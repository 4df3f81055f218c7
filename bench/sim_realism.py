"""Simulator realism, kept honest (issue 15, item 6): nuisance faults and transport imperfections switched on.

    python -m bench.sim_realism            # seeds 101-103, writes bench/results/sim_realism.json (a few minutes)
    python -m bench.sim_realism --quick    # one small seed, prints only (a smoke run, well under a minute)

Everything is scored as the live flow does it: the simulator's messages are decoded by the flow's decoder
(`flows.decode.BatchDecoder`: malformed messages are dead-lettered), windowed by its window code
(`flows.window_state.ShardWindows`: duplicates dropped, late readings dead-lettered), and each window table
goes through `flows.anomaly_logic.AnomalyLogic.analyse`: `models.sensor_health.SensorHealth` first, then
`models.FleetModels` without the faulty sensors' features, with the packaged spec.

(a) **Nuisance fleet**: `--machines` machines for `--hours`, a share of them (`--nuisance-rates`: the
    simulator's default 5 %, the headline, and 20 %, a stress test) with one recurring nuisance fault each
    (`stuck_sensor`, `spike`, `dropout`, after `bench.model_quality`'s 10 healthy minutes), and the transport
    imperfections of `IMPERFECTIONS` (duplicates, reordering, late readings, clock skew, malformed messages)
    plus lost readings (gaps in `seq`, `sim.gaps`). No machine fault is injected, so every `anomaly` alert is
    a false alarm - one during a nuisance event too: it is the anomaly model mistaking an instrument fault for
    a machine fault. Reported: anomaly false alarms per machine-day (target <= 1; `models.evaluation`'s
    definition: over the scored windows out of warm-up), those during nuisance events, and sensor-fault
    detection per nuisance kind: an event is detected when a faulty window of its kind (a `sensor_<kind>`
    detection) of its machine overlaps it (up to one window after its end); recall = detected / events;
    precision = faulty windows that overlap an event of their kind / all faulty windows of that kind. Dropouts
    of the `silent` variant send nothing (no window to judge: that is the machine going stale) and are counted
    apart. A control run per seed (the same fleet and imperfections, no nuisance fault) gives the false alarms
    the imperfections alone cause, and the same windows scored by the models alone (`without_sensor_health`)
    what sensor health saves.
(b) **Machine faults** (`bearing_wear`, `overheating`, `pressure_leak`; `bench.model_quality`'s cached
    runs, one kind per run): recall, anomaly alerts per fault event (matched alerts / judged events: the
    models alert once per episode, an event may hold several), and the precision one would see at a
    realistic prevalence of one fault per machine-month::

        precision@prevalence = a / (a + 30 x f)

    where ``a`` = alerts per event (measured in (b)), ``f`` = false alarms per machine-day (measured in (a) at
    the headline nuisance rate, imperfections on) and 30 = machine-days per fault. F1 beside it is
    `models.evaluation`'s (precision at the runs' own, much higher, prevalence: half the fleet faulty).
Medians over seeds are reported; every seed's figures are kept under `runs`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.model_quality import FAULT_KINDS as MACHINE_FAULTS
from bench.model_quality import (
    FAULTS_AFTER_S,
    LABEL_SCHEMA,
    READING_INTERVAL_MS,
    START_TS_MS,
    WINDOW_MS,
    cached,
    labels_of,
    window_stats,
)
from bench.results_file import git_state, utc_now
from flows.anomaly_logic import AnomalyLogic
from flows.decode import BatchDecoder, ValidationLimits
from flows.window_state import ShardWindows, WindowConfig
from models.evaluation import evaluate
from models.fleet_models import FleetModels
from models.spec import ModelSpecs, load_model_specs
from plantpulse.schema import RawBatch
from plantpulse.settings import PACKAGED_MODELS_FILE
from sim import Simulator, build_fleet
from sim.faults import DEFAULT_FAULT_RATE
from sim.gaps import Gaps, with_gaps
from sim.simulator import MessageBatch

CACHE = Path(__file__).parent / "data" / "sim_realism"
RESULTS = Path(__file__).parent / "results"
NUISANCE = ("stuck_sensor", "spike", "dropout")
RULE_OF = {"stuck_sensor": "sensor_stuck", "spike": "sensor_spike", "dropout": "sensor_dropout"}
IMPERFECTIONS = {"duplicates": 0.005, "out_of_order": 0.005, "late": 0.001, "malformed": 0.002, "clock_skew": 0.05}
LOST_RATE = 0.001
DAYS_PER_FAULT = 30.0


def closed_windows(readings: Iterable[pa.Table], machine_types: dict[str, str]) -> pa.Table:
    """Window stats of decoded reading tables, closed by event time as the replay closes them, then flushed."""
    windows = ShardWindows(WindowConfig(window_ms=WINDOW_MS), [], machine_types)
    emitted = []
    for table in readings:
        windows.add(table, 0.0)
        emitted.append(windows.close(0.0).window_stats)
    emitted.append(windows.close(0.0, flush_all=True).window_stats)
    return pa.concat_tables([stats for stats in emitted if stats is not None])


def nuisance_windows(seed: int, machines: int, hours: float, rate: float) -> tuple[pa.Table, pa.Table]:
    """(window stats, labels) of a nuisance fleet with transport imperfections, through the flow's decoder and
    window code; cached under bench/data/sim_realism/."""
    stem = f"nuisance-{machines}m-{hours:g}h-{rate * 100:g}pct-s{seed}"
    stats_path, labels_path = CACHE / f"{stem}.windows.parquet", CACHE / f"{stem}.labels.parquet"
    if stats_path.exists() and labels_path.exists():
        return pq.read_table(stats_path), pq.read_table(labels_path)
    fleet = build_fleet(machines, seed)
    simulator = with_gaps(Simulator, Gaps(lost_rate=LOST_RATE, seed=seed))(
        fleet, seed=seed, faults=",".join(NUISANCE), fault_rate=rate, imperfections=IMPERFECTIONS,
        start_ts_ms=START_TS_MS + seed * 3_600_000, interval_ms=READING_INTERVAL_MS, faults_after_s=FAULTS_AFTER_S,
    )
    run = simulator.run(int(hours * 3600 * 1000 / READING_INTERVAL_MS))
    decoder = BatchDecoder(ValidationLimits())

    def decoded(batches: Iterable[MessageBatch]) -> Iterator[pa.Table]:
        offset = 0
        for batch in batches:  # offsets: message numbers, as a replay of a recording numbers them
            raw = RawBatch("telemetry", 0, list(range(offset, offset + len(batch))), batch.values)
            offset += len(batch)
            yield decoder.decode(raw, now_ms=int(batch.ts.max())).readings

    stats = closed_windows(decoded(run), {m.machine_id: m.machine_type for m in fleet})
    return cached(stats, labels_of(run), stats_path, labels_path)


def analyse(specs: ModelSpecs, stats: pa.Table, batch_rows: int = 20_000) -> tuple[pa.Table, pa.Table | None]:
    """(anomaly scores, sensor detections) of `stats` fed in emission order through `AnomalyLogic.analyse`."""
    logic = AnomalyLogic(FleetModels(specs))
    scores, detections = [], []
    for offset in range(0, stats.num_rows, batch_rows):
        analysed = logic.analyse(stats.slice(offset, batch_rows), now_ms=0)
        scores.append(analysed.scores)
        if analysed.sensor.detections is not None:
            detections.append(analysed.sensor.detections)
    return pa.concat_tables(scores), pa.concat_tables(detections) if detections else None


def _ms(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def sensor_detection(detections: pa.Table | None, labels: pa.Table) -> dict[str, dict]:
    """Per nuisance kind: events, detected, recall, faulty windows, those matching an event, precision."""
    events: dict[str, list[tuple[str, int, int]]] = {}
    for machine, fault, start, end, detail in zip(*(labels[c].to_pylist() for c in LABEL_SCHEMA.names)):
        if fault in RULE_OF and detail != "silent":
            events.setdefault(machine, []).append((fault, start, end))
    found: dict[str, set] = {fault: set() for fault in NUISANCE}
    windows = {fault: [0, 0] for fault in NUISANCE}  # [matching, all]
    if detections is not None:
        starts, ends = _ms(detections["window_start"]), _ms(detections["window_end"])
        for machine, rule, ws, we in zip(detections["machine_id"].to_pylist(), detections["rule_id"].to_pylist(),
                                         starts.tolist(), ends.tolist()):
            fault = next(f for f, r in RULE_OF.items() if r == rule)
            hits = [e for e in events.get(machine, []) if e[0] == fault and we > e[1] and ws < e[2] + WINDOW_MS]
            windows[fault][0] += bool(hits)
            windows[fault][1] += 1
            found[fault].update((machine, *e) for e in hits)
    silent = sum(1 for f, d in zip(labels["fault"].to_pylist(), labels["detail"].to_pylist())
                 if f == "dropout" and d == "silent")
    out = {}
    for fault in NUISANCE:
        total = sum(1 for evs in events.values() for e in evs if e[0] == fault)
        matching, flagged = windows[fault]
        out[fault] = {"events": total, "detected": len(found[fault]),
                      "recall": round(len(found[fault]) / total, 4) if total else None,
                      "faulty_windows": flagged, "faulty_windows_matching": matching,
                      "precision": round(matching / flagged, 4) if flagged else None}
    out["dropout"]["silent_events_not_judged"] = silent
    return out


def measure_nuisance(specs: ModelSpecs, seed: int, machines: int, hours: float, rate: float) -> dict:
    stats, labels = nuisance_windows(seed, machines, hours, rate)
    started = time.perf_counter()
    scores, detections = analyse(specs, stats)
    seconds = time.perf_counter() - started
    events = labels.select(["machine_id", "fault", "start_ts", "end_ts"])
    result = evaluate(scores, events, window_ms=WINDOW_MS)
    models = FleetModels(specs)  # the contrast: the same windows without sensor health
    alone = evaluate(pa.concat_tables([models.score(stats.slice(i, 20_000), now_ms=0).scores
                                       for i in range(0, stats.num_rows, 20_000)]), events, window_ms=WINDOW_MS)
    days = result.machine_days
    return {"seed": seed, "nuisance_rate": rate, "windows": stats.num_rows,
            "windows_per_s": round(stats.num_rows / seconds), "machine_days": round(days, 3),
            "anomaly_alerts": result.alerts,
            "anomaly_alerts_during_nuisance": sum(row["matched_alerts"] for row in result.by_fault),
            "false_alarms_per_machine_day": round(result.alerts / days, 4) if days else None,
            "without_sensor_health": {
                "anomaly_alerts": alone.alerts,
                "false_alarms_per_machine_day": round(alone.alerts / days, 4) if days else None},
            "sensor": sensor_detection(detections, labels)}


def measure_fault(specs: ModelSpecs, kind: str, seed: int, machines: int, hours: float) -> dict:
    stats, labels = window_stats(kind, seed, machines, hours)
    scores, detections = analyse(specs, stats)
    row = evaluate(scores, labels, window_ms=WINDOW_MS).by_fault[0]
    return {"fault": kind, "seed": seed, "events": row["events"], "detected": row["detected"],
            "matched_alerts": row["matched_alerts"], "false_alarms": row["false_alarms"], "recall": row["recall"],
            "f1": row["f1"], "alerts_per_event": round(row["matched_alerts"] / row["events"], 4) if row["events"] else None,
            "sensor_detections": 0 if detections is None else detections.num_rows}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summarise_nuisance(runs: list[dict]) -> dict:
    return {
        "false_alarms_per_machine_day": _median([r["false_alarms_per_machine_day"] for r in runs]),
        "false_alarms_per_machine_day_without_sensor_health": _median(
            [r["without_sensor_health"]["false_alarms_per_machine_day"] for r in runs]),
        "anomaly_alerts": sum(r["anomaly_alerts"] for r in runs),
        "anomaly_alerts_during_nuisance": sum(r["anomaly_alerts_during_nuisance"] for r in runs),
        "sensor_detection": {
            kind: {key: _median([r["sensor"][kind][key] for r in runs]) for key in ("recall", "precision")}
            | {"events": sum(r["sensor"][kind]["events"] for r in runs)} for kind in NUISANCE},
    }


def summarise(nuisance: list[dict], faults: list[dict], control: list[dict], headline: float) -> dict:
    """Medians over seeds; precision at one fault per machine-month uses the headline rate's false alarms."""
    by_rate = {f"{rate:g}": summarise_nuisance([r for r in nuisance if r["nuisance_rate"] == rate])
               for rate in dict.fromkeys(r["nuisance_rate"] for r in nuisance)}
    f = by_rate[f"{headline:g}"]["false_alarms_per_machine_day"] if f"{headline:g}" in by_rate else None
    machine = {}
    for kind in MACHINE_FAULTS:
        rows = [r for r in faults if r["fault"] == kind]
        if not rows:
            continue
        a = _median([r["alerts_per_event"] for r in rows])
        machine[kind] = {"events": sum(r["events"] for r in rows), "recall": _median([r["recall"] for r in rows]),
                         "f1": _median([r["f1"] for r in rows]), "alerts_per_event": a,
                         "precision_at_one_fault_per_machine_month":
                             round(a / (a + DAYS_PER_FAULT * f), 4) if a is not None and f is not None and a + f else None}
    return {"headline_nuisance_rate": headline, "false_alarms_per_machine_day": f,
            "target_false_alarms_per_machine_day": 1.0,
            "false_alarms_per_machine_day_without_nuisance": _median([r["false_alarms_per_machine_day"] for r in control]),
            "nuisance": by_rate, "machine_faults": machine}


def measure(seeds: list[int] | None = None, machines: int = 200, hours: float = 2.0,
            nuisance_rates: list[float] | None = None, fault_machines: int = 200, fault_hours: float = 1.0,
            fault_runs: bool = True) -> dict:
    """The whole section (without provenance): what `bench.run` would record. Prints one line per run."""
    seeds = seeds or [101, 102, 103]
    rates = nuisance_rates or [DEFAULT_FAULT_RATE, 0.2]
    specs = load_model_specs(PACKAGED_MODELS_FILE)
    nuisance = []
    for rate in rates:
        for seed in seeds:
            nuisance.append(measure_nuisance(specs, seed, machines, hours, rate))
            print(json.dumps({k: v for k, v in nuisance[-1].items() if k != "sensor"}), flush=True)
    control = []  # the same fleets and imperfections without nuisance faults: what the imperfections alone cost
    for seed in seeds:
        control.append(measure_nuisance(specs, seed, machines, hours, 0.0))
        print(json.dumps({k: v for k, v in control[-1].items() if k != "sensor"}), flush=True)
    faults = []
    for seed in seeds if fault_runs else []:
        for kind in MACHINE_FAULTS:
            faults.append(measure_fault(specs, kind, seed, fault_machines, fault_hours))
            print(json.dumps(faults[-1]), flush=True)
    return {
        "seeds": seeds,
        "nuisance_runs": {"machines": machines, "hours": hours, "nuisance_rates": rates,
                          "imperfections": IMPERFECTIONS, "lost_rate": LOST_RATE},
        "fault_runs": {"machines": fault_machines, "hours": fault_hours, "fault_rate": 0.5},
        **summarise(nuisance, faults, control, rates[0]),
        "runs": {"nuisance": nuisance, "control": control, "faults": faults},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--machines", type=int, default=200, help="nuisance fleet size")
    parser.add_argument("--hours", type=float, default=2.0, help="event time of the nuisance runs")
    parser.add_argument("--nuisance-rates", type=float, nargs="+", default=[DEFAULT_FAULT_RATE, 0.2],
                        help="shares of machines with a nuisance fault; the first is the headline")
    parser.add_argument("--fault-machines", type=int, default=200)
    parser.add_argument("--fault-hours", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true",
                        help="one seed, 40 machines for 1 h, no fault runs; prints only (a smoke run)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.machines, args.hours, args.no_write = [101], 40, 1.0, True
    summary = {
        "provenance": {"date": utc_now(), **git_state(), "reproduce": "python -m bench.sim_realism"},
        **measure(args.seeds, args.machines, args.hours, args.nuisance_rates, args.fault_machines, args.fault_hours,
                  fault_runs=not args.quick),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "sim_realism.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
