"""Normal machine behaviour, vectorised over the whole fleet: one `SignalModel.step` per tick.

Physics in brief (all time constants in seconds, so any tick interval gives the same curves):

- Status is a semi-Markov chain (`running`, `idle`, `stopped`, `maintenance`) with gamma-distributed dwell
  times; night and weekend shifts shorten running spells and lengthen idle/stopped ones. `fault` is only
  ever entered through `force_status` by an injected fault (a protective trip) and behaves like `stopped`.
- Load follows a per-machine duty cycle (base load x shift factor x slow sine + AR(1) wander) through a
  first-order lag; rpm, power, vibration and pressure are functions of load and speed; temperature is a
  slow first-order thermal lag towards ambient + rise x load.
- Normal values are clipped to `NORMAL_TEMPERATURE_MAX` and `NORMAL_PRESSURE_MIN` as a safety net so
  that only injected critical faults can cross the flow's critical thresholds (95 degC, 1.0 bar).
"""

from __future__ import annotations

import numpy as np

from plantpulse.schema import SENSORS, STATUSES
from sim.fleet import MACHINE_TYPES, Machine

RUNNING, IDLE, STOPPED, MAINTENANCE, FAULT = (STATUSES.index(s) for s in STATUSES)
TEMPERATURE, PRESSURE, VIBRATION, RPM, POWER = (SENSORS.index(s) for s in SENSORS)

NORMAL_TEMPERATURE_MAX = 88.0  # degC; the overheat rule fires above 95, tests allow nothing above 90
NORMAL_PRESSURE_MIN = 1.6  # bar; the pressure-loss rule fires below 1.0, tests allow nothing below 1.5
# Decimals on the wire per sensor: what a real PLC tag would carry.
DECIMALS = {TEMPERATURE: 2, PRESSURE: 3, VIBRATION: 3, RPM: 1, POWER: 2}

# Per machine type (order of MACHINE_TYPES: pump, compressor, cnc, conveyor): (low, high) ranges from
# which each machine draws its own nominal value.
_RPM_NOMINAL = ((2900, 2980), (1470, 1490), (6000, 12000), (1420, 1460))
_RATED_POWER_KW = ((11, 75), (30, 160), (7.5, 30), (2.2, 11))
_PRESSURE_NOMINAL_BAR = ((4.0, 9.0), (7.0, 10.0), (4.5, 7.0), (5.5, 6.5))
_TEMPERATURE_RISE = ((25, 38), (45, 58), (18, 30), (12, 22))  # above ambient at full load
_VIBRATION_BASE = ((1.2, 2.8), (1.8, 3.5), (0.6, 1.8), (1.0, 2.5))  # mm/s RMS at full speed
# Speed at zero load while running, and while idling, as a fraction of nominal (VFD pump, load/unload
# compressor, CNC spindle that stops when idle, fixed-speed conveyor motor).
_RPM_MIN_FRACTION = (0.6, 0.85, 0.3, 0.97)
_RPM_IDLE_FRACTION = (0.5, 0.8, 0.0, 0.97)
_PRESSURE_BASE_FRACTION = (0.55, 0.8, 0.85, 0.95)  # pressure at zero load while running
_PRESSURE_STANDBY_FRACTION = (0.4, 0.35, 0.5, 0.9)  # residual pressure while stopped (never < 2 bar)

