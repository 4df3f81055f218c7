"""The Bytewax side of the anomaly models: a `StatefulBatchLogic` per state shard around `FleetModels`.

Keyed by the same shard as the window state, fed that shard's closed windows in order. Each window first
goes through the shard's `SensorHealth` (`models.sensor_health`): a stuck, dropped-out or spiking sensor
raises a `sensor` alert (instrument maintenance) and its features are left out of that window's anomaly
score and learning (`FleetModels.score(..., faulty=...)`), so an instrument fault does not raise a machine
`anomaly` alert. The snapshot is the pickled pair (`FleetModels`, `SensorHealth`); after a restart every
machine's model continues where it was - under the model specs read from the spec file at this start, not
those of the snapshot: machines whose spec changed start afresh (`FleetModels.adopt_specs`), the others
keep their learned state. A snapshot of an earlier release (the models alone) starts sensor health afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from flows import snapshots
from models.fleet_models import FleetModels, ScoredWindows
from models.sensor_health import SensorHealth, SensorVerdict

logger = logging.getLogger("plantpulse.anomaly")


class AnalysedWindows(NamedTuple):
    """What one window-stats table of a shard gave: the anomaly scores and alerts, and the sensor verdict."""

    scored: ScoredWindows
    sensor: SensorVerdict

    @property
    def scores(self) -> pa.Table:
        return self.scored.scores

    @property
    def alerts(self) -> pa.Table | None:
        """The anomaly alerts (the sensor alerts are `sensor.alerts`)."""
        return self.scored.alerts


class AnomalyLogic(StatefulBatchLogic[pa.Table, AnalysedWindows, bytes]):
    """Checks the sensors of, then scores, each window-stats table of one shard."""

    def __init__(self, models: FleetModels, clock: Callable[[], float] = time.time,
                 health: SensorHealth | None = None) -> None:
        self.models = models
        self.health = health if health is not None else SensorHealth()
        self.clock = clock

    @classmethod
    def restore(
        cls, snapshot: bytes | None, fresh: Callable[[], FleetModels], clock: Callable[[], float] = time.time
    ) -> AnomalyLogic:
        if snapshot is None:
            return cls(fresh(), clock)
        state = snapshots.unpack(snapshot)
        models, health = (state, None) if isinstance(state, FleetModels) else state
        if not isinstance(models, FleetModels) or not isinstance(health, SensorHealth | None):
            raise TypeError(f"anomaly step: snapshot holds {type(state).__name__}, expected (FleetModels, SensorHealth)")
        reset = models.adopt_specs(fresh().specs)  # configuration from the file, state from the snapshot
        if reset:
            logger.info(
                "anomaly models: spec changed since the snapshot; machines starting afresh, by spec: %s",
                ", ".join(f"{name} ({count})" for name, count in sorted(reset.items())),
            )
        return cls(models, clock, health)

    def analyse(self, table: pa.Table, now_ms: int) -> AnalysedWindows:
        """Sensor verdict first, then the anomaly scores without the faulty sensors' features."""
        verdict = self.health.check(table, now_ms)
        return AnalysedWindows(self.models.score(table, now_ms, faulty=verdict.faulty or None), verdict)

    def on_batch(self, values: list[pa.Table]) -> tuple[Iterable[AnalysedWindows], bool]:
        now_ms = int(self.clock() * 1000)
        return [self.analyse(table, now_ms) for table in values if table.num_rows], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return snapshots.pack((self.models, self.health))
