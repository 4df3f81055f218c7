"""Features of a closed window, computed from its statistics (one row of WINDOW_STATS_ARROW_SCHEMA).

A model sees one feature vector per machine and window - never raw readings - so its cost stays flat as
the reading rate grows. The features describe the machine's operating point in ways that stay steady on
a healthy machine and move under the faults that matter:

==========================  ==========================================================  ===============
feature                     definition                                                  moves under
==========================  ==========================================================  ===============
``temperature``             mean temperature (degC)                                     overheating
``temperature_rise``        mean temperature minus the previous window's (degC/window)  overheating
``pressure``                mean pressure (bar)                                         leaks
``pressure_min``            lowest pressure in the window (bar)                         leaks
``vibration``               mean vibration (mm/s)                                       bearing wear
``vibration_per_krpm``      mean vibration per 1,000 rpm                                bearing wear
``vibration_spread``        vibration standard deviation (mm/s)                         bearing wear
``power_per_krpm``          mean power per 1,000 rpm (kW)                               leaks, friction
==========================  ==========================================================  ===============

A window is *scorable* only when the machine ran for (nearly) all of it and every feature is finite:
an idle, stopped or maintained machine is not anomalous for being cold or still, and its windows teach
the model nothing about how it runs. `temperature_rise` needs the machine's previous window, which the
caller keeps (see `models.fleet_models`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

FEATURES: tuple[str, ...] = (
    "temperature",
    "temperature_rise",
    "pressure",
    "pressure_min",
    "vibration",
    "vibration_per_krpm",
    "vibration_spread",
    "power_per_krpm",
)
# The sensor each feature belongs to (an alert names the sensor of its top feature).
FEATURE_SENSOR: dict[str, str] = {
    "temperature": "temperature",
    "temperature_rise": "temperature",
    "pressure": "pressure",
    "pressure_min": "pressure",
    "vibration": "vibration",
    "vibration_per_krpm": "vibration",
    "vibration_spread": "vibration",
    "power_per_krpm": "power",
}
MIN_RUNNING_FRACTION = 0.9
_MIN_KRPM = 0.05  # below 50 rpm a per-rpm ratio says nothing


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def window_features(table: pa.Table, previous_temperature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features [rows x len(FEATURES)], scorable [rows]) for window-stats rows.

    `previous_temperature[i]` is the mean temperature of row i's machine in its previous window (NaN when
    unknown). Nulls become NaN; a row with any NaN feature is not scorable.

    >>> import pyarrow as pa
    >>> from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
    >>> row = {f.name: 0 for f in WINDOW_STATS_ARROW_SCHEMA}
    >>> row.update(machine_id="M1", machine_type="pump", status_last="running", secs_running=10.0,
    ...            window_start=0, window_end=10_000, temperature_mean=60.0, pressure_mean=5.0,
    ...            pressure_min=4.9, vibration_mean=2.0, vibration_std=0.1, rpm_mean=2000.0, power_mean=30.0)
    >>> table = pa.Table.from_pylist([row], schema=WINDOW_STATS_ARROW_SCHEMA)
    >>> x, ok = window_features(table, np.array([59.5]))
    >>> dict(zip(FEATURES, x[0].round(2).tolist()))["vibration_per_krpm"], bool(ok[0])
    (1.0, True)
    """
    window_s = (
        table["window_end"].cast(pa.int64()).to_numpy() - table["window_start"].cast(pa.int64()).to_numpy()
    ) / 1000.0
    temperature = _column(table, "temperature_mean")
    krpm = _column(table, "rpm_mean") / 1000.0
    safe_krpm = np.where(krpm >= _MIN_KRPM, krpm, np.nan)
    vibration = _column(table, "vibration_mean")
    features = np.column_stack(
        [
            temperature,
            temperature - previous_temperature,
            _column(table, "pressure_mean"),
            _column(table, "pressure_min"),
            vibration,
            vibration / safe_krpm,
            _column(table, "vibration_std"),
            _column(table, "power_mean") / safe_krpm,
        ]
    )
    running = _column(table, "secs_running") >= MIN_RUNNING_FRACTION * window_s
    scorable = running & np.isfinite(features).all(axis=1)
    return features, scorable
