"""Robust standardized residuals against an exponentially weighted baseline, for many machines at once.

Per machine and feature the detector keeps an EWMA of the level and an EWMA of the absolute deviation
from it (a robust spread: 1.25 x mean absolute deviation estimates the standard deviation of normal
noise, and a single outlier moves it far less than a variance). A window's score is the largest
standardized residual ``|x - level| / max(1.25 * deviation, floor)`` over its features; the per-feature
residuals say which features drove the score.

The baseline follows slow, healthy changes (load, ambient temperature) with time constant ``1/alpha``
windows, and the caller decides which windows it learns from (it skips anomalous ones so that a fault
does not become the new normal).

State is columnar - one row per machine - so scoring and learning a batch of windows is a handful of
NumPy operations, whatever the fleet size. `learn_one`/`score_one` give River's interface for one machine.

>>> detector = RobustZScore(n_features=1, alpha=0.1)
>>> for x in [10.0, 10.2, 9.8, 10.1, 9.9] * 10:
...     detector.learn_one({"f": x})
>>> detector.score_one({"f": 10.0}) < 3, detector.score_one({"f": 14.0}) > 10
(True, True)
"""

from __future__ import annotations

import numpy as np

MAD_TO_STD = 1.25


class RobustZScore:
    """EWMA level + EW mean absolute deviation per (machine, feature); score = max robust |z|."""

    name = "robust_zscore"

    def __init__(self, n_features: int, alpha: float = 0.05, min_deviation: np.ndarray | float = 1e-3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"robust_zscore: alpha must be in (0, 1], got {alpha!r}")
        self.n_features = n_features
        self.alpha = alpha
        self.min_deviation = np.broadcast_to(np.asarray(min_deviation, dtype=np.float64), (n_features,)).copy()
        self.level = np.zeros((0, n_features))
        self.deviation = np.zeros((0, n_features))
        self.seen = np.zeros(0, dtype=np.int64)
        self._keys: dict[str, int] = {}  # only for the one-machine River interface

    def grow(self, n_machines: int) -> None:
        """Make room for machines up to index `n_machines - 1`."""
        extra = n_machines - len(self.seen)
        if extra > 0:
            self.level = np.vstack((self.level, np.zeros((extra, self.n_features))))
            self.deviation = np.vstack((self.deviation, np.zeros((extra, self.n_features))))
            self.seen = np.concatenate((self.seen, np.zeros(extra, dtype=np.int64)))

    def residuals(self, machines: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Standardized residuals [rows x features]; 0 for machines never learned."""
        scale = np.maximum(MAD_TO_STD * self.deviation[machines], self.min_deviation)
        z = np.abs(x - self.level[machines]) / scale
        return np.where(self.seen[machines, None] > 0, z, 0.0)

    def score(self, machines: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score per row, residuals per row and feature). Each machine at most once in `machines`."""
        z = self.residuals(machines, x)
        return (z.max(axis=1) if z.shape[1] else np.zeros(len(machines))), z

    def learn(self, machines: np.ndarray, x: np.ndarray) -> None:
        """Update the baselines of `machines` (each at most once) with rows `x`."""
        first = self.seen[machines] == 0
        level, deviation = self.level[machines], self.deviation[machines]
        # The first window sets the level; its deviation starts at a tenth of the level's magnitude so
        # the warm-up does not divide by a zero spread.
        new_level = np.where(first[:, None], x, level + self.alpha * (x - level))
        new_deviation = np.where(
            first[:, None], 0.1 * np.abs(x), deviation + self.alpha * (np.abs(x - level) - deviation)
        )
        self.level[machines], self.deviation[machines] = new_level, new_deviation
        self.seen[machines] += 1

    # -- River's interface, for one machine ------------------------------------------------------

    def learn_one(self, x: dict[str, float]) -> None:
        self._one(x, learn=True)

    def score_one(self, x: dict[str, float]) -> float:
        return self._one(x, learn=False)

    def _one(self, x: dict[str, float], *, learn: bool) -> float:
        if len(x) != self.n_features:
            raise ValueError(f"robust_zscore: expected {self.n_features} features, got {len(x)}: {sorted(x)}")
        self.grow(1)
        row = np.array([[float(v) for v in x.values()]])
        machines = np.zeros(1, dtype=np.int64)
        if learn:
            self.learn(machines, row)
            return 0.0
        return float(self.score(machines, row)[0][0])
