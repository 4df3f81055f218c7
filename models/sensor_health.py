"""Sensor faults are not machine faults: closed windows in, per-row faulty sensors and `sensor` alerts out.

A stuck, dropped-out or spiking instrument needs maintenance of the instrument, not of the machine, and
its readings must not teach or trip the anomaly models. `SensorHealth` judges every sensor (the core
sensors and any extra channel) of each closed window (rows of `WINDOW_STATS_ARROW_SCHEMA`) from the
window statistics alone, against what it learned of that machine, sensor and mode (the status that held
for the whole window, or `transition`). Nothing has a unit: every rule is scale-free.

- **stuck**: every reading of the window is the same value (``min == max`` over at least `min_readings`
  readings), the same value over a run of windows. Learned per machine, sensor and mode (exponentially
  forgotten over `horizon` windows): the share ``p0`` of constant windows after a varying one and the share
  ``q`` after a constant one (runs persist). A run of ``r`` constant windows has probability
  ``p0 x q^(r-1)`` (``p0 = (constant + stuck_prior) / (windows + 1)``, ``q`` starts at the marginal share);
  the sensor is stuck once that is at most `alpha`. The prior shrinks by the sensor's resolution (its
  smallest within-window range seen) over its learned mean range: a sensor whose readings spread over many
  steps of its resolution cannot read one value ten times by chance, so it is stuck after one constant
  window, a coarsely quantised one only after a longer run. A mode in which the sensor is
  constant in more than `p_max` of the windows is not judged (rpm at standstill is always 0). Judging starts
  once `min_windows` windows of that mode were learned.
- **dropout**: the sensor is null in every reading of a window that has readings, for a sensor the
  machine has reported before (a machine that never had the sensor is not faulty). The same run test on
  the null windows (prior `dropout_prior`; a mode learned too little borrows the counts of all modes): a
  sensor that is never null drops out in its first null window (after ``dropout_prior / alpha`` learned
  windows, else the second), a channel sampled less often than the window is long must be null for longer.
- **spike**: one reading far outside the rest of its window. Leaving the window's maximum (or minimum)
  ``x`` out, the other ``n - 1`` readings have mean ``m'`` and standard deviation ``s'`` (exact, from the
  window's count, mean and std). ``x`` is a spike when ``|x - m'|`` exceeds `spike_ratio` x ``s'`` and
  `spike_range` x the learned mean within-window range (max - min) of the windows in which that sensor varied
  in that mode; in a mode where it (almost) never varies, when the others are all equal and ``x`` is more
  than `spike_range` x the sensor's resolution (its smallest range seen) off. The previous window's last
  reading must be near ``m'`` (not a level step, not a run-down). Only settled windows are judged (the
  second window of a mode onwards: a start or stop moves the readings within a window).

Windows judged faulty are not learned: a run is learned when it ends unflagged. Per (machine, sensor,
kind) an alert is raised on the first faulty window after at least `cooldown_windows` windows without that
fault: an episode alerts once, its later windows are detections that keep its incident open. One detection
row per (window, kind) names the faulty sensors (the alerts table keys on machine, rule and window).
`faulty` also marks a sensor's first window after a stuck or null run (a stuck sensor coming back jumps to the
true value, which the models' rise features would take for a sudden change).

The state is columnar NumPy, indexed by (machine, sensor, mode), and pickles into a Bytewax snapshot.

>>> import numpy as np, pyarrow as pa
>>> from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
>>> def window(i, temperature):
...     t = np.asarray(temperature, dtype=float)
...     row = {f.name: 0 for f in WINDOW_STATS_ARROW_SCHEMA if pa.types.is_integer(f.type)}
...     row.update({f.name: 0.0 for f in WINDOW_STATS_ARROW_SCHEMA if pa.types.is_floating(f.type)})
...     row.update(machine_id="M1", machine_type="pump", status_last="running", window_start=i * 10_000,
...                window_end=(i + 1) * 10_000, first_ts=i * 10_000, last_ts=i * 10_000 + 9_000, emitted_at=0,
...                readings=len(t), secs_running=10.0, temperature_count=len(t), temperature_mean=t.mean(),
...                temperature_min=t.min(), temperature_max=t.max(), temperature_std=t.std(),
...                temperature_last=t[-1])
...     for s in ("pressure", "vibration", "rpm", "power"):
...         row.update({f"{s}_count": 0, f"{s}_mean": None, f"{s}_min": None, f"{s}_max": None,
...                     f"{s}_std": None, f"{s}_last": None})
...     return pa.Table.from_pylist([row], schema=pa.schema([f for f in WINDOW_STATS_ARROW_SCHEMA
...                                                          if not f.name.startswith("channel_")]))
>>> health, rng = SensorHealth(), np.random.default_rng(0)
>>> for i in range(40):  # a healthy, noisy temperature
...     verdict = health.check(window(i, 70 + 0.05 * rng.standard_normal(10)), now_ms=0)
>>> verdict.detections is None
True
>>> spike = 70 + 0.05 * rng.standard_normal(10)
>>> spike[4] = 75.0
>>> verdict = health.check(window(40, spike), now_ms=0)
>>> verdict.alerts["rule_id"].to_pylist(), verdict.faulty["temperature"].tolist()
(['sensor_spike'], [True])
>>> ["temperature" in health.check(window(i, [70.01] * 10), now_ms=0).faulty for i in (41, 42, 43)]
[False, True, True]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plantpulse.schema import ALERT_ARROW_SCHEMA, SENSORS, STATUSES, window_channels

KINDS: tuple[str, ...] = ("stuck", "dropout", "spike")
RULE_IDS: dict[str, str] = {kind: f"sensor_{kind}" for kind in KINDS}
MODES: tuple[str, ...] = (*STATUSES, "transition")
STUCK, DROPOUT, SPIKE = range(len(KINDS))
_TRANSITION = len(STATUSES)
_STATS = ("count", "mean", "min", "max", "std", "last")
_NEVER = 10**9
class _RunTest:
    """Is a run of hit windows (constant, or null) too improbable for this machine, sensor and mode?

    Learned per (machine, sensor, mode): the share ``p0`` of hits among windows after a non-hit and the
    share ``q`` among windows after a hit (runs persist), exponentially forgotten. A run of ``r`` hits has
    probability ``p0 x q^(r-1)`` (each factor of its own window's mode); it is flagged once that is at most
    `alpha`. A mode where hits are common (``p > p_max``: rpm at standstill is always constant) is not
    judged. A run's windows are learned when it ends unflagged, never when it was flagged. `pooled`: a mode
    that learned fewer than `min_windows` windows is judged on the counts of all modes (dropout: a sensor that
    reports in every window of the modes seen so far is not expected to be null in a new one).
    """

    def __init__(self, owner: SensorHealth, prior: float, pooled: bool = False) -> None:
        self.owner, self.prior, self.pooled = owner, prior, pooled
        self._decays = np.r_[[owner.decay] * 4, [1.0] * 4]
        self.counts = np.zeros((0, 0, len(MODES), 8))  # den0, num0, den1, num1, then the same pending
        self.run = np.zeros((0, 0), dtype=np.int64)
        self.logp = np.zeros((0, 0))
        self.flagged = np.zeros((0, 0), dtype=bool)
        self.value = np.zeros((0, 0))

    def grow(self, machines: int, sensors: int) -> None:
        for name, fill in (("counts", 0.0), ("run", 0), ("logp", 0.0), ("flagged", False), ("value", np.nan)):
            old = getattr(self, name)
            new = np.full((machines, sensors, *old.shape[2:]), fill, dtype=old.dtype)
            new[: old.shape[0], : old.shape[1]] = old
            setattr(self, name, new)

    def step(self, m: np.ndarray, cell: np.ndarray, judged: np.ndarray, hit: np.ndarray, cont: np.ndarray,
             value: np.ndarray, prior_scale: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One window per machine `m` (rows x sensors masks; `cell`: the flat (machine, sensor, mode) index of
        each, see `SensorHealth._step`); returns (flagged, log10 run probability, the cells' counts after).

        `prior_scale` (0..1) shrinks the prior where a hit is implausible anyway (see `SensorHealth`)."""
        o = self.owner
        if not self.counts.flags.c_contiguous:
            self.counts = np.ascontiguousarray(self.counts)
        cells = self.counts.reshape(-1, 8)  # a view: row `cell` is counts[machine, sensor, mode]
        learn = cells.take(cell, axis=0)  # (rows, sensors, 8)
        run, was_flagged, was_logp = self.run[m], self.flagged[m], self.logp[m]
        in_run = run > 0
        # The run probability matters for the hits only (a non-hit has logp 0 and is never flagged).
        logp = np.zeros(hit.shape)
        r, c = np.nonzero(hit)
        if len(r):
            counts = learn[r, c]  # (hits, 8)
            if self.pooled:  # a mode learned too little borrows the counts of all modes
                few = counts[:, 0] + counts[:, 2] < o.min_windows
                if few.any():
                    counts[few] = self.counts[m[r[few]], c[few]].sum(axis=1)
            prior = self.prior * (prior_scale[r, c] if isinstance(prior_scale, np.ndarray) else prior_scale)
            hit_cont = cont[r, c]
            den0, num0, den1, num1 = (counts[:, i] for i in range(4))
            marginal = (num0 + num1 + prior) / (den0 + den1 + 1.0)
            judgeable = (den0 + den1 >= o.min_windows) & (marginal <= o.p_max)
            p = np.where(hit_cont, (num1 + marginal) / (den1 + 1.0), (num0 + prior) / (den0 + 1.0))
            step_logp = np.where(judgeable, np.log(np.minimum(p, 1.0)), 0.0)
            logp[r, c] = np.where(hit_cont, was_logp[r, c], 0.0) + step_logp
        flagged = hit & ((cont & was_flagged) | (logp <= o.log_alpha))
        ended = in_run & judged & ~cont  # a non-hit, or a hit of another value: the old run ends
        if ended.any():  # rare: release an unflagged run's pending counts (of every mode), drop a flagged one's
            r, c = np.nonzero(ended)
            pending = self.counts[m[r], c, :, 4:]
            self.counts[m[r], c, :, :4] += np.where(self.flagged[m[r], c][:, None, None], 0.0, pending)
            self.counts[m[r], c, :, 4:] = 0.0
            learn = cells.take(cell, axis=0)  # gathered again
        # a non-hit is learned at once: after an unflagged hit (den1) or otherwise (den0)
        miss = judged & ~hit
        after_hit = miss & in_run & ~was_flagged
        decayed = learn  # a fresh copy of the cells (the judgement above no longer needs it)
        learned = decayed[..., :4]  # the pending counts (4:) are not forgotten
        np.multiply(learned, self.owner.decay, out=learned, where=miss[..., None])
        decayed[..., 0] += miss & ~after_hit
        decayed[..., 2] += after_hit
        # a hit that is not flagged waits in the pending counts of its mode
        waiting = hit & ~flagged
        if waiting.any():
            decayed[..., 4] += waiting & ~cont
            decayed[..., 5] += waiting & ~cont
            decayed[..., 6] += waiting & cont
            decayed[..., 7] += waiting & cont
        cells[cell] = decayed
        self.run[m] = np.where(hit, np.where(cont, run + 1, 1), np.where(judged, 0, run))
        self.flagged[m] = np.where(hit, flagged, np.where(judged, False, was_flagged))
        self.logp[m] = np.where(hit, logp, was_logp)
        self.value[m] = np.where(hit, value, self.value[m])
        return flagged, -logp / math.log(10), decayed


class SensorVerdict(NamedTuple):
    faulty: dict[str, np.ndarray]  # sensor -> bool per input row; only sensors faulty in some row
    detections: pa.Table | None  # ALERT_ARROW_SCHEMA, one row per faulty (window, kind), in input order
    raised: np.ndarray  # per detection row: it raises an alert (the first window of an episode)

    @property
    def alerts(self) -> pa.Table | None:
        if self.detections is None or not self.raised.any():
            return None
        return self.detections.filter(pa.array(self.raised))


class SensorHealth:
    """Instrument faults (stuck, dropout, spike) of many machines' sensors, learned per machine online."""

    # State arrays, set (and grown) by `_allocate`: [machines, sensors, modes], [machines, sensors] or [machines].
    range: np.ndarray
    ranged: np.ndarray
    seen: np.ndarray
    prev_last: np.ndarray
    resolution: np.ndarray
    since: np.ndarray
    prev_end: np.ndarray
    prev_mode: np.ndarray
    streak: np.ndarray

    def __init__(self, *, min_readings: int = 3, min_windows: int = 20, alpha: float = 1e-3,
                 stuck_prior: float = 0.5, dropout_prior: float = 0.05, p_max: float = 0.1, horizon: float = 8640.0,
                 spike_ratio: float = 8.0, spike_range: float = 4.0, range_alpha: float = 0.02,
                 cooldown_windows: int = 6) -> None:
        checks = {"min_readings": min_readings >= 2, "min_windows": min_windows >= 1, "alpha": 0 < alpha < 1,
                  "stuck_prior": stuck_prior > 0, "dropout_prior": dropout_prior > 0, "p_max": 0 < p_max <= 1,
                  "horizon": horizon >= 1, "spike_ratio": spike_ratio > 0, "spike_range": spike_range > 0,
                  "range_alpha": 0 < range_alpha <= 1, "cooldown_windows": cooldown_windows >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SensorHealth: invalid {', '.join(f'{n}={locals()[n]!r}' for n in bad)}")
        self.min_readings, self.min_windows, self.p_max = min_readings, min_windows, p_max
        self.log_alpha, self.decay = math.log(alpha), 1.0 - 1.0 / horizon
        self.spike_ratio, self.spike_range, self.range_alpha = spike_ratio, spike_range, range_alpha
        self.cooldown_windows = cooldown_windows
        self.index: dict[str, int] = {}  # machine_id -> row of the state arrays
        self.sensors: list[str] = list(SENSORS)  # sensor axis: core sensors, then channels as they appear
        self.machines = 0
        self.stuck, self.dropout = _RunTest(self, stuck_prior), _RunTest(self, dropout_prior, pooled=True)
        self._allocate(16, len(self.sensors))

    def _allocate(self, machines: int, sensors: int) -> None:
        """Grow every state array to `machines` x `sensors` (new cells at their initial values)."""
        old = getattr(self, "prev_end", None)
        grown = {
            "range": np.zeros((machines, sensors, len(MODES))),  # mean within-window range of varying windows
            "ranged": np.zeros((machines, sensors, len(MODES))),  # windows behind it
            "seen": np.zeros((machines, sensors), dtype=bool),  # the sensor has reported
            "prev_last": np.full((machines, sensors), np.nan),
            "resolution": np.full((machines, sensors), np.inf),  # smallest positive within-window range seen
            "since": np.full((machines, sensors, len(KINDS)), _NEVER, dtype=np.int64),  # windows since a flag
            "prev_end": np.full(machines, -1, dtype=np.int64),
            "prev_mode": np.full(machines, -1, dtype=np.int64),
            "streak": np.zeros(machines, dtype=np.int64),  # windows in the current mode
        }
        for name, array in grown.items():
            if old is not None:
                current = getattr(self, name)
                array[tuple(slice(0, size) for size in current.shape)] = current
            setattr(self, name, array)
        self.stuck.grow(machines, sensors)
        self.dropout.grow(machines, sensors)

    def check(self, window_stats: pa.Table, now_ms: int) -> SensorVerdict:
        """Judge and learn the rows of `window_stats` (each machine's windows in window order)."""
        n = window_stats.num_rows
        if n == 0:
            return SensorVerdict({}, None, np.zeros(0, dtype=bool))
        stats = self._columns(window_stats)
        column = window_stats["machine_id"]
        ids = pc.unique(column).to_pylist()  # in order of first appearance
        for machine_id in ids:
            if machine_id not in self.index:
                self.index[machine_id] = self.machines
                self.machines += 1
        if self.machines > len(self.prev_end) or len(self.sensors) > self.seen.shape[1]:
            self._allocate(max(len(self.prev_end), 2 ** math.ceil(math.log2(self.machines))), len(self.sensors))
        where = pc.index_in(column, value_set=pa.array(ids, type=column.type))
        machine = np.fromiter((self.index[i] for i in ids), dtype=np.int64, count=len(ids))[
            np.asarray(where.to_numpy(zero_copy_only=False), dtype=np.int64)]
        start, end = _ms(window_stats["window_start"]), _ms(window_stats["window_end"])
        secs = np.column_stack([window_stats[f"secs_{s}"].to_numpy() for s in STATUSES])
        total = secs.sum(axis=1)
        mode = np.where((total > 0) & (secs.max(axis=1) >= total * (1 - 1e-9)), secs.argmax(axis=1), _TRANSITION)
        readings = np.asarray(window_stats["readings"].to_numpy(), dtype=np.float64)
        flags = np.zeros((n, len(self.sensors), len(KINDS)), dtype=bool)
        raised = np.zeros_like(flags)
        after = np.zeros((n, len(self.sensors)), dtype=bool)  # the first window after a faulty one
        evidence = np.full((n, len(self.sensors), len(KINDS)), np.nan)
        # Round r holds each machine's r-th window of this call, so every update applies in window order. The
        # rows are put in round order once (each round a contiguous slice) and back at the end.
        order = np.lexsort((start, machine))
        first = np.r_[True, machine[order][1:] != machine[order][:-1]]
        rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
        perm = order[np.argsort(rank, kind="stable")]
        bounds = np.r_[0, np.cumsum(np.bincount(rank))].tolist()
        m_, start_, end_, mode_, readings_ = machine[perm], start[perm], end[perm], mode[perm], readings[perm]
        stats_ = {k: v[perm] for k, v in stats.items()}
        # flat index of (machine, sensor, mode) into the [machines, sensors, modes] state arrays
        cell = (m_[:, None] * self.seen.shape[1] + np.arange(self.seen.shape[1])) * len(MODES) + mode_[:, None]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            rows, m = slice(lo, hi), m_[lo:hi]
            found, ev = self._step(m, cell[rows], start_[rows], end_[rows], mode_[rows], readings_[rows],
                                   {k: v[rows] for k, v in stats_.items()})
            since = self.since[m] + 1
            flags[rows], raised[rows], evidence[rows] = found, found & (since > self.cooldown_windows), ev
            after[rows] = (since[..., :SPIKE] == 1).any(axis=2) & ~found.any(axis=2)  # after a stuck or null run
            self.since[m] = np.where(found, 0, since)
        back = np.empty_like(perm)
        back[perm] = np.arange(n)
        flags, raised, evidence, after = flags[back], raised[back], evidence[back], after[back]
        return self._verdict(window_stats, stats, mode, flags, raised, evidence, after, now_ms)

    def _columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Statistic -> (rows, sensors) array over the core sensors and every channel (NaN / 0 where absent)."""
        channels = window_channels(table)
        for name in channels:
            if name not in self.sensors:
                self.sensors.append(name)
        out = {}
        for stat in _STATS:
            columns = [np.asarray(table[f"{s}_{stat}"].to_numpy(zero_copy_only=False), dtype=np.float64)
                       if s in SENSORS else channels.get(s, {}).get(stat) for s in self.sensors]
            fill = 0.0 if stat == "count" else np.nan
            out[stat] = np.column_stack([np.full(table.num_rows, fill) if c is None else c for c in columns])
        out["count"] = np.nan_to_num(out["count"])
        return out

    def _step(self, m: np.ndarray, cell: np.ndarray, start: np.ndarray, end: np.ndarray, mode: np.ndarray,
              readings: np.ndarray, c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One window per machine `m` (distinct): judge and learn; returns (flags, evidence), (rows, sensors, kinds).

        `cell` (rows, sensors): the flat index of (machine, sensor, the row's mode) into the state arrays."""
        count, lo, hi = c["count"], c["min"], c["max"]
        adjacent = self.prev_end[m] == start
        streak = np.where(adjacent & (mode == self.prev_mode[m]), self.streak[m] + 1, 1)
        settled = ((streak >= 2) & (mode != _TRANSITION))[:, None]
        # dropout: null in every reading of a window that has readings, for a sensor reported before
        seen = self.seen[m]
        null = seen & (count == 0)
        has_readings = (readings > 0)[:, None]
        dropout, dropout_evidence, _ = self.dropout.step(
            m, cell, seen & has_readings, null & has_readings, null & (self.dropout.run[m] > 0), lo)
        # stuck: every reading of the window holds one value, the same over the run
        judged = count >= self.min_readings
        constant = judged & (lo == hi)
        # A sensor whose readings usually spread over many steps of its resolution cannot read one value
        # ten times by chance: the prior shrinks by resolution / learned range.
        learned, ranged = np.take(self.range, cell), np.take(self.ranged, cell)
        varies = ranged >= self.min_windows
        resolution = self.resolution[m]
        with np.errstate(invalid="ignore", divide="ignore"):
            fine = np.where(varies & (learned > 0), np.minimum(resolution / learned, 1.0), 1.0)
        stuck, stuck_evidence, stuck_counts = self.stuck.step(
            m, cell, judged, constant, constant & (self.stuck.run[m] > 0) & (lo == self.stuck.value[m]), lo, fine)
        # spike: one reading far beyond the window's others and the learned range of varying windows; in a
        # mode where the sensor (almost) never varies (rpm at standstill; its rare varying windows are
        # run-downs), a single reading off the others, all equal, by several steps of the sensor's resolution
        n = np.maximum(count, 2.0)
        mean, std = c["mean"], np.nan_to_num(c["std"])
        windows = stuck_counts[..., [0, 2, 4, 6]].sum(axis=-1)  # judged so far, pending included
        steady = (windows >= self.min_windows) & (ranged <= self.p_max / 2 * windows)
        judge = (varies | steady) & (settled | (adjacent & (mode != _TRANSITION))[:, None]) & judged & ~stuck
        last = self.prev_last[m]
        prev_last = np.where(adjacent[:, None], last, np.nan)
        ratio = np.zeros_like(mean)
        floor = np.where(steady, resolution, learned) * self.spike_range
        n_less, spread = n - 1, n * std**2
        with np.errstate(invalid="ignore", divide="ignore"):
            for x in (hi, lo):
                off = x - mean
                gap = np.abs(off) * n / n_less  # |x - mean of the other readings|
                others_sd = np.sqrt(np.maximum(spread - off**2 * n / n_less, 0.0) / n_less)
                # the previous window ended near the others' level, not on the way to x (a step, a run-down)
                before = np.isnan(prev_last) | (np.abs(prev_last - (mean - off / n_less)) <= gap / 2)
                scale = np.maximum(others_sd * self.spike_ratio, floor)
                # "all equal" up to the rounding of the leave-one-out variance
                hit = judge & before & (gap > scale) & np.where(steady, others_sd <= 1e-4 * gap, varies)
                ratio = np.where(hit, np.maximum(ratio, np.minimum(gap / np.maximum(scale, 1e-300), 1e9)), ratio)
        spike = ratio > 0
        learn_range = judged & settled & ~spike & ~stuck & (hi > lo)
        rate = np.maximum(self.range_alpha, 1.0 / (ranged + 1))
        np.put(self.range, cell, np.where(learn_range, learned + rate * (hi - lo - learned), learned))
        np.put(self.ranged, cell, ranged + learn_range)
        self.resolution[m] = np.where(judged & (hi > lo), np.minimum(resolution, hi - lo), resolution)
        reported = count > 0
        self.seen[m] = seen | reported
        self.prev_last[m] = np.where(reported, c["last"], last)
        self.prev_end[m], self.prev_mode[m], self.streak[m] = end, mode, streak
        found = np.stack([stuck, dropout, spike], axis=-1)
        evidence = np.stack([stuck_evidence, dropout_evidence, ratio * self.spike_ratio], axis=-1)
        return found, np.where(found, evidence, np.nan)

    def _verdict(self, table, stats, mode, flags, raised, evidence, after, now_ms) -> SensorVerdict:
        # A sensor's first window after a faulty one is not trusted by the models either: a stuck sensor that
        # comes back jumps to the true value, which the rise features would take for a sudden change.
        untrusted = flags.any(axis=2) | after
        faulty = {self.sensors[s]: untrusted[:, s] for s in np.flatnonzero(untrusted.any(axis=0))}
        rows, kinds = np.nonzero(flags.any(axis=1))
        if not len(rows):
            return SensorVerdict(faulty, None, np.zeros(0, dtype=bool))
        taken = table.select(["machine_id", "machine_type", "window_start", "window_end"]).take(pa.array(rows))
        starts, ends = _ms(taken["window_start"]).tolist(), _ms(taken["window_end"]).tolist()
        ids, types = taken["machine_id"].to_pylist(), taken["machine_type"].to_pylist()
        records, alerted = [], []
        for j, (i, k) in enumerate(zip(rows.tolist(), kinds.tolist())):
            hit = np.flatnonzero(flags[i, :, k])
            new = np.flatnonzero(raised[i, :, k])
            named = new if len(new) else hit
            records.append({
                "alert_id": f"{ids[j]}/{RULE_IDS[KINDS[k]]}/{starts[j]}", "machine_id": ids[j], "machine_type": types[j],
                "rule_id": RULE_IDS[KINDS[k]], "kind": "sensor", "severity": "warning",
                "sensor": ",".join(self.sensors[s] for s in named), "window_start": starts[j], "window_end": ends[j],
                "value": float(np.nanmax(evidence[i, hit, k])),
                "threshold": self.spike_ratio if k == SPIKE else -self.log_alpha / math.log(10),
                "duration_s": (ends[j] - starts[j]) / 1000.0,
                "message": "; ".join(self._message(k, self.sensors[s], stats, i, int(s), MODES[mode[i]], evidence[i, s, k])
                                     for s in hit),
                "raised_at": now_ms,
            })
            alerted.append(bool(len(new)))
        as_ms = pa.schema([pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f
                           for f in ALERT_ARROW_SCHEMA])
        detections = pa.Table.from_pylist(records, schema=as_ms).cast(ALERT_ARROW_SCHEMA)
        return SensorVerdict(faulty, detections, np.array(alerted, dtype=bool))

    @staticmethod
    def _message(kind: int, sensor: str, stats: dict, i: int, s: int, mode: str, evidence: float) -> str:
        count = int(stats["count"][i, s])
        if kind == STUCK:
            return (f"{sensor} sensor stuck at {stats['min'][i, s]:.6g} ({count} identical readings; a run this long "
                    f"has probability 1e-{evidence:.1f} for this machine's {mode} windows)")
        if kind == DROPOUT:
            return (f"{sensor} sensor dropped out (null in every reading of the window; probability of the run "
                    f"1e-{evidence:.1f} for this machine's {mode} windows)")
        return (f"{sensor} sensor spike: one of {count} readings in [{stats['min'][i, s]:.6g}, {stats['max'][i, s]:.6g}]"
                f" around a mean of {stats['mean'][i, s]:.6g}, {evidence:.3g} spreads off the others")


def _ms(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
