"""The Bytewax side of the anomaly models: a `StatefulBatchLogic` per state shard around `FleetModels`.

Keyed by the same shard as the window state, fed that shard's closed windows in order; the snapshot is
the pickled `FleetModels`, so after a restart every machine's model continues where it was.
"""

from __future__ import annotations

import pickle
import time
from typing import Callable, Iterable

import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from models.fleet_models import FleetModels, ScoredWindows


class AnomalyLogic(StatefulBatchLogic[pa.Table, ScoredWindows, bytes]):
    """Scores each window-stats table of one shard with that shard's `FleetModels`."""

    def __init__(self, models: FleetModels, clock: Callable[[], float] = time.time) -> None:
        self.models = models
        self.clock = clock

    @classmethod
    def restore(
        cls, snapshot: bytes | None, fresh: Callable[[], FleetModels], clock: Callable[[], float] = time.time
    ) -> AnomalyLogic:
        return cls(pickle.loads(snapshot) if snapshot is not None else fresh(), clock)

    def on_batch(self, values: list[pa.Table]) -> tuple[Iterable[ScoredWindows], bool]:
        now_ms = int(self.clock() * 1000)
        return [self.models.score(table, now_ms) for table in values if table.num_rows], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.models, protocol=pickle.HIGHEST_PROTOCOL)
