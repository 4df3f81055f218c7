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
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from models.channel_features import channel_features, channel_of
from models.features import TRANSITION, WindowColumns
from models.model_group import N_MODES, ModelGroup, Outputs
from models.robust_zscore import RobustZScore
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

    def _top(self, contributions: np.ndarray) -> tuple[list[str], list[str]]:
        tops, sensors = [], []
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :TOP_FEATURES]
        for features, values in zip(order.tolist(), np.take_along_axis(contributions, order, axis=1).tolist()):
            named = [[self.features[f], float(f"{v:.3g}")] for f, v in zip(features, values) if v > 0]
            tops.append(json.dumps(named))
            sensors.append(channel_of(named[0][0]) if named else (channel_of(self.features[0]) if self.features else ""))
        return tops, sensors
