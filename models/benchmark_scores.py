"""Benchmark scorers for labelled real data: the SKAB protocol (point-wise) and NAB's event scoring.

Both compare the replay's score rows (``ANOMALY_SCORE_ARROW_SCHEMA``: one row per scored window) with the
input's labelled readings, ``points``: columns machine_id (string), ts (int64 epoch ms), label (bool), one row
per labelled reading (``connectors.replay_sources.ReplayInput.points``). A machine is one file of the data set.

**Point predictions** (`point_predictions`): a reading (machine_id, ts) is predicted anomalous when the scored
window of its machine with ``window_start <= ts < window_end`` has ``is_anomaly`` true; a reading that no
scored window covers is predicted normal.

**SKAB protocol** (`skab_score`), as in waico/SKAB ``core/metrics.py`` ``chp_score(metric="binary")`` (and
the older ``evaluating.py`` ``binary``): TP, TN, FP, FN of the point labels against the point predictions,
counted per file and summed over all files, then F1 = TP / (TP + (FP + FN) / 2) = 2TP / (2TP + FP + FN),
FAR = FP / (FP + TN), MAR = FN / (FN + TP). SKAB prints the rates in % rounded to 2 decimals and F1 to 2; here
they are fractions, unrounded (``summary`` rounds to 4). The first ``train_rows`` = 400 readings of each file
in time order are its training part (SKAB's baselines fit on ``df[:400]``) and are not counted. A ratio
with a zero denominator is NaN (``None`` in the summary).

**NAB** (`nab_score`), as in numenta/NAB ``nab/sweeper.py`` (``Sweeper.calcSweepScore`` and
``calcScoreByThreshold``) and ``nab/runner.py`` (``normalize``), per file (machine), with its readings in
time order numbered i = 0..N-1:

- The detections are the score rows with ``alert_raised``; a detection's time is its window's start, and it
  lands on the first reading at or after that time (for hourly data, one reading is one window). Several
  detections on one reading count once.
- Probation: readings with i < min(floor(0.15 N), 0.15 x 5000) are not scored at all (neither their
  detections nor, when all its readings lie there, a window).
- A labelled window [start, end] (both ends included) covers readings l..r, width w = r - l + 1. A detection
  at reading i inside it scores ``A_tp x S(-(r - i + 1) / w) / S(-1)``, with S(y) = 2 / (1 + exp(5y)) - 1 the
  scaled sigmoid (S(y) = -1 for y >= 3): 1.0 at the window's first reading, less later. Only the best, that
  is the earliest, detection of a window counts; a scored window without one costs ``-A_fn``.
- A detection outside every window costs ``A_fp x S(|r' - i| / (w' - 1))`` (a negative number), r' and w'
  of the last window ending before it; ``A_fp x S(3) = -A_fp`` when no window precedes it. NAB divides by
  zero for a preceding window of width 1; here that position is taken as 3 (cost ``-A_fp``).
- Raw score = the sum over windows and false positives; summed over files. Normalised score =
  100 (raw - null) / (perfect - null): null = the null detector's score (no detections: ``-A_fn`` per scored
  window), perfect = ``A_tp`` x the number of labelled windows.
- Windows are matched to readings by time (NAB requires a window's ends to be reading timestamps; then both
  agree); overlapping windows of one file are refused, as NAB's labels never overlap.

Standard profile: A_tp 1.0, A_fp 0.11, A_fn 1.0 (NAB ``config/profiles.json``). Counts: ``tp`` windows
detected, ``fn`` scored windows missed, ``fp`` scored detections outside windows.

>>> import math
>>> round(scaled_sigmoid(-1.0), 5), scaled_sigmoid(0.0), scaled_sigmoid(3.0)
(0.98661, 0.0, -1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SKAB_TRAIN_ROWS = 400
NAB_PROBATION = 0.15
NAB_PROBATION_CAP_ROWS = 5000  # NAB: probation = min(floor(p N), p x 5000)
NAB_STANDARD = {"tp": 1.0, "fp": 0.11, "fn": 1.0}


def _ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)


def _bools(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False), dtype=bool)


def _codes(*columns: pa.ChunkedArray | pa.Array) -> tuple[list[str], list[np.ndarray]]:
    """Machine ids -> integer codes shared by all `columns` (sorted ids, codes index them)."""
    names = sorted(set().union(*(pc.unique(c.cast(pa.string())).to_pylist() for c in columns)) - {None})
    values = pa.array(names, pa.string())
    codes = [np.asarray(pc.fill_null(pc.index_in(c.cast(pa.string()), value_set=values), -1).to_numpy(
        zero_copy_only=False), dtype=np.int64) for c in columns]
    return names, codes


def _time_order(codes: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): rows sorted by (machine, ts, position); each row's number within its machine in that order."""
    order = np.lexsort((np.arange(len(ts)), ts, codes))
    sorted_codes = codes[order]
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(order) else np.zeros(0, int)
    starts = np.repeat(first, np.diff(np.r_[first, len(order)]))
    rank = np.empty(len(ts), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts
    return order, rank


def point_predictions(scores: pa.Table, points: pa.Table) -> np.ndarray:
    """One bool per row of `points`: is the scored window of its machine that contains its ts anomalous?

    Vectorised: windows and readings are keyed by (machine code, time) packed in one int64 and matched by
    one ``searchsorted`` (windows of one machine do not overlap: tumbling windows).

    >>> t = pa.timestamp("ms", "UTC")
    >>> scores = pa.table({"machine_id": ["A", "A", "B"], "window_start": pa.array([0, 10, 0]).cast(t),
    ...     "window_end": pa.array([10, 20, 10]).cast(t), "is_anomaly": [False, True, True]})
    >>> points = pa.table({"machine_id": ["A", "A", "A", "B", "C"], "ts": [5, 10, 25, 9, 5]})
    >>> point_predictions(scores, points).tolist()
    [False, True, False, True, False]
    """
    n = points.num_rows
    if n == 0 or scores.num_rows == 0:
        return np.zeros(n, dtype=bool)
    _, (window_codes, point_codes) = _codes(scores["machine_id"], points["machine_id"])
    starts, ends = _ms(scores["window_start"]), _ms(scores["window_end"])
    anomalous = _bools(scores["is_anomaly"])
    ts = _ms(points["ts"])
    low = min(int(starts.min()), int(ts.min()))
    span = max(int(starts.max()), int(ts.max())) - low + 1
    if (int(max(window_codes.max(), point_codes.max())) + 2) * span < 2**62:  # machines' times side by side
        window_keys, point_keys = window_codes * span + (starts - low), point_codes * span + (ts - low)
    else:  # too wide for int64: the times' ranks instead
        times = np.unique(np.concatenate([starts, ts]))
        span = len(times) + 1
        window_keys = window_codes * span + np.searchsorted(times, starts)
        point_keys = point_codes * span + np.searchsorted(times, ts)
    order = np.argsort(window_keys, kind="stable")
    window_keys = window_keys[order]
    index = np.searchsorted(window_keys, point_keys, side="right") - 1
    found = index >= 0
    index = np.where(found, index, 0)
    rows = order[index]
    return found & (window_codes[rows] == point_codes) & (ts < ends[rows]) & anomalous[rows]


@dataclass
class SkabResult:
    tp: int
    fp: int
    fn: int
    tn: int
    train_rows: int
    machines: int
    scored_readings: int
    per_machine: list[dict] = field(default_factory=list)  # machine_id, train, tp, fp, fn, tn

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def far(self) -> float:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        return _ratio(self.fn, self.fn + self.tp)

    def summary(self) -> dict:
        return {
            "protocol": "skab", "f1": _round(self.f1), "far": _round(self.far), "mar": _round(self.mar),
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "train_rows": self.train_rows,
            "machines": self.machines, "scored_readings": self.scored_readings, "per_machine": self.per_machine,
        }


def skab_score(scores: pa.Table, points: pa.Table, *, train_rows: int = SKAB_TRAIN_ROWS) -> SkabResult:
    """The SKAB protocol (module docstring) of `scores` against the labelled readings `points`."""
    return skab_from_predictions(points, point_predictions(scores, points), train_rows=train_rows)


def skab_from_predictions(points: pa.Table, predicted: np.ndarray, *, train_rows: int = SKAB_TRAIN_ROWS) -> SkabResult:
    """The SKAB protocol given one prediction per row of `points`."""
    if train_rows < 0:
        raise ValueError(f"skab_score: train_rows must be >= 0, got {train_rows!r}")
    if len(predicted) != points.num_rows:
        raise ValueError(f"skab_score: {len(predicted)} predictions for {points.num_rows} labelled readings")
    names, (codes,) = _codes(points["machine_id"])
    _, rank = _time_order(codes, _ms(points["ts"]))
    truth, predicted = _bools(points["label"]), np.asarray(predicted, dtype=bool)
    scored = rank >= train_rows
    k = len(names)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask & scored], minlength=k)

    tp, fp = count(truth & predicted), count(~truth & predicted)
    fn, tn = count(truth & ~predicted), count(~truth & ~predicted)
    train = np.bincount(codes[~scored], minlength=k)
    per_machine = [{"machine_id": m, "train": int(train[i]), "tp": int(tp[i]), "fp": int(fp[i]),
                    "fn": int(fn[i]), "tn": int(tn[i])} for i, m in enumerate(names)]
    return SkabResult(tp=int(tp.sum()), fp=int(fp.sum()), fn=int(fn.sum()), tn=int(tn.sum()), train_rows=train_rows,
                      machines=k, scored_readings=int(scored.sum()), per_machine=per_machine)


def scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid: 2 / (1 + exp(5 y)) - 1, and -1 for y >= 3 (a detection far after a window)."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass
class NabResult:
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int
    profile: dict[str, float]
    probation_rows: dict[str, int]
    windows: list[dict] = field(default_factory=list)  # per labelled window (see nab_score)
    false_positives: list[dict] = field(default_factory=list)  # machine_id, ts, score

    @property
    def normalised(self) -> float:
        return _ratio(100.0 * (self.raw - self.null), self.perfect - self.null)

    def summary(self) -> dict:
        return {
            "protocol": "nab", "profile": "standard" if self.profile == NAB_STANDARD else self.profile,
            "raw_score": _round(self.raw), "normalised_score": _round(self.normalised), "null_score": self.null,
            "perfect_score": self.perfect, "tp": self.tp, "fp": self.fp, "fn": self.fn,
            "probation_rows": self.probation_rows, "windows": self.windows,
            "false_positives": self.false_positives,
        }


def nab_score(scores: pa.Table, points: pa.Table, windows: pa.Table, *, profile: dict[str, float] | None = None,
              probation: float = NAB_PROBATION) -> NabResult:
    """NAB's score (module docstring) of the alerts in `scores` against the labelled `windows` (columns
    machine_id, start_ts, end_ts: epoch ms or timestamps, both ends included; e.g. ``ReplayInput.labels``).
    `points` gives each machine's readings (their ts); machines without readings there are not scored.

    Per window: machine_id, start_ts, end_ts, rows (readings it covers), scored (not all in probation),
    detections (scored ones inside it), first_detection_ts, position (NAB's relative position of that
    detection, -1 = first reading), score (its contribution: the detection's, or -A_fn when missed).
    """
    weights = dict(NAB_STANDARD if profile is None else profile)
    if set(weights) != {"tp", "fp", "fn"}:
        raise ValueError(f"nab_score: profile needs the weights tp, fp, fn, got {sorted(weights)}")
    if not 0.0 <= probation < 1.0:
        raise ValueError(f"nab_score: probation must be in [0, 1), got {probation!r}")
    names, (point_codes, window_codes, score_codes) = _codes(points["machine_id"], windows["machine_id"],
                                                             scores["machine_id"])
    point_ts, starts, ends = _ms(points["ts"]), _ms(windows["start_ts"]), _ms(windows["end_ts"])
    alerts = _bools(scores["alert_raised"])
    detection_ts, detection_codes = _ms(scores["window_start"])[alerts], score_codes[alerts]
    result = NabResult(raw=0.0, null=0.0, perfect=weights["tp"] * windows.num_rows, tp=0, fp=0, fn=0,
                       profile=weights, probation_rows={})
    for code, machine in enumerate(names):
        ts = np.sort(point_ts[point_codes == code])
        mine = np.flatnonzero(window_codes == code)
        mine = mine[np.argsort(starts[mine], kind="stable")]
        if len(ts) == 0:
            if len(mine):
                raise ValueError(f"nab_score: machine {machine!r} has labelled windows but no readings")
            continue
        _nab_machine(result, machine, ts, starts[mine], ends[mine], detection_ts[detection_codes == code], weights,
                     probation)
    return result


