"""The model group for machines under a `features = "channels"` spec: any sensors, no physics assumed.

Per window the group builds the generic features of every channel the machine sends
(`models.channel_features`), scores them with the spec's detector - `multivariate` (one score for all
features together, `models.multivariate`) or `robust_zscore` (the largest single-feature z, two-sided,
against each feature's learned robust spread) - and judges, learns and alerts like every group
(`models.model_group`). A channel seen for the first time adds its features to the group: earlier machines
have them unlearned, so they score nothing on them until learned.

Modes work as for the physics features: windows of one held status are scored against that mode's own
baseline, transitions are not scored, and the first `settle_windows` windows of a mode only learn nothing
(a start moves every channel at once; there is no start-proof channel without knowing the physics).

**The seasonal span family** (`seasonal.enabled`, `models.seasonal_residual`) runs beside the detector on
each channel's window mean, on every window that is not a transition, learned whatever the detector
judged (it clips outliers itself). A machine's seasonal score is its largest channel score; it is anomalous
above the fixed `seasonal.threshold` and alerts on the first window of each such run, not within
`seasonal.cooldown_s` of its previous seasonal alert: OR'ed with the detector's alerts, each family with
its own threshold and cooldown. A row that only the seasonal family flagged reports that family: `detector`
"seasonal_span", its score and threshold, and its channels (``"<channel>:span"``) as top features.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from models.channel_features import channel_features, channel_of
from models.features import TRANSITION, WindowColumns
from models.model_group import N_MODES, ModelGroup, Outputs
from models.robust_zscore import RobustZScore
from models.seasonal_residual import SeasonalResidual
from models.spec import ModelSpec
from models.spec_changes import spec_fingerprint

TOP_FEATURES = 3


def make_detector(spec: ModelSpec, n_features: int) -> RobustZScore:
    """The spec's detector for `n_features` generic features (scale-free settings only)."""
    if spec.detector == "multivariate":
        from models.multivariate import Multivariate

        return Multivariate(n_features, n_modes=N_MODES, **spec.multivariate_options())  # type: ignore[return-value]
    return RobustZScore(
        n_features, alpha=spec.alpha, min_deviation=1e-12, direction=0.0, n_modes=N_MODES,
        min_count=spec.feature_min_windows, clip=spec.huber_clip, deviation_alpha=spec.deviation_alpha,
    )


class ChannelGroup(ModelGroup):
    """Machines under one `features = "channels"` spec: generic features, one detector, shared judging."""

    def __init__(self, spec: ModelSpec) -> None:
        self._init_state(spec)
        self.fingerprint = spec_fingerprint(spec)
        self.features: list[str] = []
        self.detector: RobustZScore = make_detector(spec, 1)
        self._unused_first_column = True  # the detector starts with one column, given to the first feature
        self.seasonal = SeasonalResidual(0, **spec.seasonal_options()) if spec.seasonal_enabled else None
        self.span_episode = np.zeros(0, dtype=bool)  # the current run of over-threshold seasonal scores alerted
        self.span_alerted_at = np.zeros(0)  # start (s) of the window of the last seasonal alert; -inf: none

    def _grow_more(self, size: int) -> None:
        if self.seasonal is not None:
            self.seasonal.grow(size)
            extra = size - len(self.span_episode)
            self.span_episode = np.concatenate((self.span_episode, np.zeros(extra, dtype=bool)))
            self.span_alerted_at = np.concatenate((self.span_alerted_at, np.full(extra, -np.inf)))

    def features_of(self, table: pa.Table) -> np.ndarray:
        """The group's feature matrix for `table`'s rows (columns: `self.features`, grown by new names)."""
        names, values = channel_features(table, channels=self.spec.channels, kinds=self.spec.channel_features)
        new = [name for name in names if name not in self.features]
        if new:
            if self._unused_first_column:
                self.features.append(new.pop(0))
                self._unused_first_column = False
            if new:
                self.detector.add_features(len(new))
                self.features.extend(new)
        x = np.full((table.num_rows, len(self.features)), np.nan)
        if names:
            x[:, [self.features.index(name) for name in names]] = values
        return x

    def step(self, m: np.ndarray, c: WindowColumns, x: np.ndarray, rows: np.ndarray, out: Outputs) -> None:
        """Score, judge and learn one window per machine `m` (distinct); results go to `out[rows]`."""
        mode = c.mode
        adjacent = self.prev_end[m] == c.window_start
        streak = np.where(adjacent & (mode == self.prev_mode[m]), self.mode_streak[m] + 1, 1)
        settling = (streak <= self.spec.settle_windows) & (mode != TRANSITION)
        x = np.where(settling[:, None], np.nan, x)
        judged = self.judge(m, mode, x, streak, settling, c.window_end, rows, out)
        scored_rows = rows[judged.rows_scored]
        out.top[scored_rows], out.sensor[scored_rows] = self._top(judged.contributions)
        if self.seasonal is not None:
            self._seasonal_step(m, c, np.where((mode == TRANSITION)[:, None], np.nan, x), rows, out)

    def _seasonal_step(self, m: np.ndarray, c: WindowColumns, x: np.ndarray, rows: np.ndarray, out: Outputs) -> None:
        """The seasonal span family on the rows' channel means; alerts OR'ed into `out` (see the module doc)."""
        seasonal, spec = self.seasonal, self.spec
        if seasonal is None:
            return
        means = [i for i, name in enumerate(self.features) if channel_of(name) == name]
        if len(means) > seasonal.n_channels:  # features only grow, so channel j stays the j-th mean feature
            seasonal.add_channels(len(means) - seasonal.n_channels)
        t = c.window_start / 1000.0
        channel_scores = seasonal.update(m, t, (c.window_end - c.window_start) / 1000.0, x[:, means])
        finite = np.isfinite(channel_scores)
        score = np.where(finite.any(axis=1), np.max(np.where(finite, channel_scores, -np.inf), axis=1), np.nan)
        over = score > spec.seasonal_threshold  # NaN (not warm): not over, and the run ends
        alert = over & ~self.span_episode[m] & (t - self.span_alerted_at[m] > spec.seasonal_cooldown_s)
        self.span_episode[m] = over & (self.span_episode[m] | alert)
        self.span_alerted_at[m] = np.where(alert, t, self.span_alerted_at[m])
        # The row reports the seasonal family where only it flagged the row, or only it raised the alert.
        own = (alert & ~out.alert[rows]) | (over & ~out.anomaly[rows] & ~out.alert[rows])
        out.alert[rows] |= alert
        mine = rows[own]
        if len(mine):
            out.score[mine], out.threshold[mine] = score[own], spec.seasonal_threshold
            out.anomaly[mine], out.warming[mine], out.family[mine] = True, False, SeasonalResidual.name
            names = [self.features[i] + ":span" for i in means]
            out.top[mine], out.sensor[mine] = self._top(np.nan_to_num(channel_scores[own], nan=0.0), names)

    def _top(self, contributions: np.ndarray, names: list[str] | None = None) -> tuple[list[str], list[str]]:
        """Per row the top features' JSON and the leading channel; `names` of the columns (default: features)."""
        names = self.features if names is None else names
        tops, sensors = [], []
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :TOP_FEATURES]
        for features, values in zip(order.tolist(), np.take_along_axis(contributions, order, axis=1).tolist()):
            named = [[names[f], float(f"{v:.3g}")] for f, v in zip(features, values) if v > 0]
            tops.append(json.dumps(named))
            sensors.append(channel_of(named[0][0]) if named else (channel_of(names[0]) if names else ""))
        return tops, sensors
