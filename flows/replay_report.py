"""The replay's outputs on disk: per-window scores (Parquet), metrics, the grid leaderboard and a report
folder (Markdown + PNG plots of the best and worst machines, drawn by flows.replay_plots).

Layout of `--out DIR`::

    DIR/leaderboard.md, leaderboard.csv      one row per grid point, best first (see write_leaderboard)
    DIR/run-NN/scores.parquet                every scored window (ANOMALY_SCORE_ARROW_SCHEMA)
    DIR/run-NN/metrics.json                  event-level summary, the scoring and its benchmark summary,
                                             the overrides of this point
    DIR/run-NN/report.md                     the scoring used, metrics tables and the plots below
    DIR/run-NN/machine-<id>.png              a panel per sensor (window mean, min-max band), the score panel
                                             (threshold, warm-up, anomalous windows, alerts), fault spans

The scoring (`SCORINGS`) is how the run is judged: "events" (models.evaluation.evaluate, event level),
"skab" (the SKAB benchmark's point-wise protocol) or "nab" (NAB's event scoring). The benchmark summary
is the scorer's dict, printed generically; the keys of `RATES` are fractions in [0, 1] shown also as
percentages.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.replay_plots import MAX_SENSOR_PANELS, PlotLayout, plot_machine
from models.evaluation import Evaluation

PLOTTED_MACHINES = 2  # best and worst each
SCORINGS: dict[str, str] = {
    "events": (
        "Event level (models.evaluation): each labelled fault occurrence is one event, detected when an alert's "
        "window overlaps it or follows within 3 windows; recall, precision and F1 per fault kind, and false "
        "alarms per machine-day of scored time."
    ),
    "skab": (
        "SKAB benchmark protocol: in every file the first 400 rows train the model and are not scored, every later "
        "reading counts as predicted anomalous when its machine's window containing it is anomalous, and F1, FAR "
        "(false alarms / normal readings) and MAR (missed anomalous readings / anomalous readings) are pooled "
        "point-wise over all files."
    ),
    "nab": (
        "NAB scoring, standard profile: each labelled anomaly window earns up to +1 for its earliest detection "
        "(the earlier the more), each detection outside a window costs up to 0.11, each missed window costs 1, "
        "detections in the first 15 % of a file (probation) are ignored; the normalised score maps the null "
        "detector to 0 and the perfect one to 100."
    ),
}
# The leaderboard's headline per scoring: (key, True when higher is better), the first one ranks.
HEADLINES: dict[str, tuple[tuple[str, bool], ...]] = {
    "skab": (("f1", True), ("far", False), ("mar", False)),
    "nab": (("raw_score", True),),
}
RATES = frozenset({"f1", "far", "mar", "precision", "recall"})
NESTED_ROWS = 40  # rows of a benchmark's list (per file, per window, ...) shown in report.md; all in metrics.json


def write_run(directory: Path, overrides: dict[str, str], scores: pa.Table, window_stats: pa.Table,
              labels: pa.Table | None, evaluation: Evaluation | None, readings: int, seconds: float, *,
              scoring: str = "events", benchmark: dict | None = None) -> dict:
    """Write one grid point's outputs; returns its leaderboard row.

    `scoring` names how the run is judged (a key of `SCORINGS`); `benchmark` is that scorer's summary
    (SKAB: f1, far, mar, tp, fp, fn, tn, ...; NAB: raw_score, normalized_score, tp, fp, fn, ...).
    """
    if scoring not in SCORINGS:
        raise ValueError(f"replay report: scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(scores, directory / "scores.parquet", compression="zstd")
    metrics = {"overrides": overrides, "readings": readings, "seconds": round(seconds, 3),
               "readings_per_s": round(readings / seconds) if seconds else None,
               "windows_scored": scores.num_rows, "alerts": int(pc.sum(scores["alert_raised"]).as_py() or 0),
               "alerts_by_detector": _alerts_by_detector(scores)}
    if evaluation is not None:
        metrics |= evaluation.summary()
    metrics |= {"scoring": scoring, "benchmark": benchmark}
    metrics = _jsonable(metrics)  # type: ignore[assignment]
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    plots = _plot_machines(directory, scores, window_stats, labels, evaluation)
    (directory / "report.md").write_text(_markdown(directory.name, metrics, evaluation, plots))
    row: dict[str, object] = {"run": directory.name, **{f"set:{k}": v for k, v in overrides.items()}}
    if scoring in HEADLINES:
        row["scoring"] = scoring
        row |= {key: _rounded((benchmark or {}).get(key)) for key, _ in HEADLINES[scoring]}
    row["alerts"] = metrics["alerts"]
    if evaluation is not None:
        f1s = [f["f1"] for f in evaluation.by_fault]
        row |= {"mean_f1": round(float(np.mean(f1s)), 4) if f1s else None,
                "false_alarms_per_machine_day": round(evaluation.false_alarms_per_machine_day, 3)}
        row |= {f"f1:{f['fault']}": f["f1"] for f in evaluation.by_fault}
    return row


def write_leaderboard(out: Path, rows: list[dict]) -> None:
    """leaderboard.md/.csv, best first: by the benchmark's headline when the rows have one (SKAB: highest
    F1, then lowest FAR and MAR; NAB: highest raw score), else by mean event F1 (then fewest false alarms)."""
    rows = sorted(rows, key=_rank)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "leaderboard.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    ranked = [r["scoring"] for r in rows if r.get("scoring") in HEADLINES]
    intro = ""
    if ranked:
        order = ", ".join(f"{key} ({'higher' if up else 'lower'} is better)" for key, up in HEADLINES[ranked[0]])
        intro = f"Scoring: {ranked[0]}; best first by {order}.\n\n"
    (out / "leaderboard.md").write_text("# Replay leaderboard\n\n" + intro + "\n".join(lines) + "\n")


def _rank(row: dict) -> tuple:
    headline = HEADLINES.get(row.get("scoring", ""), ())
    if headline and _finite(row.get(headline[0][0])):
        return (0, *(-_worst(row.get(key), up) if up else _worst(row.get(key), up) for key, up in headline))
    return (1, -(row.get("mean_f1") or 0), row.get("false_alarms_per_machine_day") or 0)


def _worst(value: object, higher_is_better: bool) -> float:
    """The value as a float, a missing one as the worst possible."""
    if _finite(value):
        return float(value)  # type: ignore[arg-type]
    return -math.inf if higher_is_better else math.inf


def _markdown(name: str, metrics: dict, evaluation: Evaluation | None, plots: list[PlotLayout]) -> str:
    scoring = metrics["scoring"]
    rate = f"{metrics['readings_per_s']:,} readings/s" if metrics["readings_per_s"] is not None else "- readings/s"
    lines = [f"# Replay {name}", "", f"Scoring: **{scoring}** (`plantpulse replay --scoring {scoring}`).",
             SCORINGS[scoring], "", f"Overrides: `{metrics['overrides'] or 'none'}`", "",
             (f"{metrics['readings']:,} readings in {metrics['seconds']} s ({rate}); "
              f"{metrics['windows_scored']:,} windows scored; {metrics['alerts']} anomaly alerts"
              f"{_by_detector(metrics.get('alerts_by_detector'))}."), ""]
    if scoring != "events":
        lines += _benchmark_lines(scoring, metrics["benchmark"])
    if evaluation is not None:
        if scoring != "events":
            lines += ["## Event-level metrics (for reference)", ""]
        lines += ["| fault | events | detected | recall | precision | F1 | median delay (s) | median delay (windows) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {f['fault']} | {f['events']} | {f['detected']} | {f['recall']} | {f['precision']} | {f['f1']} | "
                  f"{f['median_delay_s']} | {f['median_delay_windows']} |" for f in evaluation.by_fault]
        lines += ["", (f"False alarms: {evaluation.false_alarms} over {evaluation.machine_days:.2f} machine-days "
                      f"= **{evaluation.false_alarms_per_machine_day:.2f} per machine-day**."), ""]
    if plots:
        lines += ["## Plots", "", (f"One panel per sensor at its own scale (at most {MAX_SENSOR_PANELS}), then the "
                                   "anomaly score with its threshold; labelled faults shaded."), ""]
    for plot in plots:
        file = f"machine-{plot.machine}.png"
        if plot.left_out:
            lines += [f"{file}: left out (panel cap {MAX_SENSOR_PANELS}): {', '.join(plot.left_out)}.", ""]
        lines += [f"![{file}]({file})", ""]
    return "\n".join(lines)


def _alerts_by_detector(scores: pa.Table) -> dict[str, int]:
    """Alerts per detector family that raised them (the score rows' `detector`), most first."""
    if scores.num_rows == 0:
        return {}
    counts = pc.value_counts(pc.filter(scores["detector"], scores["alert_raised"])).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: (-c["counts"], c["values"]))}


