"""Features of closed windows, computed from their statistics (rows of WINDOW_STATS_ARROW_SCHEMA).

A model sees one feature vector per machine and window - never raw readings - so its cost stays flat as
the reading rate grows. The features describe a machine's operating point in ways that stay steady on a
healthy machine and move under the faults that matter:

============================  =======================================================  =====  ======
feature                       definition                                               bad    modes
============================  =======================================================  =====  ======
``temperature``               mean temperature (degC)                                  high   R
``temperature_rise``          mean temperature minus the previous window's, minus the   high   R I
                              warm-up the thermal lag explains (degC/window, see below)
``temperature_climb``         last temperature minus the mean, minus the same thermal   high   R I
                              lag over half a window (degC): a rise inside the window
``log_pressure_residual``     ln mean pressure, less what the operating point predicts  low    R I S
``log_pressure_min_residual`` ln lowest pressure, less what the operating point         low    R I S
                              predicts
``pressure_fall``             (mean - last) / mean pressure: a fall inside the window   high   R I
``log_vibration_residual``    ln mean vibration, less what the operating point predicts high   R I S
``log_power_residual``        ln mean power, less what the speed predicts               high   R I
============================  =======================================================  =====  ======

The *operating point* is (ln mean speed in 1,000 rpm, ln mean power): each ``*_residual`` feature is what
is left of its reading after a per-machine regression on them (`models.operating_point`, kept by the
caller). Load swings move vibration, pressure and power together; a fault moves one of them at the same
operating point. At standstill nothing turns and the raw logs are scored as they are.

Logarithms make multiplicative changes (a worn bearing multiplies vibration, a leak divides pressure)
equally visible on a loud running machine and on the faint background vibration of a stopped one.

*bad* is the direction a fault moves the feature: detectors score only deviations that way (a cold,
quiet or pressurised machine is not a fault), which halves false alarms and makes "top features" read
as causes.

**Modes.** A window's operating mode is ``running`` (R), ``idle`` (I) or ``standstill`` (S: stopped,
maintenance or fault) when the machine held that status for all of the window's observed time, from its
first reading to its end (`MIN_MODE_FRACTION`; readings rarely start on the boundary), and that time covers
most of the window (`MIN_OBSERVED_FRACTION`); otherwise (a start, a stop) it is ``transition`` and not
scored: a machine spinning up or down is not anomalous. Each mode has its own baseline per machine (an idle
pump is quieter than a running one, and a worn bearing still shows at standstill, on the background
vibration), and uses only the features that are meaningful in it (the *modes* column): a stopped machine
cools down, so its temperature says nothing.

**Missing values.** A null statistic (a sensor that dropped out) or the speed of a standing spindle
(below 50 rpm) is NaN: that feature is neither scored nor learned for the window, the others are.

**Thermal lag.** After a start a machine warms up towards its normal running temperature with time
constant `thermal_tau_s`; the part of the rise that this explains,
``(reference - previous) * (1 - exp(-dt / tau))`` with the mode's reference temperature kept by the
caller (dt: a window for `temperature_rise`, half a window for `temperature_climb`), is taken out, so a
cold start does not look like overheating.

>>> import pyarrow as pa
>>> from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA
>>> row = {f.name: [] if pa.types.is_map(f.type) else 0 for f in WINDOW_STATS_ARROW_SCHEMA}
>>> row.update(machine_id="M1", machine_type="pump", status_last="running", secs_running=10.0,
...            window_start=0, window_end=10_000, temperature_mean=60.0, pressure_mean=5.0,
...            pressure_min=4.9, vibration_mean=2.0, vibration_std=0.1, rpm_mean=2000.0, power_mean=30.0)
>>> columns = WindowColumns.of(pa.Table.from_pylist([row], schema=WINDOW_STATS_ARROW_SCHEMA))
>>> MODES[int(columns.mode[0])], np.exp(columns.operating_point[0]).round(1).tolist()
('running', [2.0, 30.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from plantpulse.schema import STATUSES

FEATURES: tuple[str, ...] = (
    "temperature",
    "temperature_rise",
    "temperature_climb",
    "log_pressure_residual",
    "log_pressure_min_residual",
    "pressure_fall",
    "log_vibration_residual",
    "log_power_residual",
)
TEMPERATURE, RISE, CLIMB = 0, 1, 2
# Residual features (columns of FEATURES) and the operating-point regressors each is regressed on
# (columns of REGRESSORS): power is predicted from the speed alone.
REGRESSORS: tuple[str, ...] = ("log_krpm", "log_power")
RESIDUAL_FEATURES = np.array([3, 4, 6, 7])
RESIDUAL_REGRESSORS = [[True, True], [True, True], [True, True], [True, False]]
# The sensor each feature belongs to (an alert names the sensor of its top feature).
FEATURE_SENSOR: dict[str, str] = {
    "temperature": "temperature",
    "temperature_rise": "temperature",
    "temperature_climb": "temperature",
    "log_pressure_residual": "pressure",
    "log_pressure_min_residual": "pressure",
    "pressure_fall": "pressure",
    "log_vibration_residual": "vibration",
    "log_power_residual": "power",
}
# +1: a fault makes the feature higher; -1: lower.
DIRECTION = np.array([1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
MODES: tuple[str, ...] = ("running", "idle", "standstill")
RUNNING, IDLE, STANDSTILL, TRANSITION = 0, 1, 2, -1
# Which features each mode scores (rows: MODES, columns: FEATURES).
MODE_FEATURES = np.array(
    [
        [1, 1, 1, 1, 1, 1, 1, 1],  # running
        [0, 1, 1, 1, 1, 1, 1, 1],  # idle
        [0, 0, 0, 1, 1, 0, 1, 0],  # standstill
    ],
    dtype=bool,
)
MIN_MODE_FRACTION = 0.999  # a status held for all of the observed time (a 1 s blip of another one spoils its stats)
# Readings rarely start on the window's boundary (1 Hz from an arbitrary clock): the observed time runs from
# the first reading to the window's end. A window observed for less than this share of its length (a machine
# that came online mid-window, a long sensor gap) is not scored.
MIN_OBSERVED_FRACTION = 0.6
_MIN_KRPM = 0.05  # below 50 rpm the speed says nothing (a spindle standing still): NaN


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _log(values: np.ndarray) -> np.ndarray:
    """Natural log with a floor of 1e-3 (a sensor reading exactly 0 stays finite)."""
    return np.log(np.maximum(values, 1e-3))


def _ms(table: pa.Table, name: str) -> np.ndarray:
    return table[name].cast(pa.int64()).to_numpy().astype(np.int64, copy=False)


@dataclass
class WindowColumns:
    """The columns of a window-stats table that the models use, as NumPy arrays (one row per window).

    `base` holds one column per feature, masked by the row's mode (unused features are NaN; transition rows
    are all NaN). Two kinds of column are not final: `temperature_rise` is NaN (it needs the machine's
    history, see `temperature_rise`), and the residual features hold raw logs (the caller subtracts its
    regression's prediction from the `operating_point`).
    """

    window_start: np.ndarray  # epoch ms
    window_end: np.ndarray
    mode: np.ndarray  # index into MODES, or TRANSITION
    temperature: np.ndarray  # mean temperature (NaN if unknown), also kept for the next window's rise
    base: np.ndarray  # [rows x FEATURES]; residual features still hold the raw logs
    operating_point: np.ndarray  # [rows x REGRESSORS]

    @classmethod
    def of(cls, table: pa.Table) -> WindowColumns:
        start, end = _ms(table, "window_start"), _ms(table, "window_end")
        secs = {f"secs_{status}": _column(table, f"secs_{status}") for status in STATUSES}
        observed = sum(secs.values())
        held = observed * MIN_MODE_FRACTION
        covered = observed >= np.maximum(end - start, 1) / 1000.0 * MIN_OBSERVED_FRACTION
        standstill = secs["secs_stopped"] + secs["secs_maintenance"] + secs["secs_fault"]
        mode = np.select(
            [
                covered & (secs["secs_running"] >= held),
                covered & (secs["secs_idle"] >= held),
                covered & (standstill >= held),
            ],
            [RUNNING, IDLE, STANDSTILL],
            TRANSITION,
        )
        temperature = _column(table, "temperature_mean")
        krpm = _column(table, "rpm_mean") / 1000.0
        safe_krpm = np.where(krpm >= _MIN_KRPM, krpm, np.nan)
        pressure = _column(table, "pressure_mean")
        power = _column(table, "power_mean")
        with np.errstate(invalid="ignore", divide="ignore"):
            log_krpm = np.log(safe_krpm)
            log_power = np.log(np.where(power > 0, power, np.nan))
            base = np.column_stack(
                [
                    temperature,
                    np.full(len(temperature), np.nan),  # temperature_rise: needs history (see `rise`)
                    _column(table, "temperature_last") - temperature,  # climb before the thermal-lag term
                    _log(pressure),
                    _log(_column(table, "pressure_min")),
                    (pressure - _column(table, "pressure_last")) / np.where(pressure > 0, pressure, np.nan),
                    _log(_column(table, "vibration_mean")),
                    _log(power),
                ]
            )
        usable = np.zeros(base.shape, dtype=bool)
        scored = mode != TRANSITION
        usable[scored] = MODE_FEATURES[mode[scored]]
        base[~usable] = np.nan
        return cls(start, end, mode, temperature, base, np.column_stack([log_krpm, log_power]))

    def take(self, rows: np.ndarray) -> WindowColumns:
        return WindowColumns(
            self.window_start[rows], self.window_end[rows], self.mode[rows], self.temperature[rows], self.base[rows],
            self.operating_point[rows],
        )


def temperature_rise(
    temperature: np.ndarray,
    previous: np.ndarray,
    reference: np.ndarray,
    window_s: np.ndarray | float,
    thermal_tau_s: float,
) -> np.ndarray:
    """Rise over the previous window beyond what warming towards `reference` explains (NaN if unknown).

    >>> float(temperature_rise(np.array([21.0]), np.array([20.0]), np.array([20.0]), 10.0, 300.0)[0])
    1.0
    >>> round(float(temperature_rise(np.array([21.64]), np.array([20.0]), np.array([70.0]), 10.0, 300.0)[0]), 2)
    0.0
    """
    expected = (reference - previous) * (1.0 - np.exp(-np.asarray(window_s) / thermal_tau_s))
    return temperature - previous - np.nan_to_num(expected, nan=0.0)
