"""The Bytewax side of the anomaly models: a `StatefulBatchLogic` per state shard around `FleetModels`.

Keyed by the same shard as the window state, fed that shard's closed windows in order; the snapshot is
the pickled `FleetModels`, so after a restart every machine's model continues where it was - under the
model specs read from the spec file at this start, not those of the snapshot: machines whose spec
changed start afresh (`FleetModels.adopt_specs`), the others keep their learned state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from flows import snapshots
from models.fleet_models import FleetModels, ScoredWindows

logger = logging.getLogger("plantpulse.anomaly")


class AnomalyLogic(StatefulBatchLogic[pa.Table, ScoredWindows, bytes]):
    """Scores each window-stats table of one shard with that shard's `FleetModels`."""

    def __init__(self, models: FleetModels, clock: Callable[[], float] = time.time) -> None:
        self.models = models
        self.clock = clock

    @classmethod
    def restore(
        cls, snapshot: bytes | None, fresh: Callable[[], FleetModels], clock: Callable[[], float] = time.time
    ) -> AnomalyLogic:
        if snapshot is None:
            return cls(fresh(), clock)
        models: FleetModels = snapshots.unpack(snapshot)
        reset = models.adopt_specs(fresh().specs)  # configuration from the file, state from the snapshot
        if reset:
            logger.info(
                "anomaly models: spec changed since the snapshot; machines starting afresh, by spec: %s",
                ", ".join(f"{name} ({count})" for name, count in sorted(reset.items())),
            )
        return cls(models, clock)

    def on_batch(self, values: list[pa.Table]) -> tuple[Iterable[ScoredWindows], bool]:
        now_ms = int(self.clock() * 1000)
        return [self.models.score(table, now_ms) for table in values if table.num_rows], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return snapshots.pack(self.models)
