"""Generic features of closed windows: a few per sensor channel, for machine types nobody tuned.

The physics features (`models.features`) know the simulator's five sensors and how they relate. A real
plant has other machines: a pump test rig with two accelerometers, current, voltage, pressure, two
temperatures and a flow meter, or an air conditioner's one hourly temperature. The `channels` feature set
of a model spec (`features = "channels"`) builds the same features from every channel a window has, core
sensors (`<sensor>_mean`, ... columns) and extra channels (`channel_*` maps) alike:

==================  ==================================================================================
feature             definition (per channel ``c``)
==================  ==================================================================================
``c``               the window mean: the channel's level
``c:spread``        the window's standard deviation, only when the window holds at least
                    `MIN_SPREAD_READINGS` readings of it (from fewer it says nothing)
``c:step``          last value minus the mean: a move inside the window (0 for a one-reading window)
==================  ==================================================================================

None of them has a unit of its own that a model must know: the detectors standardise every feature by
what they learned of it per machine (`models.multivariate`, `models.robust_zscore` with relative floors),
so a pressure in bar or Pa, a vibration in g or mm/s, and a window of 1 s or 1 h give the same scores.
A window mean's noise falls with the number of readings in it; a machine reports at a steady rate, so the
learned spread already holds that, whatever the rate (100 Hz or one reading an hour).

Which channels a spec uses is its `channels` key (default: every numeric channel the machine sends), and
which features its `channel_features` key (default: all three).

>>> import pyarrow as pa
>>> from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
>>> row = {f.name: None for f in WINDOW_STATS_ARROW_SCHEMA}
>>> row.update({f"{s}_count": 0 for s in SENSORS})
>>> row.update(machine_id="M1", machine_type="rig", readings=10, temperature_count=10, temperature_mean=70.0,
...            temperature_std=0.5, temperature_last=70.2, channel_count=[("flow", 10)], channel_mean=[("flow", 32.0)],
...            channel_std=[("flow", 1.5)], channel_last=[("flow", 31.0)], channel_min=[], channel_max=[])
>>> table = pa.Table.from_pylist([row], schema=WINDOW_STATS_ARROW_SCHEMA)
>>> names, values = channel_features(table, channels=(), kinds=FEATURE_KINDS)
>>> for name, value in zip(names, values[0].round(2).tolist()):
...     print(name, value)
temperature 70.0
temperature:spread 0.5
temperature:step 0.2
flow 32.0
flow:spread 1.5
flow:step -1.0
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from plantpulse.schema import SENSORS, window_channels

FEATURE_KINDS: tuple[str, ...] = ("mean", "spread", "step")
_SUFFIX = {"mean": "", "spread": ":spread", "step": ":step"}
MIN_SPREAD_READINGS = 3


def feature_name(channel: str, kind: str) -> str:
    return channel + _SUFFIX[kind]


def channel_of(feature: str) -> str:
    """The channel (sensor) a feature belongs to: an alert names it."""
    return feature.split(":", 1)[0]


def window_channel_stats(table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """Channel -> stat -> per-row values for core sensors that have readings in `table` and extra channels."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for sensor in SENSORS:
        count = np.nan_to_num(table[f"{sensor}_count"].to_numpy(zero_copy_only=False).astype(np.float64))
        if (count > 0).any():
            out[sensor] = {"count": count, **{
                stat: table[f"{sensor}_{stat}"].to_numpy(zero_copy_only=False).astype(np.float64)
                for stat in ("mean", "std", "last")
            }}
    for name, stats in window_channels(table).items():
        out.setdefault(name, stats)  # a core sensor's name is refused as a channel name at decode
    return out


def channel_features(
    table: pa.Table, *, channels: tuple[str, ...], kinds: tuple[str, ...]
) -> tuple[list[str], np.ndarray]:
    """(feature names, values [rows x features]) of a window-stats table; NaN where a row lacks a channel.

    `channels`: the channels to use (empty: all of the table's); `kinds`: which of `FEATURE_KINDS`.
    """
    stats = window_channel_stats(table)
    names: list[str] = []
    columns: list[np.ndarray] = []
    for channel in (channels or tuple(stats)):
        got = stats.get(channel)
        if got is None:
            continue
        present = got["count"] > 0
        for kind in kinds:
            names.append(feature_name(channel, kind))
            if kind == "mean":
                values = got["mean"]
            elif kind == "spread":
                values = np.where(got["count"] >= MIN_SPREAD_READINGS, got["std"], np.nan)
            else:
                values = got["last"] - got["mean"]
            columns.append(np.where(present, values, np.nan))
    if not columns:
        return [], np.zeros((table.num_rows, 0))
    return names, np.column_stack(columns).astype(np.float64)