# Status chain: mean dwell in seconds and transition probabilities (rows: from, columns: to).
_DWELL_MEAN_S = np.array([1800.0, 300.0, 600.0, 2400.0, np.inf])
_DWELL_GAMMA_SHAPE = 2.0  # fewer very short spells than an exponential
_TRANSITIONS = np.array(
    [
        [0.00, 0.75, 0.22, 0.03, 0.0],  # running ->
        [0.85, 0.00, 0.15, 0.00, 0.0],  # idle ->
        [0.55, 0.30, 0.00, 0.15, 0.0],  # stopped ->
        [0.00, 0.60, 0.40, 0.00, 0.0],  # maintenance ->
        [0.00, 1.00, 0.00, 0.00, 0.0],  # fault -> (normally left through force_status)
    ]
)
_INITIAL_STATUS_P = np.array([0.70, 0.15, 0.10, 0.05, 0.0])
_TAU_LOAD_S, _TAU_RPM_S, _TAU_PRESSURE_S, _TAU_TEMPERATURE_S = 4.0, 3.0, 5.0, 300.0
_TAU_WANDER_S, _WANDER_SIGMA = 30.0, 0.06  # AR(1) load wander: correlation time, stationary std
_IDLE_LOAD = 0.05
# Per-reading sensor noise (standard deviation): absolute for temperature (degC), relative for the others.
SENSOR_NOISE = {TEMPERATURE: 0.15, PRESSURE: 0.012, VIBRATION: 0.04, RPM: 0.003, POWER: 0.015}


