"""One replay plot per machine: a panel per sensor at its own scale, then the anomaly score.

Top to bottom, on one shared time axis (UTC), every window's value held until the next window (lines break
at gaps in the data, see `_steps`):

- one panel per sensor the machine has values for: the core sensors (`<sensor>_mean/_min/_max` of the window
  stats) in `SENSORS` order, then the extra channels (`channel_*` map columns) in the order they appear;
  the window mean as a line, the window min-max as a band, each panel at its own scale. At most
  `MAX_SENSOR_PANELS` of them: the rest are left out and named in `PlotLayout.left_out`;
- the score panel: the score, the adaptive threshold (null while warming up: the warm-up spans shaded
  grey), anomalous windows as dots and raised alerts as vertical lines at the window's end (when the
  alert exists), red for the machine's main detector family. Rows judged by another family (the score
  rows' `detector`, e.g. "seasonal_span" with its own threshold) are not on the score line: their scores
  are triangles, their alerts lines of another colour, each labelled with the family. A score spiking far
  above the threshold switches the panel to a symlog scale, linear up to the threshold's median, so the
  threshold stays readable;
- labelled fault spans (labels: machine_id, fault, start_ts, end_ts) shaded on every panel, a colour per
  fault kind.

The drawing has no randomness: the same tables give the same PNG bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.axes import Axes

from plantpulse.schema import SENSORS, window_channels

MAX_SENSOR_PANELS = 10  # SKAB has 8 channels; beyond 10 a figure is no longer readable
SCORE_PANEL = "anomaly score"
GAP_STEPS = 3.0  # a line breaks where windows are more than this many typical spacings apart
SYMLOG_ABOVE = 10.0  # symlog score axis when the largest score exceeds this many threshold medians
OTHER_FAMILY_COLOURS = ("darkorange", "tab:green", "tab:brown")  # rows judged by a second detector family
FAULT_COLOURS = ("tab:orange", "tab:purple", "tab:olive", "tab:cyan", "tab:pink", "tab:brown")
PANEL_HEIGHT_IN, SCORE_HEIGHT_IN, WIDTH_IN, DPI = 1.5, 2.6, 11.0, 80


@dataclass(frozen=True)
class SensorSeries:
    """One sensor's per-window mean, min and max (NaN where a window had no value)."""

    name: str
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class PlotLayout:
    """What a figure shows: its panels top to bottom (sensor names, `SCORE_PANEL` last), their y limits, the
    sensors with values that the panel cap left out, and the score panel's scale ("linear" or "symlog")."""

    machine: str
    panels: list[str] = field(default_factory=list)
    ylims: list[tuple[float, float]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    score_scale: str = "linear"

    def ylim(self, panel: str) -> tuple[float, float]:
        return self.ylims[self.panels.index(panel)]


def sensor_series(windows: pa.Table) -> list[SensorSeries]:
    """Every sensor of `windows` (one machine's window stats) with at least one finite mean: core sensors
    first, then the extra channels.

    >>> t = pa.table({"temperature_mean": [70.0, 71.0], "temperature_min": [69.0, 70.0],
    ...               "temperature_max": [71.0, 72.0], "pressure_mean": [None, None]})
    >>> [s.name for s in sensor_series(t)], sensor_series(t)[0].high.tolist()
    (['temperature'], [71.0, 72.0])
    """
    found = []
    for sensor in SENSORS:
        if f"{sensor}_mean" not in windows.column_names:
            continue
        mean = _floats(windows[f"{sensor}_mean"])
        low, high = (_floats(windows[name]) if name in windows.column_names else mean
                     for name in (f"{sensor}_min", f"{sensor}_max"))
        if np.isfinite(mean).any():
            found.append(SensorSeries(sensor, mean, low, high))
    for channel, stats in window_channels(windows).items():
        if np.isfinite(stats["mean"]).any():
            found.append(SensorSeries(channel, stats["mean"], stats["min"], stats["max"]))
    return found


def plot_machine(path: Path, machine: str, scores: pa.Table, window_stats: pa.Table, labels: pa.Table | None,
                 *, max_panels: int = MAX_SENSOR_PANELS) -> PlotLayout:
    """Draw `machine`'s figure (see the module docstring) to `path` (PNG); returns what it shows."""
    if max_panels < 0:
        raise ValueError(f"replay plot: max_panels must be >= 0, got {max_panels!r}")
    mine = scores.filter(pc.equal(scores["machine_id"], machine)).sort_by("window_start")
    windows = window_stats.filter(pc.equal(window_stats["machine_id"], machine)).sort_by("window_start")
    series = sensor_series(windows)
    shown, left_out = series[:max_panels], [s.name for s in series[max_panels:]]
    heights = [PANEL_HEIGHT_IN] * len(shown) + [SCORE_HEIGHT_IN]
    figure, axes = plt.subplots(len(heights), 1, sharex=True, squeeze=False, figsize=(WIDTH_IN, sum(heights) + 0.6),
                                gridspec_kw={"height_ratios": heights})
    panels: list[Axes] = list(axes[:, 0])
    try:
        w_start, w_end = _dates(windows["window_start"]), _dates(windows["window_end"])
        for axis, sensor in zip(panels, shown):
            _draw_sensor(axis, sensor, w_start, w_end)
        _draw_score(panels[-1], mine)
        _shade_faults(panels, labels, machine)
        panels[0].set_title(f"{machine}: window mean (line) and min-max (band) per sensor, each at its own scale; "
                            "labelled faults shaded; bottom: anomaly score", fontsize=9, loc="left")
        locator = mdates.AutoDateLocator()
        panels[-1].xaxis.set_major_locator(locator)
        panels[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        panels[-1].set_xlabel("time (UTC)")
        entries = len(panels[-1].get_legend_handles_labels()[0])
        if entries:
            # above the score panel, in one row (two with a second detector family): it hides no data
            panels[-1].legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7,
                              ncols=7 if entries <= 7 else -(-entries // 2), frameon=False, borderaxespad=0.1)
        for axis in panels:  # aligned y labels (figure.align_ylabels costs seconds on long replays)
            axis.yaxis.set_label_coords(-0.065, 0.5)
        figure.tight_layout(h_pad=0.3)
        figure.savefig(path, dpi=DPI)
        ylims = [(float(low), float(high)) for low, high in (a.get_ylim() for a in panels)]
        return PlotLayout(machine, [s.name for s in shown] + [SCORE_PANEL], ylims, left_out,
                          panels[-1].get_yscale())
    finally:
        plt.close(figure)


def _draw_sensor(axis: Axes, sensor: SensorSeries, start: np.ndarray, end: np.ndarray) -> None:
    x, mean, low, high = _steps(start, end, sensor.mean, sensor.low, sensor.high)
    axis.plot(x, mean, color="tab:blue", linewidth=1.0)
    band = np.isfinite(low) & np.isfinite(high)
    axis.fill_between(x, np.where(band, low, mean), np.where(band, high, mean), color="tab:blue", alpha=0.2,
                      linewidth=0)
    axis.set_ylabel(sensor.name, fontsize=8)
    axis.tick_params(labelsize=7)
    axis.margins(y=0.08)


def _draw_score(axis: Axes, mine: pa.Table) -> None:
    axis.set_ylabel(SCORE_PANEL, fontsize=8)
    axis.tick_params(labelsize=7)
    if mine.num_rows == 0:
        return
    start, end = _dates(mine["window_start"]), _dates(mine["window_end"])
    score, threshold = _floats(mine["score"]), _floats(mine["threshold"])
    family = np.asarray(mine["detector"].to_pylist(), dtype=object)
    families, counts = np.unique(family, return_counts=True)
    main = families[np.argmax(counts)]  # the spec's detector judges almost every row
    other = family != main
    x, score_steps, threshold_steps = _steps(start, end, np.where(other, np.nan, score),
                                             np.where(other, np.nan, threshold))
    axis.plot(x, score_steps, color="tab:blue", linewidth=1.0, label="score")
    axis.plot(x, threshold_steps, color="black", linestyle="--", linewidth=1.0, label="threshold")
    warming = _bools(mine["warming_up"])
    for i, (first, last) in enumerate(_runs(warming)):
        axis.axvspan(start[first], end[last], color="grey", alpha=0.15, linewidth=0,
                     label="warming up (no threshold)" if i == 0 else None)
    anomalous, alerted = _bools(mine["is_anomaly"]), _bools(mine["alert_raised"])
    if anomalous.any():
        axis.scatter((start[anomalous] + end[anomalous]) / 2, score[anomalous], s=9, color="tab:red", zorder=3,
                     label="anomalous window")
    for name, colour in zip([main, *sorted(set(families) - {main})], ("red", *OTHER_FAMILY_COLOURS)):
        own = family == name
        if name != main and own.any():
            axis.scatter((start[own] + end[own]) / 2, score[own], s=14, marker="^", color=colour, zorder=3,
                         label=f"{name} (threshold {np.nanmedian(threshold[own]):.2f})")
        if (alerted & own).any():
            axis.vlines(end[alerted & own], 0, 1, transform=axis.get_xaxis_transform(), color=colour,
                        linewidth=1.0, alpha=0.7, label=f"alert: {name}" if len(families) > 1 else "alert raised")
    finite = threshold[np.isfinite(threshold)]
    reference = float(np.median(finite)) if finite.size else 0.0
    if reference > 0 and float(np.nanmax(score)) > SYMLOG_ABOVE * reference:
        axis.set_yscale("symlog", linthresh=reference)
        axis.set_ylabel(f"{SCORE_PANEL} (symlog)", fontsize=8)


def _shade_faults(panels: list[Axes], labels: pa.Table | None, machine: str) -> None:
    if labels is None or labels.num_rows == 0:
        return
    events = labels.filter(pc.equal(labels["machine_id"], machine))
    if events.num_rows == 0:
        return
    faults = events["fault"].to_pylist()
    colours = {fault: FAULT_COLOURS[i % len(FAULT_COLOURS)] for i, fault in enumerate(sorted(set(faults)))}
    starts, ends = _dates(events["start_ts"]), _dates(events["end_ts"])
    for axis in panels:
        named: set[str] = set()
        for fault, start, end in zip(faults, starts, ends):
            label = f"labelled fault: {fault}" if axis is panels[-1] and fault not in named else None
            named.add(fault)
            axis.axvspan(start, end, color=colours[fault], alpha=0.25, linewidth=0, label=label)


def _steps(start: np.ndarray, end: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """x and y arrays drawing each window's value as a flat segment held until the next window starts, with
    a break (NaN) where the data has a gap: the next window starts more than `GAP_STEPS` typical spacings
    (the median spacing of window starts) later. Readings sparser than the window (one an hour in 10 s
    windows) thus still draw a line; before a gap or at the end a segment lasts max(window, spacing).

    >>> x, y = _steps(np.array([0.0, 10, 20, 60]), np.array([1.0, 11, 21, 61]), np.array([5.0, 6, 7, 8]))
    >>> x.tolist(), y.tolist()
    ([0.0, 10.0, 10.0, 20.0, 20.0, 30.0, 30.0, 60.0, 70.0, 70.0], [5.0, 5.0, 6.0, 6.0, 7.0, 7.0, nan, 8.0, 8.0, nan])
    """
    n = len(start)
    if n == 0:
        return (np.array([], dtype=float), *(np.array([], dtype=float) for _ in values))
    spacing = np.diff(start)
    positive = spacing[spacing > 0]
    typical = float(np.median(positive)) if positive.size else 0.0
    stop = start + np.maximum(end - start, typical)
    gap = np.ones(n, dtype=bool)
    gap[:-1] = spacing > GAP_STEPS * typical
    stop[:-1] = np.where(gap[:-1], np.minimum(stop[:-1], start[1:]), start[1:])
    per_window = 2 + gap.astype(int)  # start, stop (, a break point)
    index = np.repeat(np.arange(n), per_window)
    slot = np.arange(len(index)) - np.repeat(np.cumsum(per_window) - per_window, per_window)
    x = np.where(slot == 0, start[index], stop[index])
    ys = tuple(np.where(slot == 2, np.nan, v[index].astype(float)) for v in values)
    return (x, *ys)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of true values.

    >>> _runs(np.array([True, True, False, True]))
    [(0, 1), (3, 3)]
    """
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def _dates(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Matplotlib date numbers of a timestamp or epoch-ms column."""
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    ms = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(mdates.date2num(ms.astype("datetime64[ms]")), dtype=float)


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)  # nulls become NaN


def _bools(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
