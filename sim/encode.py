"""Vectorised JSON encoding of clean readings (wire schema v1), without a Python object per field.

The JSON text is assembled column-wise with Arrow string kernels (number formatting and concatenation
run in C), about 1.5-2x faster than building a `msgspec` `Reading` struct per message. Sensor values,
already rounded to their wire decimals, are printed as fixed-point decimals (`71.30`, `1480.0`), nulls
as `null`. The output decodes with `msgspec.json.decode(raw, type=plantpulse.schema.Reading)` (the tests
check every message).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plantpulse.schema import SCHEMA_VERSION, SENSORS, STATUSES
from sim.signals import DECIMALS


class ReadingEncoder:
    """Encodes batches of readings of one fleet into one `bytes` JSON object per reading."""

    def __init__(self, machine_ids: list[str]) -> None:
        # Constant runs merged into per-machine prefixes and per-status suffixes: fewer pieces to join.
        self._prefixes = pa.array([f'{{"v":{SCHEMA_VERSION},"machine_id":"{m}","ts":' for m in machine_ids])
        self._suffixes = pa.array([f',"status":"{status}"}}' for status in STATUSES])
        self._seq = pa.scalar(',"seq":')
        self._sensor_keys = [pa.scalar(f',"{sensor}":') for sensor in SENSORS]
        self._empty = pa.scalar("")

    def encode(
        self,
        machine: np.ndarray,
        ts: np.ndarray,
        seq: np.ndarray,
        sensors: np.ndarray,
        status: np.ndarray,
    ) -> pa.BinaryArray:
        """One JSON document per row; `sensors` is (rows, 5) in SENSORS order with NaN for null.

        Returns an Arrow binary array; `.to_pylist()` gives the `bytes` messages.
        """
        if len(machine) == 0:
            return pa.array([], pa.binary())
        parts = [
            self._prefixes.take(pa.array(machine)),
            pc.cast(pa.array(ts), pa.string()),
            self._seq,
            pc.cast(pa.array(seq), pa.string()),
        ]
        for column, key in enumerate(self._sensor_keys):
            parts.append(key)
            parts.append(format_fixed(sensors[:, column], DECIMALS[column]))
        parts.append(self._suffixes.take(pa.array(status)))
        joined = pc.binary_join_element_wise(*parts, self._empty, null_handling="replace", null_replacement="null")
        return joined.cast(pa.binary())


def format_fixed(values: np.ndarray, decimals: int) -> pa.Array:
    """Non-negative values as fixed-point text with `decimals` digits (`71.30`); NaN -> null.

    Formats scaled integers (cheaper than float formatting); negative or huge values fall back to
    Arrow's shortest round-trip float formatting, which is valid JSON too.
    """
    missing = np.isnan(values)
    scaled = np.rint(np.where(missing, 0.0, values) * 10.0**decimals)
    if decimals == 0 or (scaled < 0).any() or (scaled >= 2**53).any():
        return pc.cast(pa.array(values, from_pandas=True), pa.string())
    digits = pc.cast(pa.array(scaled.astype(np.int64), mask=missing if missing.any() else None), pa.string())
    # "5" -> "0005" -> "0.005": pad to one digit before the point, then insert the point.
    return pc.utf8_replace_slice(pc.utf8_lpad(digits, decimals + 1, "0"), -decimals, -decimals, ".")
