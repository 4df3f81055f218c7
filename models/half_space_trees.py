"""River's Half-Space Trees per machine and mode, fed features scaled to the range the trees assume.

HalfSpaceTrees splits each feature's *fixed* range in halves, so features must lie within known limits.
Raw window features do not (a pump runs at 3,000 rpm, a CNC spindle at 12,000), and a global scaler
would let one machine's range squash another's. Each stream (machine x mode) therefore learns its own
per-feature range during `warmup` windows - the observed min/max widened by `margin` times its width on
both sides - and its trees are then built with exactly those limits (River's ``limits``, i.e. min-max
scaling to [0, 1] inside the trees) and fed the buffered warm-up windows. Values outside the range are
clipped to it: a window beyond everything seen lands in the sparsest cells, which is what scores high.
Features never observed during warm-up (unused in the mode, or a dead sensor) are left out of the
trees; a missing value later is replaced by its range's centre (neutral).

The score lies in [0, 1] (higher: more anomalous). A feature's contribution is how far it lies beyond
the half-width of its warm-up range, from the range's centre, in the direction faults move it.

One River model per stream makes this detector much slower than `models.robust_zscore` (tens of
microseconds per window instead of a vectorized update); a model spec picks it per machine type where
its non-linear view is worth that.

>>> detector = HalfSpaceTreesDetector(["f"], warmup=20, seed=1, window_size=20)
>>> for i in range(200):
...     detector.learn_one({"f": 10.0 + (i % 5) * 0.1})
>>> detector.score_one({"f": 10.2}) < detector.score_one({"f": 30.0})
True
"""

from __future__ import annotations

import math
import zlib
from typing import TypedDict, Unpack

import numpy as np
from river.anomaly import HalfSpaceTrees


class HalfSpaceTreesDetector:
    """One stream's Half-Space Trees with per-feature limits learned during `warmup` windows (River style)."""

    name = "half_space_trees"

    def __init__(
        self,
        features: list[str],
        *,
        warmup: int = 30,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 50,
        margin: float = 0.5,
        seed: int = 42,
    ) -> None:
        if warmup < 2:
            raise ValueError(f"half_space_trees: warmup must be >= 2 windows to learn a range, got {warmup!r}")
        if margin < 0:
            raise ValueError(f"half_space_trees: margin must be >= 0, got {margin!r}")
        self.features = list(features)
        self.warmup, self.margin = warmup, margin
        self.tree_params = {"n_trees": n_trees, "height": height, "window_size": window_size, "seed": seed}
        self.low = {f: math.inf for f in self.features}
        self.high = {f: -math.inf for f in self.features}
        self.seen = 0
        self.model: HalfSpaceTrees | None = None
        self.limits: dict[str, tuple[float, float]] = {}
        self._buffer: list[dict[str, float]] = []  # warm-up windows, fed to the trees once limits exist

    def learn_one(self, x: dict[str, float]) -> None:
        """Learn one window's features (NaN or None: missing)."""
        self.seen += 1
        if self.model is None:
            for f in self.features:
                v = x.get(f)
                if v is not None and not math.isnan(v):
                    self.low[f], self.high[f] = min(self.low[f], v), max(self.high[f], v)
            self._buffer.append(dict(x))
            if self.seen >= self.warmup:
                self.limits = self._limits()
                if self.limits:
                    # River annotates `limits` as a dict[Hashable, ...] (invariant) where it only reads a mapping of
                    # feature names: a dict[str, ...] is what it expects.
                    self.model = HalfSpaceTrees(limits=self.limits, **self.tree_params)  # type: ignore[arg-type]
                    for seen in self._buffer:
                        self.model.learn_one(self._clip(seen))
                self._buffer = []
            return
        self.model.learn_one(self._clip(x))

    def score_one(self, x: dict[str, float]) -> float:
        """Anomaly score in [0, 1]; 0 while the range is still being learned."""
        return 0.0 if self.model is None else float(self.model.score_one(self._clip(x)))

    def contributions(self, x: dict[str, float], direction: dict[str, float]) -> dict[str, float]:
        """Per feature: distance from the range's centre beyond its half-width, in half-widths (>= 0)."""
        out = {}
        for f, (low, high) in self.limits.items():
            v = x.get(f)
            if v is None or math.isnan(v):
                continue
            half = (high - low) / (2 * (1 + 2 * self.margin))  # half-width of the observed range
            d = direction.get(f, 0.0)
            offset = (v - (low + high) / 2) / max(half, 1e-12)
            out[f] = max(0.0, (d * offset if d else abs(offset)) - 1.0)
        return out

    def _limits(self) -> dict[str, tuple[float, float]]:
        limits = {}
        for f in self.features:
            if not math.isfinite(self.low[f]):
                continue  # never observed: left out of the trees
            width = max(self.high[f] - self.low[f], 1e-6 + 0.05 * abs(self.high[f]))
            limits[f] = (self.low[f] - self.margin * width, self.high[f] + self.margin * width)
        return limits

    def _clip(self, x: dict[str, float]) -> dict[str, float]:
        out = {}
        for f, (low, high) in self.limits.items():
            v = x.get(f)
            out[f] = (low + high) / 2 if v is None or math.isnan(v) else min(max(v, low), high)
        return out


