"""Online anomaly models for many machines: window statistics in, scores and `anomaly` alerts out.

`FleetModels` keeps, per machine, the state of the detector its machine type's spec names (columnar for
`robust_zscore`, one River model for `half_space_trees`), an adaptive threshold, a warm-up counter and
the alerting state. Each call scores a table of closed windows; every machine's windows must come in
window order (the flow emits them so). A machine's outcome depends only on its own windows, so how
machines are spread over shards or workers does not matter, and the whole object pickles into a Bytewax
snapshot and continues exactly where it stopped.

Per scorable window (see `models.features`): score it, compare with the machine's threshold (after
warm-up), then learn from it unless it is anomalous - a fault must not become the new normal, unless it
lasts `alert.relearn_after_windows` (then it *is* the new normal, e.g. after a part was replaced). An
alert is raised when `alert.min_windows` consecutive windows are anomalous, at most once per
`alert.cooldown_windows`.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.features import FEATURE_SENSOR, FEATURES, window_features
from models.half_space_trees import HalfSpaceTreesDetector
from models.robust_zscore import RobustZScore
from models.spec import ModelSpec, ModelSpecs
from models.threshold import AdaptiveThreshold
from plantpulse.schema import ALERT_ARROW_SCHEMA, ANOMALY_SCORE_ARROW_SCHEMA

TOP_FEATURES = 3


class ScoredWindows(NamedTuple):
    scores: pa.Table  # ANOMALY_SCORE_ARROW_SCHEMA, one row per input row
    alerts: pa.Table | None  # ALERT_ARROW_SCHEMA, or None when no alert was raised


class _SpecState:
    """Detector and threshold state of the machines that use one spec."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.robust = RobustZScore(len(FEATURES), alpha=spec.alpha, min_deviation=np.array(spec.min_deviations()))
        self.threshold = AdaptiveThreshold(
            spec.threshold_quantile, spec.threshold_margin, spec.threshold_floor, spec.threshold_rate
        )
        self.trees: dict[int, HalfSpaceTreesDetector] = {}

    def grow(self, n: int) -> None:
        self.robust.grow(n)
        self.threshold.grow(n)

    def score(self, machines: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        robust_score, residuals = self.robust.score(machines, x)
        if self.spec.detector == "robust_zscore":
            return robust_score, residuals
        scores = np.array([self._tree(m).score_one(dict(zip(FEATURES, row))) for m, row in zip(machines.tolist(), x.tolist())])
        return scores, residuals  # residuals still say which features moved

    def learn(self, machines: np.ndarray, x: np.ndarray) -> None:
        self.robust.learn(machines, x)
        if self.spec.detector == "half_space_trees":
            for m, row in zip(machines.tolist(), x.tolist()):
                self._tree(m).learn_one(dict(zip(FEATURES, row)))

    def _tree(self, machine: int) -> HalfSpaceTreesDetector:
        tree = self.trees.get(machine)
        if tree is None:
            s = self.spec
            tree = self.trees[machine] = HalfSpaceTreesDetector(
                list(FEATURES), warmup=max(s.warmup_windows, 2), n_trees=s.hst_n_trees, height=s.hst_height,
                window_size=s.hst_window_size, seed=s.hst_seed + machine,
            )
        return tree


class FleetModels:
    """Per-machine online anomaly models for any number of machines (one instance per state shard)."""

    def __init__(self, specs: ModelSpecs) -> None:
        self.specs = specs
        self.index: dict[str, int] = {}
        self.spec_of: list[str] = []  # spec name per machine index
        self.states: dict[str, _SpecState] = {}
        self.prev_temperature = np.zeros(0)
        self.scorable_seen = np.zeros(0, dtype=np.int64)
        self.anomalous_run = np.zeros(0, dtype=np.int64)
        self.since_alert = np.zeros(0, dtype=np.int64)
        self.running_streak = np.zeros(0, dtype=np.int64)

    def score(self, window_stats: pa.Table, now_ms: int) -> ScoredWindows:
        """Score `window_stats` rows (WINDOW_STATS_ARROW_SCHEMA); learn from them; raise alerts."""
        n = window_stats.num_rows
        if n == 0:
            return ScoredWindows(ANOMALY_SCORE_ARROW_SCHEMA.empty_table(), None)
        ids = window_stats["machine_id"].to_pylist()
        types = window_stats["machine_type"].to_pylist()
        machines = np.fromiter((self._machine(i, t) for i, t in zip(ids, types)), dtype=np.int64, count=n)
        starts = window_stats["window_start"].cast(pa.int64()).to_numpy()
        order = np.lexsort((starts, machines))
        # Round r holds each machine's r-th window of this table: within a round every machine appears
        # at most once, so the vectorized updates apply windows in order.
        rank = np.empty(n, dtype=np.int64)
        sorted_machines = machines[order]
        first_of_run = np.r_[True, sorted_machines[1:] != sorted_machines[:-1]]
        run_start = np.maximum.accumulate(np.where(first_of_run, np.arange(n), 0))
        rank[order] = np.arange(n) - run_start

        out_score = np.zeros(n)
        out_threshold = np.full(n, np.nan)
        out_warming = np.ones(n, dtype=bool)
        out_anomaly = np.zeros(n, dtype=bool)
        out_alert = np.zeros(n, dtype=bool)
        residuals = np.zeros((n, len(FEATURES)))
        temperature = window_stats["temperature_mean"].to_numpy(zero_copy_only=False).astype(np.float64)
        for r in range(int(rank.max()) + 1):
            rows = np.flatnonzero(rank == r)
            self._score_round(window_stats.take(pa.array(rows)), rows, machines[rows], temperature[rows],
                              out_score, out_threshold, out_warming, out_anomaly, out_alert, residuals)
        return self._outputs(window_stats, ids, types, machines, now_ms, out_score, out_threshold, out_warming,
                             out_anomaly, out_alert, residuals)

    # -- internals ---------------------------------------------------------------------------------

    def _machine(self, machine_id: str, machine_type: str) -> int:
        index = self.index.get(machine_id)
        if index is None:
            index = self.index[machine_id] = len(self.spec_of)
            spec = self.specs.for_type(machine_type)
            self.spec_of.append(spec.name)
            if spec.name not in self.states:
                self.states[spec.name] = _SpecState(spec)
            size = len(self.spec_of)
            self.prev_temperature = np.append(self.prev_temperature, np.nan)
            self.scorable_seen = np.append(self.scorable_seen, 0)
            self.anomalous_run = np.append(self.anomalous_run, 0)
            self.since_alert = np.append(self.since_alert, 10**9)
            self.running_streak = np.append(self.running_streak, 0)
            for state in self.states.values():
                state.grow(size)
        return index

    def _score_round(self, rows_table, rows, machines, temperature, out_score, out_threshold, out_warming,
                     out_anomaly, out_alert, residuals) -> None:  # noqa: ANN001 - internal, arrays as documented above
        x, scorable = window_features(rows_table, self.prev_temperature[machines])
        # A machine that just started is still warming up and spinning up: its first running windows are
        # not steady state, so they are neither scored nor learned.
        self.running_streak[machines] = np.where(scorable, self.running_streak[machines] + 1, 0)
        settle = np.array([self.states[self.spec_of[m]].spec.settle_windows for m in machines.tolist()])
        scorable &= self.running_streak[machines] > settle
        spec_names = np.array([self.spec_of[m] for m in machines.tolist()])
        for name in np.unique(spec_names).tolist():
            state = self.states[name]
            spec = state.spec
            mine = (spec_names == name) & scorable
            if not mine.any():
                continue
            m, rows_m, x_m = machines[mine], rows[mine], x[mine]
            score, z = state.score(m, x_m)
            warming = self.scorable_seen[m] < spec.warmup_windows
            threshold = state.threshold.threshold(m)
            anomalous = ~warming & (score > threshold)
            run = np.where(anomalous, self.anomalous_run[m] + 1, 0)
            alert = anomalous & (run >= spec.alert_min_windows) & (self.since_alert[m] >= spec.alert_cooldown_windows)
            learn = ~anomalous | (run >= spec.alert_relearn_after_windows)
            state.learn(m[learn], x_m[learn])
            settled = ~warming & ~anomalous
            state.threshold.update(m[settled], score[settled])
            self.anomalous_run[m] = run
            self.since_alert[m] = np.where(alert, 0, self.since_alert[m])
            self.scorable_seen[m] += 1
            out_score[rows_m], residuals[rows_m] = score, z
            out_threshold[rows_m] = np.where(warming, np.nan, threshold)
            out_warming[rows_m], out_anomaly[rows_m], out_alert[rows_m] = warming, anomalous, alert
        unscored = machines[~scorable]
        self.anomalous_run[unscored] = 0  # a stop ends an anomalous run
        self.since_alert[machines] += 1
        self.prev_temperature[machines] = temperature

    def _outputs(self, table, ids, types, machines, now_ms, score, threshold, warming, anomaly, alert,
                 residuals) -> ScoredWindows:  # noqa: ANN001
        top = np.argsort(-residuals, axis=1)[:, :TOP_FEATURES]
        top_json = [
            json.dumps([[FEATURES[f], round(float(residuals[i, f]), 2)] for f in top[i] if residuals[i, f] > 0])
            if not warming[i] else "[]"
            for i in range(len(ids))
        ]
        spec_names = [self.spec_of[m] for m in machines.tolist()]
        detectors = [self.states[s].spec.detector for s in spec_names]
        scores = pa.table(
            {
                "machine_id": ids,
                "machine_type": types,
                "window_start": table["window_start"],
                "window_end": table["window_end"],
                "model": spec_names,
                "detector": detectors,
                "score": score,
                "threshold": pa.array(threshold, pa.float64(), from_pandas=True),
                "warming_up": warming,
                "is_anomaly": anomaly,
                "alert_raised": alert,
                "top_features": top_json,
                "scored_at": pa.array(np.full(len(ids), now_ms), pa.int64()).cast(pa.timestamp("ms", "UTC")),
            },
            schema=ANOMALY_SCORE_ARROW_SCHEMA,
        )
        raised = np.flatnonzero(alert)
        if not len(raised):
            return ScoredWindows(scores, None)
        rows = scores.take(pa.array(raised)).to_pylist()
        alerts = []
        for row, i in zip(rows, raised.tolist()):
            start_ms = int(row["window_start"].timestamp() * 1000)
            features = json.loads(row["top_features"])
            leading = features[0][0] if features else "temperature"
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
                    "value": float(score[i]),
                    "threshold": float(threshold[i]),
                    "duration_s": (row["window_end"] - row["window_start"]).total_seconds(),
                    "message": f"anomaly score {score[i]:.1f} above {threshold[i]:.1f} ({row['model']}/"
                    f"{row['detector']}); top features: "
                    + ", ".join(f"{name} {value:.1f}" for name, value in features),
                    "raised_at": row["scored_at"],
                }
            )
        return ScoredWindows(scores, pa.Table.from_pylist(alerts, schema=ALERT_ARROW_SCHEMA))
