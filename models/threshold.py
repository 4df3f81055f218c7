"""Adaptive per-machine alert thresholds: a streaming quantile of each machine's own scores, with a floor.

The threshold of a machine is ``max(floor, margin * q-quantile of its recent scores)``. The quantile is
tracked with a stochastic-gradient (pinball loss) update - the streaming estimate River's
`QuantileFilter` also relies on, here for all machines in one NumPy step - with a step proportional to
the estimate so it adapts on any score scale. Machines whose healthy scores are noisier get a higher
threshold; the floor keeps a very quiet machine from alarming on noise.

>>> import numpy as np
>>> threshold = AdaptiveThreshold(quantile=0.9, margin=1.0, floor=0.0, rate=0.05)
>>> threshold.grow(1)
>>> rng = np.random.default_rng(0)
>>> for score in rng.uniform(0, 1, 5000):
...     threshold.update(np.array([0]), np.array([score]))
>>> 0.8 < float(threshold.estimate[0]) < 1.0
True
"""

from __future__ import annotations

import numpy as np


class AdaptiveThreshold:
    """Streaming `quantile` of each machine's scores; threshold = max(floor, margin x estimate)."""

    def __init__(self, quantile: float = 0.99, margin: float = 1.5, floor: float = 6.0, rate: float = 0.02) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"threshold: quantile must be in (0, 1), got {quantile!r}")
        if margin <= 0 or floor < 0 or not 0 < rate < 1:
            raise ValueError(f"threshold: need margin > 0, floor >= 0, 0 < rate < 1; got {margin!r}, {floor!r}, {rate!r}")
        self.quantile, self.margin, self.floor, self.rate = quantile, margin, floor, rate
        self.estimate = np.zeros(0)

    def grow(self, n_machines: int) -> None:
        extra = n_machines - len(self.estimate)
        if extra > 0:
            self.estimate = np.concatenate((self.estimate, np.zeros(extra)))

    def threshold(self, machines: np.ndarray) -> np.ndarray:
        return np.maximum(self.floor, self.margin * self.estimate[machines])

    def update(self, machines: np.ndarray, scores: np.ndarray) -> None:
        """One pinball-loss step per machine (each machine at most once in `machines`)."""
        estimate = self.estimate[machines]
        step = self.rate * np.maximum(np.abs(estimate), 1e-3 + 0.1 * np.abs(scores))
        # Up by q steps above the estimate, down by (1 - q) below: it settles where P(above) = 1 - q.
        self.estimate[machines] = estimate + step * (self.quantile - (scores <= estimate))
