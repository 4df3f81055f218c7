"""The replay's outputs on disk: per-window scores (Parquet), metrics, the grid leaderboard and a report
folder (Markdown + PNG plots of the best and worst machines).

Layout of `--out DIR`::

    DIR/leaderboard.md, leaderboard.csv      one row per grid point, best F1 first
    DIR/run-NN/scores.parquet                every scored window (ANOMALY_SCORE_ARROW_SCHEMA)
    DIR/run-NN/metrics.json                  models.evaluation summary + the overrides of this point
    DIR/run-NN/report.md                     metrics tables and the plots below
    DIR/run-NN/machine-<id>.png              signal with window band, score and threshold, fault spans, alerts
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.evaluation import Evaluation

PLOTTED_MACHINES = 2  # best and worst each


def write_run(directory: Path, overrides: dict[str, str], scores: pa.Table, window_stats: pa.Table,
              labels: pa.Table | None, evaluation: Evaluation | None, readings: int, seconds: float) -> dict:
    """Write one grid point's outputs; returns its leaderboard row."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(scores, directory / "scores.parquet", compression="zstd")
    metrics = {"overrides": overrides, "readings": readings, "seconds": round(seconds, 3),
               "readings_per_s": round(readings / seconds) if seconds else None,
               "windows_scored": scores.num_rows, "alerts": int(pc.sum(scores["alert_raised"]).as_py() or 0)}
    if evaluation is not None:
        metrics |= evaluation.summary()
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plots = _plot_machines(directory, scores, window_stats, labels, evaluation)
    (directory / "report.md").write_text(_markdown(directory.name, metrics, evaluation, plots))
    row = {"run": directory.name, **{f"set:{k}": v for k, v in overrides.items()}, "alerts": metrics["alerts"]}
    if evaluation is not None:
        f1s = [f["f1"] for f in evaluation.by_fault]
        row |= {"mean_f1": round(float(np.mean(f1s)), 4) if f1s else None,
                "false_alarms_per_machine_day": round(evaluation.false_alarms_per_machine_day, 3)}
        row |= {f"f1:{f['fault']}": f["f1"] for f in evaluation.by_fault}
    return row


def write_leaderboard(out: Path, rows: list[dict]) -> None:
    """leaderboard.md/.csv, best mean F1 first (then fewest false alarms)."""
    rows = sorted(rows, key=lambda r: (-(r.get("mean_f1") or 0), r.get("false_alarms_per_machine_day") or 0))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "leaderboard.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    (out / "leaderboard.md").write_text("# Replay leaderboard\n\n" + "\n".join(lines) + "\n")


def _markdown(name: str, metrics: dict, evaluation: Evaluation | None, plots: list[str]) -> str:
    lines = [f"# Replay {name}", "", f"Overrides: `{metrics['overrides'] or 'none'}`", "",
             (f"{metrics['readings']:,} readings in {metrics['seconds']} s ({metrics['readings_per_s']:,} readings/s); "
             f"{metrics['windows_scored']:,} windows scored; {metrics['alerts']} anomaly alerts."), ""]
    if evaluation is not None:
        lines += ["| fault | events | detected | recall | precision | F1 | median delay (s) | median delay (windows) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {f['fault']} | {f['events']} | {f['detected']} | {f['recall']} | {f['precision']} | {f['f1']} | "
                  f"{f['median_delay_s']} | {f['median_delay_windows']} |" for f in evaluation.by_fault]
        lines += ["", (f"False alarms: {evaluation.false_alarms} over {evaluation.machine_days:.2f} machine-days "
                      f"= **{evaluation.false_alarms_per_machine_day:.2f} per machine-day**."), ""]
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def _plot_machines(directory: Path, scores: pa.Table, window_stats: pa.Table, labels: pa.Table | None,
                   evaluation: Evaluation | None) -> list[str]:
    if scores.num_rows == 0:
        return []
    if evaluation is not None and evaluation.per_machine:
        ranked = sorted(evaluation.per_machine, key=lambda m: (m["detected"] - m["false_alarms"], -m["events"]))
        chosen = [m["machine_id"] for m in ranked[-PLOTTED_MACHINES:][::-1] + ranked[:PLOTTED_MACHINES]]
    else:
        counts = pc.value_counts(pc.filter(scores["machine_id"], scores["alert_raised"])).to_pylist()
        chosen = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:PLOTTED_MACHINES]]
        chosen = chosen or [scores["machine_id"][0].as_py()]
    names = []
    for machine in dict.fromkeys(chosen):
        name = f"machine-{machine}.png"
        _plot_one(directory / name, machine, scores, window_stats, labels)
        names.append(name)
    return names


def _plot_one(path: Path, machine: str, scores: pa.Table, window_stats: pa.Table, labels: pa.Table | None) -> None:
    mine = scores.filter(pc.equal(scores["machine_id"], machine)).sort_by("window_start")
    windows = window_stats.filter(pc.equal(window_stats["machine_id"], machine)).sort_by("window_start")
    t = mine["window_start"].cast(pa.int64()).to_numpy() / 1000.0
    tw = windows["window_start"].cast(pa.int64()).to_numpy() / 1000.0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    sensors = ("temperature", "pressure", "vibration")
    for sensor in sensors:
        mean = windows[f"{sensor}_mean"].to_numpy(zero_copy_only=False).astype(float)
        low = windows[f"{sensor}_min"].to_numpy(zero_copy_only=False).astype(float)
        high = windows[f"{sensor}_max"].to_numpy(zero_copy_only=False).astype(float)
        line = top.plot(tw - t[0] if len(t) else tw, mean, label=f"{sensor} (window mean, min-max band)")[0]
        top.fill_between(tw - t[0] if len(t) else tw, low, high, alpha=0.2, color=line.get_color())
    score = mine["score"].to_numpy()
    threshold = mine["threshold"].to_numpy(zero_copy_only=False).astype(float)
    alerted = mine["alert_raised"].to_numpy(zero_copy_only=False).astype(bool)
    x = t - t[0]
    bottom.plot(x, score, label="anomaly score")
    bottom.plot(x, threshold, label="threshold", linestyle="--")
    bottom.scatter(x[alerted], score[alerted], color="red", zorder=3, label="alert raised")
    if labels is not None:
        events = labels.filter(pc.equal(labels["machine_id"], machine)).to_pylist()
        for i, event in enumerate(events):
            for axis in (top, bottom):
                axis.axvspan(event["start_ts"] / 1000.0 - t[0], event["end_ts"] / 1000.0 - t[0], color="orange",
                             alpha=0.2, label=f"labelled fault ({event['fault']})" if i == 0 and axis is top else None)
    top.set_title(f"{machine}: {', '.join(sensors)} per window, labelled faults; below: anomaly score, threshold, alerts")
    top.legend(loc="upper left", fontsize=7)
    bottom.legend(loc="upper left", fontsize=7)
    bottom.set_xlabel("seconds since the machine's first scored window")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
