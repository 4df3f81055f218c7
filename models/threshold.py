"""Adaptive alert thresholds: a streaming quantile of each machine's own scores, with a floor.

The threshold of a stream (machine x mode) is ``max(floor, margin * q-quantile of its recent scores)``.
The quantile is tracked with a stochastic-gradient (pinball loss) update - the streaming estimate River's
`QuantileFilter` relies on too, here for all machines in one NumPy step - with a step proportional to
the estimate, so it adapts on any score scale (robust z-scores, Half-Space Trees' [0, 1]). A machine
whose healthy scores are noisier gets a higher threshold; the floor keeps a very quiet machine from
alarming on noise. The caller feeds it only scores judged normal, so a fault cannot raise the bar that
should catch it.

>>> threshold = AdaptiveThreshold(quantile=0.9, margin=1.0, floor=0.0, rate=0.05)
>>> threshold.grow(1)
>>> rng = np.random.default_rng(0)
>>> for score in rng.uniform(0, 1, 5000):
...     threshold.update(np.array([0]), np.array([0]), np.array([score]))
>>> 0.8 < float(threshold.threshold(np.array([0]), np.array([0]))[0]) < 1.0
True
"""

from __future__ import annotations

import numpy as np


class AdaptiveThreshold:
    """Streaming `quantile` of each stream's scores; threshold = max(floor, margin x estimate)."""

    def __init__(
        self, quantile: float = 0.99, margin: float = 1.5, floor: float = 6.0, rate: float = 0.02, n_modes: int = 1
    ) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"threshold: quantile must be in (0, 1), got {quantile!r}")
        if margin <= 0:
            raise ValueError(f"threshold: margin must be > 0, got {margin!r}")
        if floor < 0:
            raise ValueError(f"threshold: floor must be >= 0, got {floor!r}")
        if not 0 < rate < 1:
            raise ValueError(f"threshold: rate must be in (0, 1), got {rate!r}")
        self.quantile, self.margin, self.floor, self.rate = quantile, margin, floor, rate
        self.estimate = np.zeros((0, n_modes))

    def grow(self, n_machines: int) -> None:
        extra = n_machines - len(self.estimate)
        if extra > 0:
            self.estimate = np.concatenate((self.estimate, np.zeros((extra, self.estimate.shape[1]))))

    def threshold(self, machines: np.ndarray, modes: np.ndarray) -> np.ndarray:
        return np.maximum(self.floor, self.margin * self.estimate[machines, modes])

    def update(self, machines: np.ndarray, modes: np.ndarray, scores: np.ndarray) -> None:
        """One pinball-loss step per stream (each (machine, mode) at most once per call)."""
        estimate = self.estimate[machines, modes]
        step = self.rate * np.maximum(np.abs(estimate), 1e-3 + 0.1 * np.abs(scores))
        # Up by q steps above the estimate, down by (1 - q) below: it settles where P(above) = 1 - q.
        self.estimate[machines, modes] = estimate + step * (self.quantile - (scores <= estimate))
