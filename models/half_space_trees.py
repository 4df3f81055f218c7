"""River's Half-Space Trees per machine, fed features scaled to the [0, 1] range the trees assume.

HalfSpaceTrees splits each feature's *fixed* range in halves, so features must lie in known limits. Raw
window features do not (a pump runs at 3,000 rpm, a CNC at 12,000); each machine therefore learns its own
per-feature range during warm-up (the observed min/max widened by `margin` of its width on both sides)
and its trees are built with those limits. Values outside the range are clipped: a window far beyond
everything seen falls into the sparsest cells, which is what scores high.

Its score lies in [0, 1] (higher: more anomalous). One River model per machine makes this detector much
slower than `models.robust_zscore` (tens of microseconds per window instead of a vectorized update); the
model spec picks it per machine type where its non-linear view is worth that.

>>> detector = HalfSpaceTreesDetector(["f"], warmup=20, seed=1, window_size=20)
>>> for i in range(200):
...     detector.learn_one({"f": 10.0 + (i % 5) * 0.1})
>>> detector.score_one({"f": 10.2}) < detector.score_one({"f": 30.0})
True
"""

from __future__ import annotations

import math

from river.anomaly import HalfSpaceTrees


class HalfSpaceTreesDetector:
    """One machine's Half-Space Trees with per-feature limits learned during `warmup` windows."""

    name = "half_space_trees"

    def __init__(
        self,
        features: list[str],
        *,
        warmup: int = 30,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 50,
        margin: float = 0.5,
        seed: int = 42,
    ) -> None:
        if warmup < 2:
            raise ValueError(f"half_space_trees: warmup must be >= 2 windows to learn a range, got {warmup!r}")
        self.features = list(features)
        self.warmup, self.margin = warmup, margin
        self.tree_params = {"n_trees": n_trees, "height": height, "window_size": window_size, "seed": seed}
        self.low = {f: math.inf for f in self.features}
        self.high = {f: -math.inf for f in self.features}
        self.seen = 0
        self.model: HalfSpaceTrees | None = None
        self._replay: list[dict[str, float]] = []  # warm-up windows, fed to the trees once limits exist

    def learn_one(self, x: dict[str, float]) -> None:
        self.seen += 1
        if self.model is None:
            for f in self.features:
                self.low[f], self.high[f] = min(self.low[f], x[f]), max(self.high[f], x[f])
            self._replay.append(x)
            if self.seen >= self.warmup:
                self.model = HalfSpaceTrees(limits=self._limits(), **self.tree_params)
                for seen in self._replay:
                    self.model.learn_one(self._clip(seen))
                self._replay = []
            return
        self.model.learn_one(self._clip(x))

    def score_one(self, x: dict[str, float]) -> float:
        return 0.0 if self.model is None else float(self.model.score_one(self._clip(x)))

    def _limits(self) -> dict[str, tuple[float, float]]:
        limits = {}
        for f in self.features:
            width = max(self.high[f] - self.low[f], 1e-6 + 0.05 * abs(self.high[f]))
            limits[f] = (self.low[f] - self.margin * width, self.high[f] + self.margin * width)
        return limits

    def _clip(self, x: dict[str, float]) -> dict[str, float]:
        if self.model is None:
            return x
        limits = self.model.limits
        return {f: min(max(x[f], limits[f][0]), limits[f][1]) for f in self.features}
