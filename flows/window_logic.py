"""The Bytewax side of the window state: a `StatefulBatchLogic` per shard, and the shard splitter."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import StatefulBatchLogic

from flows import snapshots
from flows.window_state import ShardWindows, WindowOutput, shard_index, shard_key
from plantpulse.stopping import stop_requested

TICK = timedelta(seconds=1)
# Closing windows after every small batch would emit many tiny tables; closing at most this often keeps
# outputs large while adding well under a second to a window's latency.
CLOSE_INTERVAL_S = 0.25
# Callbacks come at least every TICK while the worker runs; a longer gap means the worker stood still
# (backpressure from a sink, e.g. an S3 outage) and readings waited in Kafka meanwhile.
STALL_S = 2.0


class ShardSplitter:
    """Splits decoded readings into one table per shard key (see `flows.window_state.shard_index`)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._shard_of: dict[str, int] = {}

    def __call__(self, readings: pa.Table) -> list[tuple[str, pa.Table]]:
        return split_by_shard(readings, self.shards, self._shard_of)


def split_by_shard(readings: pa.Table, shards: int, cache: dict[str, int] | None = None) -> list[tuple[str, pa.Table]]:
    """Split decoded readings into one table per shard key; `cache` remembers machines' shards."""
    if readings.num_rows == 0:
        return []
    if shards == 1:  # the replay's case: nothing to split
        return [(shard_key(0), readings)]
    cache = {} if cache is None else cache
    encoded = pc.dictionary_encode(readings["machine_id"]).combine_chunks()
    machines = encoded.dictionary.to_pylist()
    for machine in machines:
        if machine not in cache:
            cache[machine] = shard_index(machine, shards)
    machine_shard = np.fromiter(map(cache.__getitem__, machines), dtype=np.int64, count=len(machines))
    row_shard = machine_shard[encoded.indices.to_numpy()]
    order = np.argsort(row_shard, kind="stable")
    sorted_shards = row_shard[order]
    bounds = np.flatnonzero(np.diff(sorted_shards)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(order)]))
    ordered = readings.take(pa.array(order))
    return [
        (shard_key(int(sorted_shards[a])), ordered.slice(a, b - a)) for a, b in zip(starts.tolist(), ends.tolist())
    ]


class ShardWindowLogic(StatefulBatchLogic[pa.Table, WindowOutput, bytes]):
    """Feeds a shard's readings to `ShardWindows`, closes windows on every batch and every second.

    `clock` returns wall-clock seconds; tests pass a fake one to make idle and stale timing exact.
    """

    def __init__(self, windows: ShardWindows, clock: Callable[[], float] = time.time) -> None:
        self.windows = windows
        self.clock = clock
        self.last_close_s = 0.0
        self.last_call_s: float | None = None

    def _now(self) -> float:
        """The clock, with any stall of the worker taken out of the machines' silence."""
        now = self.clock()
        if self.last_call_s is not None and now - self.last_call_s > STALL_S:
            self.windows.pause(now - self.last_call_s - TICK.total_seconds())
        self.last_call_s = now
        return now

    def on_batch(self, values: list[pa.Table]) -> tuple[Iterable[WindowOutput], bool]:
        now = self._now()
        outputs = [self.windows.add(table, now) for table in values]
        # An incident waiting for its machine's earlier windows to be emitted does not wait for the interval.
        if now - self.last_close_s >= CLOSE_INTERVAL_S or self.windows.early_waiting_for_close():
            self.last_close_s = now
            outputs.append(self.windows.close(now))
        return [o for o in outputs if _has_content(o)], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[WindowOutput], bool]:
        self.last_close_s = self._now()
        output = self.windows.close(self.last_close_s)
        return ([output] if _has_content(output) else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[WindowOutput], bool]:
        if stop_requested():
            # A clean stop, not the end of the stream: open windows stay in the snapshot and close after the
            # restart, when their remaining readings arrive.
            return [], StatefulBatchLogic.RETAIN
        # A bounded input (replay, benchmark, test) has ended: every open window is complete.
        output = self.windows.close(self._now(), flush_all=True)
        return ([output] if _has_content(output) else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + TICK

    def snapshot(self) -> bytes:
        return snapshots.pack(self.windows)


def restore_windows(fresh: ShardWindows, snapshot: bytes | None, now_s: float) -> ShardWindows:
    """Return `fresh` with the snapshotted state (if any) loaded; configuration comes from `fresh`."""
    if snapshot is not None:
        fresh.restore(snapshots.unpack(snapshot).__dict__, now_s)
    return fresh


def _has_content(output: WindowOutput) -> bool:
    return bool(
        output.window_stats is not None
        or output.machine_state is not None
        or output.dead_letters
        or output.early
        or output.duplicates
        or output.accepted
    )
