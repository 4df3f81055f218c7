"""Window statistics over closed readings, computed for many (machine, window) groups at once.

Input is a `ClosedReadings` sorted by (machine, window_start, ts, seq); every aggregate is a NumPy
`reduceat` over the group boundaries, so the cost per reading is a few vector operations, not a Python call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from plantpulse.schema import CHANNEL_STATS, SENSORS, STATUSES, WINDOW_STATS_ARROW_SCHEMA


@dataclass
class ClosedReadings:
    """Readings of closed windows, one NumPy array per column, sorted by (midx, ws, ts, seq).

    `midx` indexes the shard's machine registry; sensor and channel arrays hold NaN where the sensor was null
    (or, for a channel, not reported); `status` holds indices into `STATUSES`.
    """

    midx: np.ndarray
    ws: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    sensors: dict[str, np.ndarray]
    status: np.ndarray
    channels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, order: np.ndarray) -> ClosedReadings:
        return ClosedReadings(
            midx=self.midx[order],
            ws=self.ws[order],
            ts=self.ts[order],
            seq=self.seq[order],
            sensors={name: values[order] for name, values in self.sensors.items()},
            status=self.status[order],
            channels={name: values[order] for name, values in self.channels.items()},
        )

    def sorted(self) -> ClosedReadings:
        return self.take(np.lexsort((self.seq, self.ts, self.ws, self.midx)))


@dataclass
class Groups:
    """Boundaries of the (machine, window) groups of sorted readings."""

    starts: np.ndarray  # first row of each group
    lasts: np.ndarray  # last row of each group
    hold_ms: np.ndarray  # per reading: ms until the next reading of its window, or the window end (exact ints)

    @classmethod
    def of(cls, readings: ClosedReadings, window_ms: int) -> Groups:
        midx, ws, ts = readings.midx, readings.ws, readings.ts
        change = np.flatnonzero((midx[1:] != midx[:-1]) | (ws[1:] != ws[:-1])) + 1
        starts = np.concatenate(([0], change))
        lasts = np.concatenate((change - 1, [len(ts) - 1]))
        following = np.empty_like(ts)
        following[:-1] = ts[1:]
        following[lasts] = ws[lasts] + window_ms
        return cls(starts=starts, lasts=lasts, hold_ms=following - ts)

    @property
    def lengths(self) -> np.ndarray:
        return self.lasts - self.starts + 1


def sensor_stats(values: np.ndarray, groups: Groups) -> dict[str, np.ndarray]:
    """count, mean, min, max, population std and last non-null value per group (NaN where no values)."""
    starts = groups.starts
    present = ~np.isnan(values)
    count = np.add.reduceat(present, starts).astype(np.uint32)
    total = np.add.reduceat(np.where(present, values, 0.0), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        deviation = np.where(present, values - np.repeat(mean, groups.lengths), 0.0)
        std = np.sqrt(np.add.reduceat(deviation * deviation, starts) / count)
        low = np.fmin.reduceat(values, starts)
        high = np.fmax.reduceat(values, starts)
    last_row = np.maximum.reduceat(np.where(present, np.arange(len(values)), -1), starts)
    last = np.where(last_row >= 0, values[np.maximum(last_row, 0)], np.nan)
    return {"count": count, "mean": mean, "min": low, "max": high, "std": std, "last": last}


def window_stats_table(
    readings: ClosedReadings,
    groups: Groups,
    machine_ids: np.ndarray,
    machine_types: np.ndarray,
    window_ms: int,
    emitted_at_ms: int,
) -> pa.Table:
    """One `WINDOW_STATS_ARROW_SCHEMA` row per group. `machine_ids`/`machine_types` are indexed by midx."""
    starts, lasts = groups.starts, groups.lasts
    group_midx = readings.midx[starts]
    window_start = readings.ws[starts]
    columns: dict[str, object] = {
        "machine_id": machine_ids[group_midx],
        "machine_type": machine_types[group_midx],
        "window_start": window_start,
        "window_end": window_start + window_ms,
        "readings": groups.lengths.astype(np.uint32),
        "first_ts": readings.ts[starts],
        "last_ts": readings.ts[lasts],
        "last_seq": readings.seq[lasts],
        "first_seq": readings.seq[starts],
    }
    for sensor in SENSORS:
        for stat, values in sensor_stats(readings.sensors[sensor], groups).items():
            columns[f"{sensor}_{stat}"] = values
    columns["status_last"] = np.asarray(STATUSES, dtype=object)[readings.status[lasts]]
    for code, status in enumerate(STATUSES):
        held = np.where(readings.status == code, groups.hold_ms, 0)
        columns[f"secs_{status}"] = np.add.reduceat(held, starts) / 1000.0
    columns["emitted_at"] = np.full(len(starts), emitted_at_ms, dtype=np.int64)
    arrays = [_arrow(columns[f.name], f.type) for f in WINDOW_STATS_ARROW_SCHEMA if not f.name.startswith("channel_")]
    arrays.extend(channel_stats_maps(readings.channels, groups))
    return pa.Table.from_arrays(arrays, schema=WINDOW_STATS_ARROW_SCHEMA)


def channel_stats_maps(channels: dict[str, np.ndarray], groups: Groups) -> list[pa.Array]:
    """The `channel_<stat>` map columns (`CHANNEL_STATS` order): per group, an entry for every channel with
    at least one value in it, in name order."""
    n = len(groups.starts)
    names = sorted(channels)
    stats = [sensor_stats(channels[name], groups) for name in names]
    present = np.column_stack([s["count"] > 0 for s in stats]) if names else np.zeros((n, 0), dtype=bool)
    offsets = pa.array(np.concatenate(([0], np.cumsum(present.sum(axis=1)))).astype(np.int32))
    flat = present.ravel()
    keys = pa.array(np.tile(np.asarray(names, dtype=object), n)[flat], pa.string())
    maps = []
    for stat in CHANNEL_STATS:
        value_type = pa.uint32() if stat == "count" else pa.float64()
        values = np.column_stack([s[stat] for s in stats]).ravel()[flat] if names else np.zeros(0)
        maps.append(pa.MapArray.from_arrays(offsets, keys, pa.array(values, value_type)))
    return maps


def _arrow(values: object, arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(arrow_type):
        return pa.array(values, type=pa.int64()).cast(arrow_type)
    if pa.types.is_floating(arrow_type):
        return pa.array(values, type=arrow_type, from_pandas=True)  # NaN -> null
    return pa.array(values, type=arrow_type)