class TreeParams(TypedDict, total=False):
    """`HalfSpaceTreesDetector` keyword arguments that `HalfSpaceTreesFleet` passes on to every stream."""

    warmup: int
    n_trees: int
    height: int
    window_size: int
    margin: float


class HalfSpaceTreesFleet:
    """`HalfSpaceTreesDetector` streams for many machines and modes, behind `RobustZScore`'s batch interface.

    >>> fleet = HalfSpaceTreesFleet(["a", "b"], direction=np.array([1.0, -1.0]), warmup=10, window_size=10)
    >>> fleet.grow(1)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(60):
    ...     fleet.learn(np.array([0]), np.array([0]), rng.normal([1.0, 5.0], 0.05, (1, 2)))
    >>> steady, _ = fleet.score(np.array([0]), np.array([0]), np.array([[1.0, 5.0]]))
    >>> shifted, contributions = fleet.score(np.array([0]), np.array([0]), np.array([[1.0, 3.0]]))
    >>> bool(shifted[0] > steady[0]), int(contributions[0].argmax())
    (True, 1)
    """

    name = "half_space_trees"

    def __init__(self, features: list[str], *, direction: np.ndarray, seed: int = 42, **params: Unpack[TreeParams]) -> None:
        self.features = list(features)
        self.direction = dict(zip(self.features, np.asarray(direction, dtype=np.float64).tolist()))
        self.seed = seed
        self.params: TreeParams = params
        self.streams: dict[tuple[int, int], HalfSpaceTreesDetector] = {}
        self.keys: list[str] = []

    def grow(self, n_machines: int, keys: list[str] | None = None) -> None:
        """Make room for machines up to index `n_machines - 1`; `keys` (e.g. machine ids) seed their trees."""
        keys = keys if keys is not None else [str(i) for i in range(n_machines)]
        self.keys.extend(keys[len(self.keys) : n_machines])

    def _stream(self, machine: int, mode: int) -> HalfSpaceTreesDetector:
        stream = self.streams.get((machine, mode))
        if stream is None:
            # Seeded by the machine's key: the same trees whatever shard or order the machine comes in.
            seed = (self.seed + zlib.crc32(f"{self.keys[machine]}/{mode}".encode())) % 2**31
            stream = self.streams[(machine, mode)] = HalfSpaceTreesDetector(self.features, seed=seed, **self.params)
        return stream

    def score(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.zeros(len(machines))
        contributions = np.zeros((len(machines), len(self.features)))
        for i, (m, mode, row) in enumerate(zip(machines.tolist(), modes.tolist(), x.tolist())):
            stream = self._stream(m, mode)
            values = dict(zip(self.features, row))
            scores[i] = stream.score_one(values)
            found = stream.contributions(values, self.direction)
            contributions[i] = [found.get(f, 0.0) for f in self.features]
        return scores, contributions

    def track(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        """Nothing to do: the trees keep no trend (the interface of `RobustZScore.track`)."""

    def reset_trend(self, machines: np.ndarray, modes: np.ndarray) -> None:
        """Nothing to do (the interface of `RobustZScore.reset_trend`)."""

    def learn(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None:
        for m, mode, row in zip(machines.tolist(), modes.tolist(), x.tolist()):
            self._stream(m, mode).learn_one(dict(zip(self.features, row)))
