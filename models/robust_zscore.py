"""Robust standardized residuals against an exponentially weighted baseline, for many machines at once.

Per machine, operating mode and feature the detector keeps an EWMA of the level and an EWMA of the
absolute deviation from it (a robust spread: 1.25 x mean absolute deviation estimates the standard
deviation of normal noise, and a single outlier moves it far less than a variance). A feature's residual
is ``direction * (x - level) / max(1.25 * deviation, min_deviation)`` kept only where positive (the
direction in which faults move it; direction 0 scores both ways), times the feature's `weight` (a
feature whose healthy tail is lighter than the others' may alert at a lower z); a window's score is the
largest weighted residual, and the weighted residuals are the per-feature contributions that name the
"top features". A feature contributes once its baseline has learned `min_count` windows.

Features with a natural expected value (a temperature rise of 0 on a steady machine, the spread of a
window of readings) may have a `prior` level: their baselines start there, with deviation
`min_deviation / 1.25` and the weight of `prior_windows` windows, so they can score a machine from its
first window - also one that never ran healthy long enough to learn its own baseline.

The baseline follows slow, healthy changes (load, ambient temperature) with time constant ``1/alpha``
windows, its spread with ``1/deviation_alpha`` (slower, so a creeping fault does not widen it as fast
as it moves); during a baseline's first ``1/alpha`` windows the rate is ``1/n`` (a plain running mean), so a
new machine is usable after a short warm-up. The caller decides which windows it learns from (it skips
anomalous ones so that a fault does not become the new normal). NaN features are neither scored nor
learned. Once a baseline has `min_count` windows its updates are Huber-clipped: a residual counts at
most `clip` robust scales, so start-up transients and faults too small to alert barely move it.

**Trends.** A fault that creeps up (a wearing bearing) gives several windows in a row that are each
below the threshold. A feature with a `trend_weight` also keeps, per (machine, mode), an EWMA with rate
`trend_alpha` of its z along its fault direction, over every scored window (learned or not); as healthy
z-scores are about N(0, 1) and independent, the EWMA has standard deviation ``sqrt(a / (2 - a))``, and
the trend contributes ``trend_weight * max(EWMA, 0) / sqrt(a / (2 - a))`` when that is more than the
window's own weighted z. The caller resets a trend when the windows it summed no longer say anything of
the next one (a stop, a restart after repair). Trends need a fault direction (direction 0 has none).

State is columnar - arrays indexed by (machine, mode, feature) - so scoring and learning a batch of
windows is a handful of NumPy operations, whatever the fleet size. `learn_one`/`score_one` give River's
interface for a single stream (one machine, one mode):

>>> detector = RobustZScore(n_features=1, alpha=0.1)
>>> for x in [10.0, 10.2, 9.8, 10.1, 9.9] * 10:
...     detector.learn_one({"f": x})
>>> detector.score_one({"f": 10.0}) < 3, detector.score_one({"f": 14.0}) > 10
(True, True)
>>> detector.score_one({"f": 6.0}) > 10  # direction 0 (the default): both ways count
True

A creep of about 2 robust scales per window, with and without a trend:

>>> for trend_weight in (0.0, 1.0):
...     detector = RobustZScore(n_features=1, alpha=0.1, direction=1.0, trend_weight=trend_weight)
...     for x in [10.0, 10.2, 9.8, 10.1, 9.9] * 10:
...         detector.learn_one({"f": x})
...     scores = []
...     for x in [10.3, 10.35, 10.4, 10.45]:
...         scores.append(round(detector.score_one({"f": x}), 1))
...         detector.learn_one({"f": x})
...     print(trend_weight, scores)
0.0 [1.9, 1.8, 1.7, 1.6]
1.0 [1.9, 2.3, 2.6, 2.7]
"""

from __future__ import annotations

import numpy as np

from models.single_stream import SingleStream

MAD_TO_STD = 1.25