def _nab_machine(result: NabResult, machine: str, ts: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 detections: np.ndarray, weights: dict[str, float], probation: float) -> None:
    n = len(ts)
    probation_rows = min(math.floor(probation * n), probation * NAB_PROBATION_CAP_ROWS)
    result.probation_rows[machine] = int(math.ceil(probation_rows))
    lefts = np.searchsorted(ts, starts, side="left")
    rights = np.searchsorted(ts, ends, side="right") - 1
    if np.any(lefts[1:] <= rights[:-1]):
        raise ValueError(f"nab_score: labelled windows of machine {machine!r} overlap")
    rows = np.unique(np.searchsorted(ts, detections, side="left"))
    rows = rows[(rows < n) & (rows >= probation_rows)]
    max_tp = scaled_sigmoid(-1.0)
    best: dict[int, tuple[float, int, float, int]] = {}  # window -> (score, row, position, detections)
    for i in rows.tolist():
        k = int(np.searchsorted(lefts, i, side="right")) - 1
        if k >= 0 and i <= rights[k]:
            width = rights[k] - lefts[k] + 1
            position = -(rights[k] - i + 1) / width
            score = scaled_sigmoid(position) * weights["tp"] / max_tp
            previous = best.get(k)
            if previous is None or score > previous[0]:
                best[k] = (score, i, position, (previous[3] if previous else 0) + 1)
            else:
                best[k] = (*previous[:3], previous[3] + 1)
            continue
        before = int(np.searchsorted(rights, i, side="left")) - 1
        while before >= 0 and lefts[before] > rights[before]:  # a window without readings is never entered
            before -= 1
        if before < 0 or rights[before] - lefts[before] + 1 <= 1:
            position = 3.0
        else:
            position = abs(int(rights[before]) - i) / float(rights[before] - lefts[before])
        score = scaled_sigmoid(position) * weights["fp"]
        result.raw += score
        result.fp += 1
        result.false_positives.append({"machine_id": machine, "ts": int(ts[i]), "score": _round(score)})
    for k in range(len(starts)):
        width = int(max(rights[k] - lefts[k] + 1, 0))
        scored = width > 0 and rights[k] >= probation_rows
        row: dict = {"machine_id": machine, "start_ts": int(starts[k]), "end_ts": int(ends[k]), "rows": width,
                     "scored": bool(scored), "detections": 0, "first_detection_ts": None, "position": None,
                     "score": None}
        if scored:
            result.null -= weights["fn"]
            if k in best:
                score, i, position, count = best[k]
                row |= {"detections": count, "first_detection_ts": int(ts[i]), "position": round(position, 6),
                        "score": _round(score)}
                result.raw += score
                result.tp += 1
            else:
                row["score"] = -weights["fn"]
                result.raw -= weights["fn"]
                result.fn += 1
        result.windows.append(row)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