def shift_factor(ts_ms: int) -> float:
    """Plant activity at an instant (UTC): day shift 1.0, evening 0.9, night 0.65, weekends x0.7."""
    seconds = ts_ms // 1000
    hour = (seconds // 3600) % 24
    weekday = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    factor = 1.0 if 6 <= hour < 14 else 0.9 if 14 <= hour < 22 else 0.65
    return factor * (0.7 if weekday >= 5 else 1.0)


class SignalModel:
    """Normal operation of every machine, advanced one tick at a time (all machines at once)."""

    def __init__(self, fleet: list[Machine], rng: np.random.Generator, interval_ms: float, start_ts_ms: int) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.n = n = len(fleet)
        self.rng = rng
        self.dt = interval_ms / 1000.0
        type_code = np.array([MACHINE_TYPES.index(m.machine_type) for m in fleet], dtype=np.int64)

        def per_type(ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
            low = np.array([r[0] for r in ranges])[type_code]
            high = np.array([r[1] for r in ranges])[type_code]
            return low + (high - low) * rng.random(n)

        def of_type(values: tuple[float, ...]) -> np.ndarray:
            return np.array(values)[type_code]

        self.rpm_nominal = per_type(_RPM_NOMINAL)
        self.rated_power = per_type(_RATED_POWER_KW)
        self.pressure_nominal = per_type(_PRESSURE_NOMINAL_BAR)
        self.temperature_rise = per_type(_TEMPERATURE_RISE)
        self.vibration_base = per_type(_VIBRATION_BASE)
        self.rpm_min = of_type(_RPM_MIN_FRACTION)
        self.rpm_idle = of_type(_RPM_IDLE_FRACTION)
        self.pressure_base = of_type(_PRESSURE_BASE_FRACTION)
        self.pressure_standby = np.maximum(2.0, of_type(_PRESSURE_STANDBY_FRACTION) * self.pressure_nominal)
        self.base_load = 0.55 + 0.35 * rng.random(n)
        self.cycle_amplitude = 0.05 + 0.15 * rng.random(n)
        self.cycle_period_s = 120.0 + 780.0 * rng.random(n)
        self.cycle_phase = 2 * np.pi * rng.random(n)
        self.vibration_background = 0.05 + 0.1 * rng.random(n)  # neighbours shake a stopped machine too
        # Machines of one site share the hall's ambient temperature; sites differ by a few degrees.
        site_codes = np.unique([m.site for m in fleet], return_inverse=True)[1]
        site_ambient = 19.0 + 5.0 * rng.random(site_codes.max() + 1)
        self.ambient_base = site_ambient[site_codes]

        self._rpm_idle_abs = self.rpm_nominal * self.rpm_idle
        self._alpha_load = 1.0 - np.exp(-self.dt / _TAU_LOAD_S)
        self._alpha_rpm = 1.0 - np.exp(-self.dt / _TAU_RPM_S)
        self._alpha_pressure = 1.0 - np.exp(-self.dt / _TAU_PRESSURE_S)
        self._alpha_temperature = 1.0 - np.exp(-self.dt / _TAU_TEMPERATURE_S)
        self._wander_phi = np.exp(-self.dt / _TAU_WANDER_S)
        self._wander_kick = np.sqrt(1 - self._wander_phi**2) * _WANDER_SIGMA

        self.status = rng.choice(len(STATUSES), size=n, p=_INITIAL_STATUS_P).astype(np.int8)
        # Start mid-spell: the residual of a dwell, so not all machines switch at once early on.
        self.remaining_s = self._draw_dwell(self.status, shift_factor(start_ts_ms)) * rng.random(n)
        self.wander = _WANDER_SIGMA * rng.standard_normal(n)
        running = self.status == RUNNING
        self.load = np.where(running, self.base_load, np.where(self.status == IDLE, _IDLE_LOAD, 0.0))
        self.rpm = self._rpm_target(self.load)
        self.pressure = self._pressure_target(self.load)
        ambient = self._ambient(start_ts_ms)
        self.temperature = self._temperature_target(self.load, ambient)

    # -- status chain ---------------------------------------------------------------------------------
    def _draw_dwell(self, status: np.ndarray, shift: float) -> np.ndarray:
        mean = _DWELL_MEAN_S[status]
        # Quiet shifts: shorter running spells, longer idle/stopped ones.
        mean = np.where(status == RUNNING, mean * shift, np.where(status <= STOPPED, mean / shift, mean))
        finite = np.isfinite(mean)
        draws = self.rng.gamma(_DWELL_GAMMA_SHAPE, 1.0, size=len(status))
        return np.where(finite, draws * np.where(finite, mean, 0.0) / _DWELL_GAMMA_SHAPE, np.inf)

    def force_status(self, machines: np.ndarray, status: int, dwell_s: np.ndarray | float) -> None:
        """Put `machines` into `status` for `dwell_s` seconds (used by fault injection)."""
        self.status[machines] = status
        self.remaining_s[machines] = dwell_s

    def _advance_status(self, shift: float) -> None:
        self.remaining_s -= self.dt
        due = np.flatnonzero(self.remaining_s <= 0.0)
        if len(due) == 0:
            return
        cumulative = np.cumsum(_TRANSITIONS[self.status[due]], axis=1)
        draw = self.rng.random(len(due))[:, None]
        new_status = np.minimum((draw >= cumulative).sum(axis=1), len(STATUSES) - 2).astype(np.int8)
        self.status[due] = new_status
        self.remaining_s[due] = self._draw_dwell(new_status, shift)

    # -- physics ----------------------------------------------------------------------------------------
    def _ambient(self, ts_ms: int) -> np.ndarray:
        hour = (ts_ms / 3_600_000.0) % 24.0
        return self.ambient_base + 2.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # warmest mid-afternoon

    def _rpm_target(self, load: np.ndarray) -> np.ndarray:
        running = self.rpm_nominal * (self.rpm_min + (1.0 - self.rpm_min) * load)
        status = self.status
        return np.where(status == RUNNING, running, np.where(status == IDLE, self.rpm_nominal * self.rpm_idle, 0.0))

    def _pressure_target(self, load: np.ndarray) -> np.ndarray:
        active = (self.status == RUNNING) | (self.status == IDLE)
        running = self.pressure_nominal * (self.pressure_base + (1.0 - self.pressure_base) * load)
        return np.where(active, running, self.pressure_standby)

    def _temperature_target(self, load: np.ndarray, ambient: np.ndarray) -> np.ndarray:
        active = (self.status == RUNNING) | (self.status == IDLE)
        return ambient + np.where(active, self.temperature_rise * (0.15 + 0.85 * load), 0.0)

    def noise(self, ticks: int) -> np.ndarray:
        """Standard normal noise for `ticks` steps, (ticks, 6, n): one call per block, not per tick."""
        return self.rng.standard_normal((ticks, 6, self.n))

    def step(self, ts_ms: int, noise: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Advance one tick to event time `ts_ms`; writes values (5, n) in SENSORS order into `out`.

        `noise` is one tick's slice of `noise()`. Returns the status after the step (the model's array:
        copy it to keep it).
        """
        shift = shift_factor(ts_ms)
        self._advance_status(shift)
        status = self.status
        running, idle = status == RUNNING, status == IDLE
        active = running | idle

        self.wander *= self._wander_phi
        self.wander += self._wander_kick * noise[5]
        cycle = np.sin((2 * np.pi * ts_ms / 1000.0) / self.cycle_period_s + self.cycle_phase)
        cycle *= self.cycle_amplitude
        cycle += 1.0
        running_load = np.minimum(np.maximum(self.base_load * shift * cycle + self.wander, 0.15), 1.0)
        load_target = np.where(running, running_load, np.where(idle, _IDLE_LOAD, 0.0))
        load = self.load
        load += (load_target - load) * self._alpha_load
        rpm_target = np.where(
            running, self.rpm_nominal * (self.rpm_min + (1.0 - self.rpm_min) * load), self._rpm_idle_abs * idle
        )
        self.rpm += (rpm_target - self.rpm) * self._alpha_rpm
        pressure_running = self.pressure_nominal * (self.pressure_base + (1.0 - self.pressure_base) * load)
        pressure_target = np.where(active, pressure_running, self.pressure_standby)
        self.pressure += (pressure_target - self.pressure) * self._alpha_pressure
        ambient = self._ambient(ts_ms)
        temperature_target = ambient + self.temperature_rise * (0.15 + 0.85 * load) * active
        self.temperature += (temperature_target - self.temperature) * self._alpha_temperature

        speed = np.minimum(np.maximum(self.rpm / self.rpm_nominal, 0.0), 1.2)
        out[TEMPERATURE] = self.temperature + SENSOR_NOISE[TEMPERATURE] * noise[TEMPERATURE]
        out[PRESSURE] = self.pressure * (1.0 + SENSOR_NOISE[PRESSURE] * noise[PRESSURE])
        shaking = self.vibration_base * (0.2 + 0.8 * speed) * (0.8 + 0.4 * load)
        out[VIBRATION] = np.where(speed > 0.01, shaking, self.vibration_background) * (
            1.0 + SENSOR_NOISE[VIBRATION] * noise[VIBRATION]
        )
        out[RPM] = self.rpm * (1.0 + SENSOR_NOISE[RPM] * noise[RPM]) * (speed > 0.001)
        electrical = np.where(active, 0.06 + 0.94 * load, np.where(status == MAINTENANCE, 0.005, 0.01))
        out[POWER] = self.rated_power * electrical * (1.0 + SENSOR_NOISE[POWER] * noise[POWER])
        clip_normal(out)
        return status


def clip_normal(values: np.ndarray, machines: np.ndarray | None = None) -> None:
    """Keep normal-operation values (5, n) physical and away from the critical thresholds, in place.

    `machines` limits the clipping to those columns (default: all).
    """
    if machines is None:  # whole rows: in-place ufuncs, no temporaries
        temperature = values[TEMPERATURE]
        np.minimum(np.maximum(temperature, -20.0, out=temperature), NORMAL_TEMPERATURE_MAX, out=temperature)
        np.maximum(values[PRESSURE], NORMAL_PRESSURE_MIN, out=values[PRESSURE])
        np.maximum(values[VIBRATION:], 0.0, out=values[VIBRATION:])  # vibration, rpm, power: the last three
        return
    temperature = values[TEMPERATURE, machines]
    values[TEMPERATURE, machines] = np.minimum(np.maximum(temperature, -20.0), NORMAL_TEMPERATURE_MAX)
    values[PRESSURE, machines] = np.maximum(values[PRESSURE, machines], NORMAL_PRESSURE_MIN)
    values[VIBRATION:, machines] = np.maximum(values[VIBRATION:, machines], 0.0)


def round_for_wire(values: np.ndarray) -> np.ndarray:
    """Round each sensor to its wire precision, in place; `values` is (..., 5, n). Returns `values`."""
    for sensor, decimals in DECIMALS.items():
        np.round(values[..., sensor, :], decimals, out=values[..., sensor, :])
    return values