def _by_detector(counts: dict[str, int] | None) -> str:
    """' (by detector family: multivariate 2, seasonal_span 1)', or '' when no alert or no breakdown.

    >>> _by_detector({"multivariate": 2, "seasonal_span": 1}), _by_detector({})
    (' (by detector family: multivariate 2, seasonal_span 1)', '')
    """
    if not counts:
        return ""
    return " (by detector family: " + ", ".join(f"{name} {count}" for name, count in counts.items()) + ")"


def _benchmark_lines(scoring: str, benchmark: dict | None) -> list[str]:
    """The scorer's summary: its scalar values as one table, each list of rows (e.g. per file) as another."""
    if not benchmark:
        return [f"## Benchmark ({scoring})", "", "Not computed (no labels).", ""]
    lines = [f"## Benchmark ({scoring})", "", "| measure | value |", "| --- | --- |"]
    nested = {}
    for key, value in benchmark.items():
        if isinstance(value, list | dict):
            nested[key] = value
        else:
            lines.append(f"| {key} | {_cell(key, value)} |")
    lines.append("")
    for key, value in nested.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            lines += [f"### {key}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(_cell(c, v.get(c)) for c in columns) + " |" for v in value[:NESTED_ROWS]]
            if len(value) > NESTED_ROWS:
                lines += ["", f"... and {len(value) - NESTED_ROWS} more rows in metrics.json."]
        else:
            lines += [f"### {key}", "", f"`{json.dumps(_jsonable(value))}`"]
        lines.append("")
    return lines


def _cell(key: str, value: object) -> str:
    """A benchmark value for a table: rates (fractions) also as percentages, floats to 4 places.

    >>> _cell("far", 0.348), _cell("raw_score", -2.0), _cell("tp", 12), _cell("f1", None)
    ('0.348 (34.8 %)', '-2.0', '12', '-')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = round(float(value), 4)
    if key in RATES and 0.0 <= number <= 1.0:
        return f"{number} ({100 * number:.1f} %)"
    return str(number)


def _rounded(value: object) -> object:
    if isinstance(value, float | np.floating) and math.isfinite(value):
        return round(float(value), 4)
    return _jsonable(value)


def _finite(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _jsonable(value: object) -> object:
    """`value` with numpy scalars as Python ones and non-finite floats as None (valid JSON).

    >>> _jsonable({"f1": np.float64(0.5), "tp": np.int64(3), "bad": float("nan"), "rows": [(1, 2.0)]})
    {'f1': 0.5, 'tp': 3, 'bad': None, 'rows': [[1, 2.0]]}
    """
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot_machines(directory: Path, scores: pa.Table, window_stats: pa.Table, labels: pa.Table | None,
                   evaluation: Evaluation | None) -> list[PlotLayout]:
    if scores.num_rows == 0:
        return []
    if evaluation is not None and evaluation.per_machine:
        ranked = sorted(evaluation.per_machine, key=lambda m: (m["detected"] - m["false_alarms"], -m["events"]))
        chosen = [m["machine_id"] for m in ranked[-PLOTTED_MACHINES:][::-1] + ranked[:PLOTTED_MACHINES]]
    else:
        counts = pc.value_counts(pc.filter(scores["machine_id"], scores["alert_raised"])).to_pylist()
        chosen = [c["values"] for c in sorted(counts, key=lambda c: (-c["counts"], c["values"]))[:PLOTTED_MACHINES]]
        chosen = chosen or [scores["machine_id"][0].as_py()]
    return [plot_machine(directory / f"machine-{machine}.png", machine, scores, window_stats, labels)
            for machine in dict.fromkeys(chosen)]
