"""River's `learn_one`/`score_one` for the columnar detectors: one stream is machine 0 in mode 0.

The detectors (`models.robust_zscore`, `models.multivariate`) work on arrays of many machines at once;
this mixin gives them River's interface for a single stream of feature dicts, so they can be used (and
their doctests read) like any River anomaly detector.
"""

from __future__ import annotations

import numpy as np


class SingleStream:
    """Mixin: needs `name`, `n_features`, `grow`, `score`, `track` and `learn` of a columnar detector."""

    name: str
    n_features: int
    _names: list[str] | None

    # The detector's own methods (these stand in for them only in the type checker's eyes).
    def grow(self, n_machines: int, keys: list[str] | None = None) -> None:
        raise NotImplementedError

    def score(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def track(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        raise NotImplementedError

    def learn(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        raise NotImplementedError

    def learn_one(self, x: dict[str, float]) -> None:
        """Learn one observation (a dict of feature values; None or NaN: missing); it moves trends on too."""
        machines, modes, row = self._one(x)
        self.track(machines, modes, row)
        self.learn(machines, modes, row)

    def score_one(self, x: dict[str, float]) -> float:
        """The score of one observation (0 until something was learned)."""
        machines, modes, row = self._one(x)
        return float(self.score(machines, modes, row)[0][0])

    def _one(self, x: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._names is None:
            self._names = list(x)
        elif len(self._names) < self.n_features:  # features were added: the new names come last
            self._names += [k for k in x if k not in self._names]
        if len(x) != self.n_features or set(x) != set(self._names):
            raise ValueError(f"{self.name}.learn_one/score_one: expected features {self._names}, got {sorted(x)}")
        self.grow(1)
        row = np.array([[np.nan if x[k] is None else float(x[k]) for k in self._names]])
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), row
