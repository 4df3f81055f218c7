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

Machines under a `features = "channels"` spec with `seasonal.enabled` also have the seasonal span family
(`models.channel_models`, `models.seasonal_residual`): its own score, fixed threshold and cooldown, its alerts
OR'ed with those above; a score row that only it flagged names it in `detector` ("seasonal_span").
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.channel_features import channel_of
from models.channel_models import ChannelGroup
from models.features import (
    CLIMB,
    DIRECTION,
    FEATURE_SENSOR,
    FEATURES,
    MODE_FEATURES,
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
from models.model_group import N_MODES, ModelGroup, Outputs
from models.operating_point import OperatingPointRegression
from models.robust_zscore import RobustZScore
from models.spec import ModelSpec, ModelSpecs
from models.spec_changes import adopt_specs, spec_fingerprint
from plantpulse.schema import (
    ALERT_ARROW_SCHEMA,
    ANOMALY_SCORE_ARROW_SCHEMA,
)

TOP_FEATURES = 3


class ScoredWindows(NamedTuple):
    scores: pa.Table  # ANOMALY_SCORE_ARROW_SCHEMA, one row per input row, in input order
    alerts: pa.Table | None  # ALERT_ARROW_SCHEMA, or None when no alert was raised


class _Group(ModelGroup):
    """The machines under one spec with the physics features (`models.features`): detector, operating-point
    regressions and a reference temperature per mode next to the shared state of `ModelGroup`."""

    def __init__(self, spec: ModelSpec) -> None:
        self._init_state(spec)
        self.fingerprint = spec_fingerprint(spec)  # what this group's state was learned under (see adopt_specs)
        if spec.detector == "robust_zscore":
            self.detector: RobustZScore | HalfSpaceTreesFleet = RobustZScore(
                len(FEATURES), alpha=spec.alpha, min_deviation=np.array(spec.min_deviations()), direction=DIRECTION,
                n_modes=N_MODES, prior=np.array(spec.priors()), prior_windows=spec.prior_windows,
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
        self.operating_point = OperatingPointRegression(
            len(RESIDUAL_FEATURES), RESIDUAL_REGRESSORS, n_modes=N_MODES, alpha=spec.regression_alpha,
            min_windows=spec.regression_min_windows, ridge=spec.regression_ridge,
        )
        self.excluded = ~np.array(spec.feature_mask())
        self.unsettled = np.array([f not in spec.settle_features for f in FEATURES])

    def _grow_more(self, size: int) -> None:
        self.operating_point.grow(size)

    def step(self, m: np.ndarray, c: WindowColumns, rows: np.ndarray, out: Outputs) -> None:
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
        self._round = (c, raw_residual_features)
        judged = self.judge(m, mode, x, streak, settling, c.window_end, rows, out)
        out.contributions[rows[judged.rows_scored]] = judged.contributions
        self.prev_temperature[m] = c.temperature

    def _learn_more(self, ms: np.ndarray, modes: np.ndarray, scored_rows: np.ndarray, learn: np.ndarray) -> None:
        c, raw_residual_features = self._round
        fit = learn & (modes != STANDSTILL)
        self.operating_point.learn(ms[fit], modes[fit], raw_residual_features[scored_rows][fit],
                                   c.operating_point[scored_rows][fit])
        self._learn_reference(ms[learn], modes[learn], c.temperature[scored_rows][learn])

    def _learn_reference(self, m: np.ndarray, modes: np.ndarray, temperature: np.ndarray) -> None:
        known = ~np.isnan(temperature)
        m, modes, temperature = m[known], modes[known], temperature[known]
        reference = self.reference[m, modes]
        rate = np.maximum(self.spec.alpha, 1.0 / (self.learned[m, modes] + 1))
        self.reference[m, modes] = np.where(np.isnan(reference), temperature, reference + rate * (temperature - reference))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_round"}


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
        self.groups: dict[str, _Group | ChannelGroup] = {}
        self.where: dict[str, tuple[str, int]] = {}  # machine_id -> (spec name, local index)
        self.types: dict[str, str] = {}  # machine_id -> machine type, to place it again under changed specs

    def score(self, window_stats: pa.Table, now_ms: int, faulty: dict[str, np.ndarray] | None = None) -> ScoredWindows:
        """Score `window_stats` rows (WINDOW_STATS_ARROW_SCHEMA); learn from them; raise alerts.

        `faulty` maps a sensor or channel name to one flag per row: that row's reading of it comes from a
        faulty instrument (`models.sensor_health`), so its features are neither scored nor learned there.
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
        faulty = {k: np.asarray(v, dtype=bool) for k, v in (faulty or {}).items() if np.any(v)}
        if faulty:
            _blank_physics(columns, faulty)
        out = Outputs(n, len(FEATURES))
        group_names = np.array(names, dtype=object)
        for name in dict.fromkeys(names):
            rows = np.flatnonzero(group_names == name) if len(self.groups) > 1 else np.arange(n)
            group = self.groups[name]
            features = None
            if isinstance(group, ChannelGroup):
                group_features = group.features_of(window_stats.take(pa.array(rows)) if len(rows) < n else window_stats)
                if faulty:
                    _blank_channels(group.features, group_features, {k: v[rows] for k, v in faulty.items()})
                features = np.full((n, group_features.shape[1]), np.nan)
                features[rows] = group_features
            # Round r holds each machine's r-th window of this call: within a round every machine appears
            # at most once, so the vectorized updates apply each machine's windows in order.
            order = rows[np.lexsort((columns.window_start[rows], local[rows]))]
            ordered = local[order]
            first = np.r_[True, ordered[1:] != ordered[:-1]]
            rank = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
            for r in range(int(rank.max()) + 1):
                chosen = order[rank == r]
                if isinstance(group, ChannelGroup) and features is not None:
                    group.step(local[chosen], columns.take(chosen), features[chosen], chosen, out)
                elif isinstance(group, _Group):
                    group.step(local[chosen], columns.take(chosen), chosen, out)
        return self._outputs(window_stats, ids, names, now_ms, out)

    def _register(self, machine_id: str, machine_type: str) -> None:
        spec = self.specs.for_type(machine_type)
        group = self.groups.get(spec.name)
        if group is None:
            group = self.groups[spec.name] = ChannelGroup(spec) if spec.features == "channels" else _Group(spec)
        self.where[machine_id] = (spec.name, group.add(machine_id))
        self.types[machine_id] = machine_type

    def adopt_specs(self, specs: ModelSpecs) -> dict[str, int]:
        """Continue under `specs`, the spec file read at this start: see `models.spec_changes.adopt_specs`."""
        return adopt_specs(self, specs)

    def _outputs(self, table: pa.Table, ids: list[str], names: list[str], now_ms: int, out: Outputs) -> ScoredWindows:
        n = len(ids)
        detectors = {name: group.spec.detector for name, group in self.groups.items()}
        top_json = _top_features_json(out.contributions, out.top)
        scored_at = pa.array(np.full(n, now_ms, dtype=np.int64)).cast(pa.timestamp("ms", "UTC"))
        scores = pa.table(
            {
                "machine_id": table["machine_id"],
                "machine_type": table["machine_type"],
                "window_start": table["window_start"],
                "window_end": table["window_end"],
                "model": pa.array(names, pa.string()),
                "detector": pa.array(_detector_per_row(names, detectors, out.family), pa.string()),
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
        taken = pa.array(raised)
        starts_ms = table["window_start"].take(taken).cast(pa.int64()).to_pylist()
        ends_ms = table["window_end"].take(taken).cast(pa.int64()).to_pylist()
        for row, i, start_ms, end_ms in zip(scores.take(taken).to_pylist(), raised.tolist(), starts_ms, ends_ms):
            features = json.loads(row["top_features"])
            leading = features[0][0] if features else FEATURES[0]
            sensor = out.sensor[i] if out.sensor[i] is not None else FEATURE_SENSOR[leading]
            named = ", ".join(f"{name} {value:.1f}" for name, value in features) or "none"
            alerts.append(
                {
                    "alert_id": f"{row['machine_id']}/anomaly/{start_ms}",
                    "machine_id": row["machine_id"],
                    "machine_type": row["machine_type"],
                    "rule_id": "anomaly",
                    "kind": "anomaly",
                    "severity": "warning",
                    "sensor": sensor,
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


def _detector_per_row(names: list[str], detectors: dict[str, str], family: np.ndarray) -> list[str]:
    """Each row's detector: its group's, or the family that judged it instead (`Outputs.family`).

    >>> _detector_per_row(["default", "default"], {"default": "multivariate"}, np.array([None, "seasonal_span"]))
    ['multivariate', 'seasonal_span']
    """
    per_row = [detectors[name] for name in names]
    for i in np.flatnonzero(family != None).tolist():  # noqa: E711 (elementwise); rare rows, so no per-row zip
        per_row[i] = family[i]
    return per_row


def _top_features_json(contributions: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per row the JSON list of the (up to `TOP_FEATURES`) physics features with a positive contribution,
    largest first, as ``[["name", 1.23], ...]`` (values formatted ``.3g``); rows whose group wrote its own
    JSON into `given` (not None) keep it. The rows with as many leading features are formatted in one go.

    >>> c = np.array([[0.0, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-5], [0.0] * 8, [0.0] * 8])
    >>> _top_features_json(c, np.array([None, None, '[["x", 1]]'], dtype=object)).tolist()
    ['[["temperature_rise", 2.5], ["log_power_residual", 1e-05]]', '[]', '[["x", 1]]']
    """
    width = contributions.shape[1]
    result = given.copy()
    physics = np.flatnonzero(given == None)  # noqa: E711 (elementwise)
    if not len(physics):
        return result
    k = min(TOP_FEATURES, width)
    top = np.argsort(-contributions[physics], axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(contributions[physics], top, axis=1)
    positive = values > 0
    count = positive.sum(axis=1)
    prefix = (positive == (np.arange(k)[None, :] < count[:, None])).all(axis=1)  # sorted: the positives lead
    top = np.where(positive, top, 0)
    code = count.astype(np.int64)
    for j in range(k):
        code = code * width + top[:, j]
    for size in range(k + 1):  # rows with `size` positive leading features: one format per row
        chosen = np.flatnonzero(prefix & (count == size))
        if not len(chosen):
            continue
        if size == 0:
            result[physics[chosen]] = "[]"
            continue
        # one `%` over the group's templates joined by NUL (no feature name holds one), split after
        templates = _templates(width, k)[code[chosen]].tolist()
        formatted = "\x00".join(templates) % tuple(values[chosen, :size].ravel().tolist())
        result[physics[chosen]] = formatted.split("\x00")
    odd = np.flatnonzero(~prefix)  # not expected (NaN contributions sort last): the plain per-row formatting
    if len(odd):
        result[physics[odd]] = [
            "[" + ", ".join(f'["{FEATURES[f]}", {v:.3g}]' for f, v in zip(fs, vs) if v > 0) + "]"
            for fs, vs in zip(top[odd].tolist(), values[odd].tolist())
        ]
    return result


_TEMPLATES: dict[tuple[int, int], np.ndarray] = {}


def _templates(width: int, k: int) -> np.ndarray:
    """The ``%`` templates of the top-features JSON by code (count, then `k` feature indices, base `width`)."""
    table = _TEMPLATES.get((width, k))
    if table is None:
        table = np.empty((k + 1) * width**k, dtype=object)
        for code in range(len(table)):
            digits = [(code // width**j) % width for j in range(k - 1, -1, -1)]
            leading = digits[: code // width**k]
            table[code] = "[" + ", ".join('["' + FEATURES[f].replace("%", "%%") + '", %.3g]' for f in leading) + "]"
        _TEMPLATES[(width, k)] = table
    return table


# Which physics features (columns of FEATURES) each sensor's reading feeds, and the operating-point regressor
# (column of WindowColumns.operating_point) it gives.
_SENSOR_FEATURES = {sensor: [i for i, f in enumerate(FEATURES) if FEATURE_SENSOR[f] == sensor]
                    for sensor in set(FEATURE_SENSOR.values())}
_SENSOR_REGRESSOR = {"rpm": 0, "power": 1}


def _blank_physics(columns: WindowColumns, faulty: dict[str, np.ndarray]) -> None:
    """Physics features of faulty sensors become NaN for the flagged rows (in place)."""
    for sensor, rows in faulty.items():
        for feature in _SENSOR_FEATURES.get(sensor, []):
            columns.base[rows, feature] = np.nan
        if sensor in _SENSOR_REGRESSOR:
            columns.operating_point[rows, _SENSOR_REGRESSOR[sensor]] = np.nan
        if sensor == "temperature":
            columns.temperature = np.where(rows, np.nan, columns.temperature)  # may be a read-only Arrow view


def _blank_channels(names: list[str], x: np.ndarray, faulty: dict[str, np.ndarray]) -> None:
    """Generic features of faulty sensors/channels become NaN for the flagged rows (in place)."""
    for column, name in enumerate(names):
        rows = faulty.get(channel_of(name))
        if rows is not None:
            x[rows, column] = np.nan
