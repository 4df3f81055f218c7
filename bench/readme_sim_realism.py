"""The README block `sim-realism` (`bench.readme` renders it): nuisance faults, transport imperfections,
sensor health and precision at a realistic prevalence, from the `sim_realism` section of latest.json
(`bench/sim_realism.py`)."""

from __future__ import annotations

from bench.readme_format import Results, dec, missing, n, source

KEY = "sim_realism"
NUISANCE_NAMES = {"stuck_sensor": "stuck sensor", "spike": "spike", "dropout": "dropout (sensor null)"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{dec(100 * x, 1)} %"


def sim_realism(results: Results) -> str:
    s = results.get(KEY)
    if s is None:
        return missing(KEY, "python -m bench.run --only sim-realism")
    runs, rates = s["nuisance_runs"], s["nuisance_runs"]["nuisance_rates"]
    seeds = f"{s['seeds'][0]}–{s['seeds'][-1]}" if len(s["seeds"]) > 1 else str(s["seeds"][0])
    imperfections = ", ".join(f"{name.replace('_', ' ')} {_pct(rate)}" for name, rate in runs["imperfections"].items())
    lines = [
        f"Healthy fleets of {n(runs['machines'])} simulated machines for {runs['hours']:g} h (seeds {seeds}, medians), "
        f"a share of them with one recurring instrument fault each (stuck sensor, spike, dropout) and every "
        f"machine's messages through the transport imperfections ({imperfections}; {_pct(runs['lost_rate'])} of the "
        "readings lost), decoded and windowed by the flow's own code, then scored by sensor health and the "
        "models. No machine fault is injected: every `anomaly` alert is a false alarm.",
        "",
        "| instrument faults on | anomaly false alarms per machine-day | without sensor health | anomaly alerts "
        "during an instrument fault | target |",
        "| --- | --- | --- | --- | --- |",
        f"| none (imperfections only) | {dec(s['false_alarms_per_machine_day_without_nuisance'], 2)} | | | ≤ 1 |",
    ]
    for rate in rates:
        r = s["nuisance"][str(rate)]
        ok = "✔" if r["false_alarms_per_machine_day"] <= s["target_false_alarms_per_machine_day"] else "✘"
        lines.append(f"| {_pct(rate)} of the machines | **{dec(r['false_alarms_per_machine_day'], 2)}** | "
                     f"{dec(r['false_alarms_per_machine_day_without_sensor_health'], 2)} | "
                     f"{n(r['anomaly_alerts_during_nuisance'])} of {n(r['anomaly_alerts'])} | ≤ 1 {ok} |")
    headline = s["nuisance"][str(s["headline_nuisance_rate"])]["sensor_detection"]
    lines += ["", f"Sensor health (`models/sensor_health.py`) at {_pct(s['headline_nuisance_rate'])}: "
              + "; ".join(f"{NUISANCE_NAMES.get(kind, kind)}: recall {dec(d['recall'], 2)}, precision "
                          f"{dec(d['precision'], 2)} ({n(d['events'])} events)" for kind, d in headline.items()) + ".",
              "", "Machine faults (one kind per run, half the fleet faulty) through sensor health and the models:", "",
              "| fault | events | recall | F1 | anomaly alerts per fault event | precision at one fault per "
              "machine-month |", "| --- | --- | --- | --- | --- | --- |"]
    for fault, f in s["machine_faults"].items():
        lines.append(f"| {fault.replace('_', ' ')} | {n(f['events'])} | {dec(f['recall'], 3)} | {dec(f['f1'], 3)} | "
                     f"{dec(f['alerts_per_event'], 2)} | **{dec(f['precision_at_one_fault_per_machine_month'], 3)}** |")
    f_day = s["false_alarms_per_machine_day"]
    alerts = [f["alerts_per_event"] for f in s["machine_faults"].values()]
    ratio = 30 * f_day / (sum(alerts) / len(alerts)) if alerts else None
    lines += ["", "Precision at one fault per machine-month is `a / (a + 30 f)`: `a` alerts per fault event, `f` false "
              f"alarms per machine-day (the {_pct(s['headline_nuisance_rate'])} row above), 30 machine-days per fault. "
              + (f"At that prevalence false alarms outnumber true alerts about {dec(ratio, 0)} to 1, so F1 measured on "
                 "fleets where half the machines are faulty says little about what an operator sees."
                 if ratio is not None else "")]
    return "\n".join([*lines, "", source(results, KEY)])