class RobustZScore(SingleStream):
    """EWMA level + EW mean absolute deviation per (machine, mode, feature); score = max one-sided robust z."""

    name = "robust_zscore"

    def __init__(
        self,
        n_features: int,
        *,
        alpha: float = 0.05,
        min_deviation: np.ndarray | float = 1e-3,
        direction: np.ndarray | float = 0.0,
        n_modes: int = 1,
        prior: np.ndarray | None = None,
        prior_windows: int = 10,
        min_count: int = 1,
        clip: float = 3.0,
        deviation_alpha: float | None = None,
        weight: np.ndarray | float = 1.0,
        trend_alpha: float = 0.5,
        trend_weight: np.ndarray | float = 0.0,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"robust_zscore: alpha must be in (0, 1], got {alpha!r}")
        if n_features < 1 or n_modes < 1:
            raise ValueError(f"robust_zscore: need n_features >= 1 and n_modes >= 1, got {n_features!r}, {n_modes!r}")
        self.n_features, self.n_modes, self.alpha = n_features, n_modes, alpha
        self.min_deviation = np.broadcast_to(np.asarray(min_deviation, dtype=np.float64), (n_features,)).copy()
        if (self.min_deviation <= 0).any():
            raise ValueError(f"robust_zscore: min_deviation must be > 0, got {self.min_deviation.tolist()}")
        self.direction = np.broadcast_to(np.asarray(direction, dtype=np.float64), (n_features,)).copy()
        self.weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_features,)).copy()
        if (self.weight <= 0).any():
            raise ValueError(f"robust_zscore: weight must be > 0, got {self.weight.tolist()}")
        self.trend_alpha = trend_alpha
        self.trend_weight = np.broadcast_to(np.asarray(trend_weight, dtype=np.float64), (n_features,)).copy()
        if not 0 < trend_alpha <= 1 or (self.trend_weight < 0).any():
            raise ValueError(f"robust_zscore: need 0 < trend_alpha <= 1 and trend weights >= 0, got {trend_alpha!r}, "
                             f"{self.trend_weight.tolist()}")
        if ((self.trend_weight > 0) & (self.direction == 0)).any():
            raise ValueError("robust_zscore: a trend needs the feature's fault direction (direction 0 has none), got "
                             f"trend weights {self.trend_weight.tolist()} for directions {self.direction.tolist()}")
        # Healthy z-scores are ~N(0, 1); their EWMA with rate a has standard deviation sqrt(a / (2 - a)).
        self._trend_scale = np.sqrt(trend_alpha / (2 - trend_alpha))
        self._trend_columns = np.flatnonzero(self.trend_weight > 0)
        self.prior = np.full(n_features, np.nan) if prior is None else np.asarray(prior, dtype=np.float64).copy()
        if self.prior.shape != (n_features,) or prior_windows < 0 or min_count < 1:
            raise ValueError(f"robust_zscore: need prior of {n_features} levels (NaN: none), prior_windows >= 0, "
                             f"min_count >= 1; got {self.prior.tolist()}, {prior_windows!r}, {min_count!r}")
        if not clip > 0:
            raise ValueError(f"robust_zscore: clip must be > 0, got {clip!r}")
        self.prior_windows, self.min_count, self.clip = prior_windows, min_count, clip
        self.deviation_alpha = alpha if deviation_alpha is None else deviation_alpha
        if not 0 < self.deviation_alpha <= 1:
            raise ValueError(f"robust_zscore: deviation_alpha must be in (0, 1], got {deviation_alpha!r}")
        shape = (0, n_modes, n_features)
        self.level = np.zeros(shape)
        self.deviation = np.zeros(shape)
        self.count = np.zeros(shape, dtype=np.int64)
        self.trend = np.zeros(shape)
        self._names: list[str] | None = None  # feature order of the River interface

    def grow(self, n_machines: int, keys: list[str] | None = None) -> None:
        """Make room for machines up to index `n_machines - 1` (new ones start unlearned; `keys` unused).

        Capacity at least doubles, so registering machines one by one costs amortized O(1) each.
        """
        if n_machines > len(self.level):
            extra = max(n_machines, 2 * len(self.level), 16) - len(self.level)
            shape = (extra, self.n_modes, self.n_features)
            has_prior = np.broadcast_to(~np.isnan(self.prior), shape)
            level = np.where(has_prior, np.nan_to_num(self.prior), 0.0)
            deviation = np.where(has_prior, self.min_deviation / MAD_TO_STD, 0.0)
            count = np.where(has_prior, self.prior_windows, 0).astype(np.int64)
            self.level = np.concatenate((self.level, level))
            self.deviation = np.concatenate((self.deviation, deviation))
            self.count = np.concatenate((self.count, count))
            self.trend = np.concatenate((self.trend, np.zeros(shape)))

    def add_features(self, n_new: int) -> None:
        """Append `n_new` features (a new channel appeared): two-sided, no prior, floor and weight of the
        first feature, unlearned for every machine."""
        if n_new < 1:
            raise ValueError(f"robust_zscore.add_features: n_new must be >= 1, got {n_new!r}")
        for name in ("min_deviation", "weight"):
            values = getattr(self, name)
            setattr(self, name, np.concatenate((values, np.full(n_new, values[0]))))
        self.direction = np.concatenate((self.direction, np.zeros(n_new)))
        self.trend_weight = np.concatenate((self.trend_weight, np.zeros(n_new)))
        self.prior = np.concatenate((self.prior, np.full(n_new, np.nan)))
        pad = ((0, 0), (0, 0), (0, n_new))
        self.level, self.deviation, self.trend = (np.pad(a, pad) for a in (self.level, self.deviation, self.trend))
        self.count = np.pad(self.count, pad)
        self.n_features += n_new

    def score(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score per row, contribution per row and feature) for rows `x` [rows x features].

        A contribution is the feature's one-sided robust z times its `weight`, or - if larger - its trend
        (with this row in it) in the trend's standard deviations times its `trend_weight`; 0 for NaN
        features and features whose baseline has learned fewer than `min_count` windows. Pure: `track`
        then moves the trends on.
        """
        z, known = self._directed_z(machines, modes, x)
        contributions = np.where(known, self.weight * np.maximum(z, 0.0), 0.0)
        trended = self._trend_columns
        if len(trended):
            trend = self._next_trend(machines, modes, z[:, trended], known[:, trended])
            from_trend = self.trend_weight[trended] * np.maximum(trend, 0.0) / self._trend_scale
            contributions[:, trended] = np.maximum(contributions[:, trended], np.where(known[:, trended], from_trend, 0.0))
        return contributions.max(axis=1), contributions

    def track(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        """Move the trends of (`machines`, `modes`) - each pair at most once - on by rows `x`.

        Call it for every scored row (anomalous ones too: a fault must keep its trend rising), after
        `score` and before `learn` (the z-scores are taken against the baselines `score` saw).
        """
        trended = self._trend_columns
        if len(trended):
            z, known = self._directed_z(machines, modes, x, trended)
            self.trend[machines[:, None], modes[:, None], trended] = self._next_trend(machines, modes, z, known)

    def reset_trend(self, machines: np.ndarray, modes: np.ndarray) -> None:
        """Forget the trends of (`machines`, `modes`): their last windows say nothing of the next ones (a stop,
        a repair, a gap came between)."""
        if len(self._trend_columns):
            self.trend[machines, modes] = 0.0

    def _directed_z(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray,
                    columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(z along each feature's fault direction, |z| where it has none; whether the z is known), for all
        features or only `columns`."""
        at: tuple[np.ndarray, ...]
        cols: np.ndarray | slice
        if columns is None:
            at, cols = (machines, modes), slice(None)
        else:
            at, cols = (machines[:, None], modes[:, None], columns), columns
        x = x[:, cols]
        scale = np.maximum(MAD_TO_STD * self.deviation[at], self.min_deviation[cols])
        residual = (x - self.level[at]) / scale
        direction = self.direction[cols]
        z = np.where(direction == 0, np.abs(residual), direction * residual)
        return z, (self.count[at] >= self.min_count) & ~np.isnan(x)

    def _next_trend(self, machines: np.ndarray, modes: np.ndarray, z: np.ndarray, known: np.ndarray) -> np.ndarray:
        """The trends of the trended features, moved on by their z [rows x trended features] where known."""
        trend = self.trend[machines[:, None], modes[:, None], self._trend_columns]
        return np.where(known, trend + self.trend_alpha * (z - trend), trend)

    def learn(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        """Update the baselines of (`machines`, `modes`) - each pair at most once - with rows `x`."""
        count = self.count[machines, modes]
        level, deviation = self.level[machines, modes], self.deviation[machines, modes]
        seen = ~np.isnan(x)
        residual = np.where(seen, x, level) - level
        # Huber-style: once a baseline is established, a residual counts at most `clip` scales, so a
        # start-up transient or an undetected fault moves neither the level nor the spread by much.
        scale = np.maximum(MAD_TO_STD * deviation, self.min_deviation)
        limit = np.where(count >= self.min_count, self.clip * scale, np.inf)
        residual = np.clip(residual, -limit, limit)
        rate = np.maximum(self.alpha, 1.0 / (count + 1))
        dev_rate = np.where(count > 0, np.maximum(self.deviation_alpha, 1.0 / np.maximum(count, 1)), 0.0)
        new_deviation = deviation + dev_rate * (np.abs(residual) - deviation)
        new_level = level + rate * residual
        self.level[machines, modes] = np.where(seen, new_level, level)
        self.deviation[machines, modes] = np.where(seen, new_deviation, deviation)
        self.count[machines, modes] = count + seen
