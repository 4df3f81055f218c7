"""Online anomaly models for many machines: window statistics in, scores and `anomaly` alerts out.

`FleetModels` keeps, per machine, the state its machine type's spec asks for: the detector's baselines
per operating mode (columnar NumPy arrays for `robust_zscore`, River trees for `half_space_trees`), an
adaptive threshold, warm-up counters, a little history (previous window's temperature and mode, the
mode's reference temperature) and the alerting state. Each `score` call takes a table of closed windows;
each machine's windows must come in window order (the flow emits them so). A machine's outcome depends
only on its own windows, so how machines are spread over shards, workers or calls does not matter, and
the whole object pickles into a Bytewax snapshot and continues exactly where it stopped (`adopt_specs`
then puts the current spec file in place of the pickled one, resetting only machines whose spec changed).

Per window (features: see `models.features`; the operating-point regressions behind the `*_residual`
features: `models.operating_point`, learned from the same windows as the detector):

1. A transition window (start, stop) is not scored: score 0, never anomalous. In the first
   `settle_windows` windows of a new mode only `settle_features` (those that a start or stop does not
   disturb, e.g. a fall of pressure inside the window) are scored - in running windows only: after a
   stop, pressure and power still run down - and nothing is learned. A stopped
   or idle machine *is* scored, against its own idle or standstill baseline, on the features that mean
   something there.
2. Otherwise the detector scores it. The `*_residual` features are divided by
   ``sqrt(1 + regression.extrapolation x d2)``, d2 the operating point's squared Mahalanobis distance
   from the ones its regression learned (a fit is least trusted far out). The detector's trends
   (`models.robust_zscore`) move on with every scored window and restart with each new run of a mode.
   While the (machine, mode) baseline has learned fewer than `warmup_windows` windows the row is
   `warming_up` (threshold null, never anomalous).
3. After warm-up it is anomalous when the score exceeds the machine's adaptive threshold.
4. It is learned unless anomalous - a fault must not become the new normal - except when the anomaly
   has lasted `alert.relearn_after_windows` windows (then it *is* the new normal, e.g. a replaced part).
   Only scores judged normal feed the adaptive threshold.
5. An alert is raised when `alert.min_windows` consecutive windows are anomalous: once per such
   episode (a run of over windows), and not within `alert.cooldown_windows` windows of the machine's
   previous alert.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.features import (
    CLIMB,
    DIRECTION,
    FEATURE_SENSOR,
    FEATURES,
    MODE_FEATURES,
    MODES,
    RESIDUAL_FEATURES,
    RESIDUAL_REGRESSORS,
    RISE,
    RUNNING,
    STANDSTILL,
    TRANSITION,
    WindowColumns,
    temperature_rise,
)
from models.half_space_trees import HalfSpaceTreesFleet
from models.operating_point import OperatingPointRegression
from models.robust_zscore import RobustZScore
from models.spec import ModelSpec, ModelSpecs
from models.spec_changes import adopt_specs, spec_fingerprint
from models.threshold import AdaptiveThreshold
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    ANOMALY_SCORE_ARROW_SCHEMA,
)

TOP_FEATURES = 3
_N_MODES = len(MODES)
_NO_ALERT_YET = 10**9
# Per-machine state of a `_Group` (local machine index first): name -> (initial value, dtype, per mode).
_PER_MACHINE: dict[str, tuple[float, type, bool]] = {
    "prev_end": (-1, np.int64, False),
    "prev_temperature": (np.nan, np.float64, False),
    "prev_mode": (TRANSITION, np.int64, False),
    "mode_streak": (0, np.int64, False),
    "reference": (np.nan, np.float64, True),  # EWMA of the temperature of learned windows, per mode
    "learned": (0, np.int64, True),
    "scored": (0, np.int64, False),  # scored windows, all modes (warm-up)
    "anomalous_run": (0, np.int64, False),
    "since_alert": (_NO_ALERT_YET, np.int64, False),
    "episode_alerted": (False, bool, False),  # the current run of over windows has alerted
    "unlearned_run": (0, np.int64, False),  # consecutive scored windows held back from learning
}


class ScoredWindows(NamedTuple):
    scores: pa.Table  # ANOMALY_SCORE_ARROW_SCHEMA, one row per input row, in input order
    alerts: pa.Table | None  # ALERT_ARROW_SCHEMA, or None when no alert was raised


class _Outputs:
    """Per-row results of one `score` call, filled group by group and round by round."""

    def __init__(self, n: int) -> None:
        self.score = np.zeros(n)
        self.threshold = np.full(n, np.nan)
        self.warming = np.ones(n, dtype=bool)
        self.anomaly = np.zeros(n, dtype=bool)
        self.alert = np.zeros(n, dtype=bool)
        self.contributions = np.zeros((n, len(FEATURES)))


class _Group:
    """Detector, threshold and per-machine state of the machines that share one spec (local indices)."""

    # The per-machine arrays of `_PER_MACHINE`, set (and grown) by name: [machines] or [machines x modes].
    # Annotations only (no class values), so a pickled group restores exactly as before.
    prev_end: np.ndarray
    prev_temperature: np.ndarray
    prev_mode: np.ndarray
    mode_streak: np.ndarray
    reference: np.ndarray
    learned: np.ndarray
    scored: np.ndarray
    anomalous_run: np.ndarray
    since_alert: np.ndarray
    episode_alerted: np.ndarray
    unlearned_run: np.ndarray

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.fingerprint = spec_fingerprint(spec)  # what this group's state was learned under (see adopt_specs)
        self.ids: list[str] = []
        if spec.detector == "robust_zscore":
            self.detector: RobustZScore | HalfSpaceTreesFleet = RobustZScore(
                len(FEATURES), alpha=spec.alpha, min_deviation=np.array(spec.min_deviations()), direction=DIRECTION,
                n_modes=_N_MODES, prior=np.array(spec.priors()), prior_windows=spec.prior_windows,
                min_count=spec.feature_min_windows, clip=spec.huber_clip, deviation_alpha=spec.deviation_alpha,
                weight=np.array(spec.weights()), trend_alpha=spec.trend_alpha,
                trend_weight=np.array(spec.trend_weights()),
            )
        else:
            self.detector = HalfSpaceTreesFleet(
                list(FEATURES), direction=DIRECTION, seed=spec.hst_seed, warmup=max(spec.warmup_windows, 2),
                n_trees=spec.hst_n_trees, height=spec.hst_height, window_size=spec.hst_window_size,
                margin=spec.hst_margin,
            )
        self.threshold = AdaptiveThreshold(
            spec.threshold_quantile, spec.threshold_margin, spec.threshold_floor, spec.threshold_rate, _N_MODES
        )
        self.operating_point = OperatingPointRegression(
            len(RESIDUAL_FEATURES), RESIDUAL_REGRESSORS, n_modes=_N_MODES, alpha=spec.regression_alpha,
            min_windows=spec.regression_min_windows, ridge=spec.regression_ridge,
        )
        self.excluded = ~np.array(spec.feature_mask())
        self.unsettled = np.array([f not in spec.settle_features for f in FEATURES])
        for name, (fill, dtype, per_mode) in _PER_MACHINE.items():
            setattr(self, name, np.full((0, _N_MODES) if per_mode else 0, fill, dtype=dtype))

    def add(self, machine_id: str) -> int:
        local = len(self.ids)
        self.ids.append(machine_id)
        if local >= len(self.prev_end):
            size = max(16, 2 * len(self.prev_end))
            extra = size - len(self.prev_end)
            for name, (fill, dtype, per_mode) in _PER_MACHINE.items():
                new_rows: np.ndarray = np.full((extra, _N_MODES) if per_mode else extra, fill, dtype=dtype)
                setattr(self, name, np.concatenate((getattr(self, name), new_rows)))
            self.threshold.grow(size)
            self.operating_point.grow(size)
        self.detector.grow(len(self.ids), self.ids)
        return local

    def step(self, m: np.ndarray, c: WindowColumns, rows: np.ndarray, out: _Outputs) -> None:
        """Score, judge and learn one window per machine `m` (distinct); results go to `out[rows]`."""
        spec = self.spec
        mode = c.mode
        valid = mode != TRANSITION
        safe_mode = np.where(valid, mode, 0)
        adjacent = self.prev_end[m] == c.window_start
        x = c.base.copy()
        raw_residual_features = c.base[:, RESIDUAL_FEATURES]
        # At standstill nothing turns: the operating point explains nothing, the raw logs are scored.
        regressed = valid & (mode != STANDSTILL)
        if regressed.any():
            v = np.flatnonzero(regressed)
            residuals = self.operating_point.residuals(m[v], mode[v], raw_residual_features[v], c.operating_point[v])
            if spec.regression_extrapolation > 0:
                distance = self.operating_point.distance(m[v], mode[v], c.operating_point[v])
                residuals /= np.sqrt(1.0 + spec.regression_extrapolation * distance)[:, None]
            x[np.ix_(v, RESIDUAL_FEATURES)] = residuals
        with np.errstate(invalid="ignore"):
            rise = temperature_rise(
                c.temperature, self.prev_temperature[m], self.reference[m, safe_mode],
                (c.window_end - c.window_start) / 1000.0, spec.thermal_tau_s,
            )
        x[:, RISE] = np.where(adjacent & valid & MODE_FEATURES[safe_mode, RISE], rise, np.nan)
        # temperature_climb: last - mean, less the warm-up towards the reference over half a window
        x[:, CLIMB] -= np.nan_to_num(
            (self.reference[m, safe_mode] - c.temperature) * (1 - np.exp(-(c.window_end - c.window_start) / 2000.0
                                                                          / spec.thermal_tau_s)), nan=0.0)
        x[:, self.excluded] = np.nan
        streak = np.where(adjacent & (mode == self.prev_mode[m]), self.mode_streak[m] + 1, 1)
        # Settling (the first windows of a mode): only the start-proof features are scored, nothing is learned.
        # After a stop the load still runs down (pressure falls, power lags): settling idle and standstill
        # windows score nothing.
        settling = streak <= spec.settle_windows
        x[np.ix_(settling, self.unsettled)] = np.nan
        x[settling & (mode != RUNNING)] = np.nan
        scored = valid
        restarted = valid & (streak == 1)
        self.detector.reset_trend(m[restarted], mode[restarted])

        run = np.zeros(len(m), dtype=np.int64)
        alert = np.zeros(len(m), dtype=bool)
        since = self.since_alert[m] + 1
        if scored.any():
            s = np.flatnonzero(scored)
            ms, modes, xs = m[s], mode[s], x[s]
            score, contributions = self.detector.score(ms, modes, xs)
            self.detector.track(ms, modes, xs)
            warming = self.scored[ms] < spec.warmup_windows
            threshold = self.threshold.threshold(ms, modes)
            # Over the threshold counts during warm-up too (not learned, not an alert): a machine whose
            # first windows are already faulty must not learn the fault as its baseline.
            over = score > threshold
            anomalous = ~warming & over
            run[s] = np.where(over, self.anomalous_run[ms] + 1, 0)
            alert[s] = (anomalous & (run[s] >= spec.alert_min_windows) & ~self.episode_alerted[ms]
                        & (since[s] > spec.alert_cooldown_windows))
            held = score > spec.alert_learn_below * threshold
            held_run = np.where(held, self.unlearned_run[ms] + 1, 0)
            self.unlearned_run[ms] = held_run
            learn = (~held | (held_run >= spec.alert_relearn_after_windows)) & ~settling[s]
            self.detector.learn(ms[learn], modes[learn], xs[learn])
            fit = learn & (modes != STANDSTILL)
            self.operating_point.learn(ms[fit], modes[fit], raw_residual_features[s][fit], c.operating_point[s][fit])
            self._learn_reference(ms[learn], modes[learn], c.temperature[s][learn])
            self.learned[ms[learn], modes[learn]] += 1
            self.scored[ms] += 1
            steady = ~over & ~settling[s]
            self.threshold.update(ms[steady], modes[steady], score[steady])
            rs = rows[s]
            out.score[rs], out.contributions[rs] = score, contributions
            out.threshold[rs] = np.where(warming, np.nan, threshold)
            out.warming[rs], out.anomaly[rs] = warming, anomalous
        unscored = np.flatnonzero(~scored)
        if len(unscored):
            mu, modes = m[unscored], safe_mode[unscored]
            warming = self.scored[mu] < spec.warmup_windows
            out.warming[rows[unscored]] = warming
            out.threshold[rows[unscored]] = np.where(warming, np.nan, self.threshold.threshold(mu, modes))
        out.alert[rows] = alert
        self.anomalous_run[m] = run  # a transition or a settling window ends an anomalous run
        self.episode_alerted[m] = (run > 0) & (self.episode_alerted[m] | alert)
        self.since_alert[m] = np.where(alert, 0, since)
        self.prev_end[m] = c.window_end
        self.prev_temperature[m] = c.temperature
        self.prev_mode[m] = mode
        self.mode_streak[m] = streak

    def _learn_reference(self, m: np.ndarray, modes: np.ndarray, temperature: np.ndarray) -> None:
        known = ~np.isnan(temperature)
        m, modes, temperature = m[known], modes[known], temperature[known]
        reference = self.reference[m, modes]
        rate = np.maximum(self.spec.alpha, 1.0 / (self.learned[m, modes] + 1))
        self.reference[m, modes] = np.where(np.isnan(reference), temperature, reference + rate * (temperature - reference))


class FleetModels:
    """Per-machine online anomaly models for any number of machines (one instance per state shard).

    >>> from models.spec import ModelSpecs
    >>> from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
    >>> models = FleetModels(ModelSpecs({"default": {}}))
    >>> models.score(WINDOW_STATS_ARROW_SCHEMA.empty_table(), now_ms=0).scores.num_rows
    0
    """

    def __init__(self, specs: ModelSpecs) -> None:
        self.specs = specs
        self.groups: dict[str, _Group] = {}
        self.where: dict[str, tuple[str, int]] = {}  # machine_id -> (spec name, local index)
        self.types: dict[str, str] = {}  # machine_id -> machine type, to place it again under changed specs

    def score(self, window_stats: pa.Table, now_ms: int) -> ScoredWindows:
        """Score `window_stats` rows (WINDOW_STATS_ARROW_SCHEMA); learn from them; raise alerts.

        Returns one score row per input row, in input order, with `scored_at = now_ms`.
        """
        n = window_stats.num_rows
        if n == 0:
            return ScoredWindows(ANOMALY_SCORE_ARROW_SCHEMA.empty_table(), None)
        ids = window_stats["machine_id"].to_pylist()
        where = self.where
        for i, machine_id in enumerate(ids):
            if machine_id not in where:
                self._register(machine_id, window_stats["machine_type"][i].as_py())
        placed = [where[i] for i in ids]
        names = [p[0] for p in placed]
        local = np.fromiter((p[1] for p in placed), dtype=np.int64, count=n)
        columns = WindowColumns.of(window_stats)
        out = _Outputs(n)
        group_names = np.array(names, dtype=object)
        for name in dict.fromkeys(names):
            rows = np.flatnonzero(group_names == name) if len(self.groups) > 1 else np.arange(n)
            group = self.groups[name]
            # Round r holds each machine's r-th window of this call: within a round every machine appears
            # at most once, so the vectorized updates apply each machine's windows in order.
            order = rows[np.lexsort((columns.window_start[rows], local[rows]))]
            ordered = local[order]
            first = np.r_[True, ordered[1:] != ordered[:-1]]
            rank = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
            for r in range(int(rank.max()) + 1):
                chosen = order[rank == r]
                group.step(local[chosen], columns.take(chosen), chosen, out)
        return self._outputs(window_stats, ids, names, now_ms, out)

    def _register(self, machine_id: str, machine_type: str) -> None:
        spec = self.specs.for_type(machine_type)
        group = self.groups.get(spec.name)
        if group is None:
            group = self.groups[spec.name] = _Group(spec)
        self.where[machine_id] = (spec.name, group.add(machine_id))
        self.types[machine_id] = machine_type

    def adopt_specs(self, specs: ModelSpecs) -> dict[str, int]:
        """Continue under `specs`, the spec file read at this start: see `models.spec_changes.adopt_specs`."""
        return adopt_specs(self, specs)

    def _outputs(self, table: pa.Table, ids: list[str], names: list[str], now_ms: int, out: _Outputs) -> ScoredWindows:
        n = len(ids)
        detectors = {name: group.spec.detector for name, group in self.groups.items()}
        top = np.argsort(-out.contributions, axis=1, kind="stable")[:, :TOP_FEATURES]
        top_values = np.take_along_axis(out.contributions, top, axis=1)
        top_json = [
            "[" + ", ".join(f'["{FEATURES[f]}", {v:.3g}]' for f, v in zip(fs, vs) if v > 0) + "]"
            for fs, vs in zip(top.tolist(), top_values.tolist())
        ]
        scored_at = pa.array(np.full(n, now_ms, dtype=np.int64)).cast(pa.timestamp("ms", "UTC"))
        scores = pa.table(
            {
                "machine_id": table["machine_id"],
                "machine_type": table["machine_type"],
                "window_start": table["window_start"],
                "window_end": table["window_end"],
                "model": pa.array(names, pa.string()),
                "detector": pa.array([detectors[name] for name in names], pa.string()),
                "score": out.score,
                "threshold": pa.array(out.threshold, pa.float64(), from_pandas=True),
                "warming_up": out.warming,
                "is_anomaly": out.anomaly,
                "alert_raised": out.alert,
                "top_features": pa.array(top_json, pa.string()),
                "scored_at": scored_at,
            },
            schema=ANOMALY_SCORE_ARROW_SCHEMA,
        )
        raised = np.flatnonzero(out.alert)
        if not len(raised):
            return ScoredWindows(scores, None)
        alerts = []
        for row, i in zip(scores.take(pa.array(raised)).to_pylist(), raised.tolist()):
            features = json.loads(row["top_features"])
            leading = features[0][0] if features else FEATURES[0]
            start_ms = int(table["window_start"][i].cast(pa.int64()).as_py())
            end_ms = int(table["window_end"][i].cast(pa.int64()).as_py())
            named = ", ".join(f"{name} {value:.1f}" for name, value in features) or "none"
            alerts.append(
                {
                    "alert_id": f"{row['machine_id']}/anomaly/{start_ms}",
                    "machine_id": row["machine_id"],
                    "machine_type": row["machine_type"],
                    "rule_id": "anomaly",
                    "kind": "anomaly",
                    "severity": "warning",
                    "sensor": FEATURE_SENSOR[leading],
                    "window_start": row["window_start"],
                    "window_end": row["window_end"],
                    "value": float(out.score[i]),
                    "threshold": float(out.threshold[i]),
                    "duration_s": (end_ms - start_ms) / 1000.0,
                    "message": f"anomaly score {out.score[i]:.2f} above threshold {out.threshold[i]:.2f} "
                    f"({row['model']}/{row['detector']}); top features: {named}",
                    "raised_at": row["scored_at"],
                }
            )
        return ScoredWindows(scores, pa.Table.from_pylist(alerts, schema=ALERT_ARROW_SCHEMA))
