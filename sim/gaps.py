"""Gaps in what a simulated fleet sends: the completeness problems data quality must find.

`with_gaps(Simulator, Gaps(...))` is a `Simulator` class whose runs lack messages, so what `produce` sends and
records lacks them too:

- the fleet's last `silent_machines` machines send nothing in the last `silent_for_s` of a run (switched off, or
  cut from the network): stale at the end;
- the `quiet_machines` before them send nothing for `quiet_for_s` from the middle of the run, then resume, and
  number only what they send (their `seq` continues where it stopped): a device that goes quiet without using
  up sequence numbers, which only its reporting interval reveals;
- clean, on-time readings are lost on the way at `lost_rate` (a deterministic choice): gaps in `seq`.

Give the simulator a `start_ts_ms`: `produce` would otherwise re-time it into a plain `Simulator`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import orjson

from sim.simulator import MessageBatch, SimulationRun, Simulator


@dataclass(frozen=True)
class Gaps:
    silent_machines: int = 0
    silent_for_s: float = 0.0
    quiet_machines: int = 0
    quiet_for_s: float = 0.0
    lost_rate: float = 0.0
    seed: int = 7

    def machines(self, n: int) -> tuple[range, range]:
        """Indices of (quiet mid-run, silent at the end) machines in a fleet of `n`."""
        silent_from = n - self.silent_machines
        return range(silent_from - self.quiet_machines, silent_from), range(silent_from, n)


def with_gaps(simulator_class: type[Simulator], gaps: Gaps) -> type[Simulator]:
    """A subclass of `simulator_class` whose runs have `gaps` (see the module docstring)."""

    class Run(SimulationRun):
        def __iter__(self) -> Iterator[MessageBatch]:
            if self.n_ticks is None:
                raise ValueError("with_gaps: the run needs a number of ticks (a duration)")
            ticks_per_s = 1000 / self.interval_ms
            cutoff = self.n_ticks - int(gaps.silent_for_s * ticks_per_s)
            quiet_from = self.n_ticks // 2
            quiet_until = quiet_from + int(gaps.quiet_for_s * ticks_per_s)
            quiet, silent = (np.asarray(list(r), dtype=np.int64) for r in gaps.machines(self.n))
            rng = np.random.default_rng(gaps.seed)
            for batch in super().__iter__():
                batch = _renumbered(batch, quiet, quiet_until, quiet_until - quiet_from)
                lost = (batch.imperfection == 0) & (rng.random(len(batch.values)) < gaps.lost_rate)
                keep = ~(
                    (np.isin(batch.machine, silent) & (batch.tick >= cutoff))
                    | (np.isin(batch.machine, quiet) & (batch.tick >= quiet_from) & (batch.tick < quiet_until))
                    | lost
                )
                if keep.all():
                    yield batch
                elif keep.any():
                    index = np.flatnonzero(keep).tolist()
                    yield replace(
                        batch,
                        keys=[batch.keys[i] for i in index],
                        values=[batch.values[i] for i in index],
                        raw=None,  # the recorder rebuilds it from `values`
                        # Every per-message column (numpy, one row per message) is filtered alike.
                        **{f.name: getattr(batch, f.name)[keep] for f in fields(batch)
                           if isinstance(getattr(batch, f.name), np.ndarray)},
                    )

    class WithGaps(simulator_class):  # type: ignore[misc, valid-type]
        def run(self, n_ticks: int | None = None) -> SimulationRun:
            if self.start_ts_ms is None:
                raise ValueError("with_gaps: give the simulator a start_ts_ms")
            return Run(self, n_ticks)

    return WithGaps


def _renumbered(batch: MessageBatch, quiet: np.ndarray, quiet_until: int, skipped: int) -> MessageBatch:
    """After its quiet spell a quiet machine's seq continues where it stopped (the simulator numbered every
    tick); the JSON of those messages is rewritten to match."""
    after = np.isin(batch.machine, quiet) & (batch.tick >= quiet_until)
    if skipped <= 0 or not after.any():
        return batch
    values = list(batch.values)
    for i in np.flatnonzero(after).tolist():
        try:
            document = orjson.loads(values[i])
        except orjson.JSONDecodeError:
            continue  # a malformed message: the flow rejects it before reading its seq
        if isinstance(document, dict) and isinstance(document.get("seq"), int):
            document["seq"] -= skipped
            values[i] = orjson.dumps(document)
    return replace(batch, seq=np.where(after, batch.seq - skipped, batch.seq), values=values, raw=None)
