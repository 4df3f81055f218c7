"""The seasonal span detector: a multi-day mean of the residual of an hour-of-week forecaster.

Some faults are not a jump but a slow shift of a machine's usual weekly pattern: an air conditioner that
runs a few degrees warm for days, a plant whose weekend dip is missing. Window by window such a shift hides
in the daily swings that the other detectors (`models.multivariate`, `models.robust_zscore`) learn as
normal. This detector forecasts each channel's window mean from the machine's own weekly profile and asks
whether the forecast errors of the last few days lean one way. Per machine and channel:

1. **Forecaster.** A level ``L`` and a profile ``S`` of ``period_s / slot_s`` slots (default 168: one per
   hour of the week). A window at time ``t`` falls in slot ``floor((t mod period_s) / slot_s)``. Once its
   slot was seen in ``min_visits`` earlier periods, the forecast is ``f = L + S[slot]``, the residual
   ``r = x - f`` and, once the residual spread ``sp`` (mean ``|r|``) has learned ``spread_warmup_s`` of
   residuals, ``z = r / (1.25 sp)`` (1.25 x mean absolute deviation estimates a normal noise's standard
   deviation). Learning uses ``x`` with its residual clipped at ``clip`` x 1.25 sp, so an outlier barely moves
   the model: ``L <- d L + (1 - d) (x - S[slot])`` with ``d = exp(-dt / level_tau_s)``; a slot's profile
   moves once per visit by ``max(profile_rate, 1 / visits)`` towards the visit's mean of ``x - L``.
2. **Span.** ``m``: the exponentially weighted mean of ``z`` with time constant ``span_s``; ``u = m sqrt(n)``,
   ``n`` its effective number of samples (white ``z`` gives ``u ~ N(0, 1)``).
3. **Normaliser.** The score is ``|u| / (1.25 s)``, ``s`` the EW mean of ``|u|`` (time constant
   ``normaliser_tau_s``, learned from ``|u|`` clipped at ``clip`` x 1.25 s), so the score means the same on any
   channel, sampling rate and residual correlation. NaN until ``s`` has learned ``normaliser_warmup_s``.

**Time, not windows.** Every time constant and warm-up is in seconds of the machine's own clock (the
windows' start times), so the detector behaves the same at 10 s windows and at hourly ones: a window weighs
``omega = min(t - previous window of the channel, slot_s)`` seconds (its first: its own length), so a
reading after an outage does not stand for the whole outage. A new machine needs ``min_visits`` periods
(two weeks by default) before its first score; a stream of a few days is never scored.

State is columnar: arrays indexed by (machine, channel), the profile by (machine, channel, slot) in float32
and visits in uint8 (840 bytes per machine and channel with 168 slots). `update` scores and learns a batch
of rows, one row per distinct machine, in one pass of NumPy operations; `peek` scores without learning.
`learn_one`/`score_one` give River's interface for one stream, with the window's time as a keyword (a
seasonal model cannot do without it; River's time-series forecasters take it with the features too).

>>> rng = np.random.default_rng(1)
>>> hour = 3600.0
>>> detector = SeasonalResidual(1)
>>> def temperature(t):  # a weekly pattern: warm working days, cool nights and weekends
...     day, hour_of_day = int(t // 86400) % 7, (t % 86400) / hour
...     return 20.0 + (4.0 if day < 5 and 8 <= hour_of_day < 18 else 0.0) + rng.normal(0, 0.3)
>>> for i in range(24 * 7 * 5):  # five healthy weeks
...     detector.learn_one({"temperature": temperature(i * hour)}, t=i * hour)
>>> score = detector.score_one({"temperature": temperature(840 * hour)}, t=840 * hour)
>>> 0 <= score < 2.576
True
>>> for i in range(840, 840 + 24 * 4):  # four days 1.5 degrees warm: each hour within its normal noise ...
...     detector.learn_one({"temperature": temperature(i * hour) + 1.5}, t=i * hour)
>>> detector.score_one({"temperature": temperature(936 * hour) + 1.5}, t=936 * hour) > 2.576  # ... together not
True
>>> SeasonalResidual(1).score_one({"temperature": 20.0}, t=0.0)  # nothing learned: silent
0.0
"""

from __future__ import annotations

import numpy as np

MAD_TO_STD = 1.25
MAX_SLOTS = 2016  # 5-minute slots of a week; the profile is kept per machine and channel
MAX_VISITS = 255  # visits are counted in uint8; past 1 / profile_rate their number no longer matters
_STATE = ("level", "last_t", "open_slot", "open_period", "open_sum", "open_weight", "spread", "spread_mass",
          "span_mean", "span_w", "span_w2", "span_t", "norm_s", "norm_w", "norm_t")


class SeasonalResidual:
    """Level + slot profile forecaster per (machine, channel); score = normalised multi-day mean of its z."""

    name = "seasonal_span"

    def __init__(
        self,
        n_channels: int = 1,
        *,
        period_s: float = 7 * 86400.0,
        slot_s: float = 3600.0,
        level_tau_s: float = 7 * 86400.0,
        profile_rate: float = 0.2,
        min_visits: int = 2,
        spread_tau_s: float = 100 * 3600.0,
        spread_warmup_s: float = 20 * 3600.0,
        span_s: float = 4 * 86400.0,
        span_min_samples: float = 6.0,
        normaliser_tau_s: float = 14 * 86400.0,
        normaliser_warmup_s: float = 48 * 3600.0,
        clip: float = 4.0,
    ) -> None:
        def bad(key: str, value: object, need: str) -> ValueError:
            return ValueError(f"seasonal_residual: {key} = {value!r}: {need}")

        if n_channels < 0:
            raise bad("n_channels", n_channels, "must be >= 0")
        for key, value in (("period_s", period_s), ("slot_s", slot_s), ("level_tau_s", level_tau_s),
                           ("spread_tau_s", spread_tau_s), ("span_s", span_s), ("normaliser_tau_s", normaliser_tau_s),
                           ("clip", clip)):
            if not value > 0:
                raise bad(key, value, "must be > 0")
        slots = period_s / slot_s
        if not float(slots).is_integer() or not 1 <= slots <= MAX_SLOTS:
            raise bad("period_s / slot_s", (period_s, slot_s), f"must be a whole number of slots, 1 to {MAX_SLOTS}")
        if not 0 < profile_rate <= 1:
            raise bad("profile_rate", profile_rate, "must be in (0, 1]")
        if not 1 <= min_visits <= MAX_VISITS:
            raise bad("min_visits", min_visits, f"must be in 1..{MAX_VISITS}")
        if spread_warmup_s < 0 or normaliser_warmup_s < 0 or span_min_samples < 1:
            raise bad("warm-ups", (spread_warmup_s, normaliser_warmup_s, span_min_samples),
                      "need spread and normaliser warm-ups >= 0 s and span_min_samples >= 1")
        self.n_channels, self.n_slots = n_channels, int(slots)
        self.period_s, self.slot_s, self.level_tau_s, self.profile_rate = period_s, slot_s, level_tau_s, profile_rate
        self.min_visits, self.spread_tau_s, self.spread_warmup_s = min_visits, spread_tau_s, spread_warmup_s
        self.span_s, self.span_min_samples, self.clip = span_s, span_min_samples, clip
        self.normaliser_tau_s, self.normaliser_warmup_s = normaliser_tau_s, normaliser_warmup_s
        self.state: dict[str, np.ndarray] = {name: self._blank(name, 0) for name in _STATE}
        self.profile = np.zeros((0, n_channels, self.n_slots), dtype=np.float32)
        self.visits = np.zeros((0, n_channels, self.n_slots), dtype=np.uint8)
        self._names: list[str] | None = None  # channel order of the River interface

    def _blank(self, name: str, machines: int, channels: int | None = None) -> np.ndarray:
        shape = (machines, self.n_channels if channels is None else channels)
        if name in ("open_slot", "open_period"):
            return np.full(shape, -1, dtype=np.int64)
        zero = name in ("open_sum", "open_weight", "spread_mass", "span_w", "span_w2", "norm_w")
        return np.full(shape, 0.0 if zero else np.nan)

    def grow(self, n_machines: int) -> None:
        """Make room for machines up to index `n_machines - 1` (new ones start unlearned); capacity doubles."""
        have = len(self.profile)
        if n_machines > have:
            extra = max(n_machines, 2 * have, 16) - have
            for name in _STATE:
                self.state[name] = np.concatenate((self.state[name], self._blank(name, extra)))
            shape = (extra, self.n_channels, self.n_slots)
            self.profile = np.concatenate((self.profile, np.zeros(shape, dtype=np.float32)))
            self.visits = np.concatenate((self.visits, np.zeros(shape, dtype=np.uint8)))

    def add_channels(self, n_new: int) -> None:
        """Append `n_new` channels (a machine sent a new one); they start unlearned for every machine."""
        if n_new < 0:
            raise ValueError(f"seasonal_residual.add_channels: n_new must be >= 0, got {n_new!r}")
        machines = len(self.profile)
        for name in _STATE:
            self.state[name] = np.concatenate((self.state[name], self._blank(name, machines, n_new)), axis=1)
        pad = ((0, 0), (0, n_new), (0, 0))
        self.profile, self.visits = np.pad(self.profile, pad), np.pad(self.visits, pad)
        self.n_channels += n_new

    def update(self, machines: np.ndarray, t_s: np.ndarray, duration_s: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Score rows `x` [rows x channels] (NaN: missing) of distinct `machines` at window start `t_s` with
        window length `duration_s` (seconds), then learn them. Returns the scores [rows x channels], NaN
        where not warm; a row not later than its channel's previous one is ignored (NaN, nothing learned)."""
        scores, new = self._advance(machines, t_s, duration_s, x)
        self._commit(machines, new)
        return scores

    def peek(self, machines: np.ndarray, t_s: np.ndarray, duration_s: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The scores `update` would return, learning nothing."""
        return self._advance(machines, t_s, duration_s, x)[0]

    def _advance(self, machines: np.ndarray, t_s: np.ndarray, duration_s: np.ndarray,
                 x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(scores, the rows' new state): the whole algorithm, on [rows x channels] arrays, state untouched."""
        if x.ndim != 2 or x.shape != (len(machines), self.n_channels):
            raise ValueError(f"seasonal_residual: rows must be [{len(machines)} x {self.n_channels}], got {x.shape}")
        if len(np.unique(machines)) != len(machines):
            raise ValueError("seasonal_residual: a batch holds each machine at most once (one window per machine)")
        t = np.asarray(t_s, dtype=np.float64)[:, None]
        duration = np.asarray(duration_s, dtype=np.float64)[:, None]
        if not (np.isfinite(t).all() and (duration > 0).all()):
            raise ValueError(f"seasonal_residual: need finite times and window lengths > 0 s, got t={t.ravel()[:5]}, "
                             f"duration={duration.ravel()[:5]}")
        old = {name: values[machines] for name, values in self.state.items()}
        new = dict(old)  # fancy indexing gave copies; every change below makes a new array
        ch = np.arange(self.n_channels)[None, :]
        at = machines[:, None]
        dt = t - old["last_t"]
        valid = ~np.isnan(x) & ~(dt <= 0)  # NaN dt (first window) is valid
        omega = np.where(np.isnan(dt), np.minimum(duration, self.slot_s), np.minimum(dt, self.slot_s))
        slot = np.broadcast_to((np.mod(t, self.period_s) // self.slot_s).astype(np.int64), x.shape)
        period = np.broadcast_to((t // self.period_s).astype(np.int64), x.shape)

        # A visit of a slot ends when a window falls in another slot or period: its mean joins the profile.
        open_slot = old["open_slot"]
        changed = (open_slot != slot) | (old["open_period"] != period)
        fold = valid & changed & (open_slot >= 0)
        safe_open = np.where(open_slot >= 0, open_slot, 0)
        visits_open = np.minimum(self.visits[at, ch, safe_open].astype(np.int64) + 1, MAX_VISITS)
        profile_open = self.profile[at, ch, safe_open].astype(np.float64)
        visit_mean = old["open_sum"] / np.where(old["open_weight"] > 0, old["open_weight"], 1.0)
        folded = profile_open + np.maximum(self.profile_rate, 1.0 / visits_open) * (visit_mean - profile_open)
        new["fold"] = fold.astype(np.int64)  # where the open visit is written back by _commit
        new["fold_slot"], new["fold_visits"], new["fold_profile"] = safe_open, visits_open, folded
        same = fold & (open_slot == slot)  # a slot seen again a period later, nothing between: use the fold
        profile = np.where(same, folded, self.profile[at, ch, slot].astype(np.float64))
        visits = np.where(same, visits_open, self.visits[at, ch, slot].astype(np.int64))

        level, spread = old["level"], old["spread"]
        forecasting = valid & ~np.isnan(level) & (visits >= self.min_visits)
        forecast = level + profile
        residual = x - forecast
        spread_known = (old["spread_mass"] >= self.spread_warmup_s) & (spread > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(forecasting & spread_known, residual / (MAD_TO_STD * spread), np.nan)
            limit = np.where(spread_known, self.clip * MAD_TO_STD * spread, np.inf)
        clipped = np.clip(residual, -limit, limit)
        mass = old["spread_mass"] + np.where(forecasting, omega, 0.0)
        # Plain mean of |r| over the first spread_tau_s, then an EW mean over the last spread_tau_s.
        rate = omega / np.minimum(self.spread_tau_s, np.where(mass > 0, mass, 1.0))
        new["spread_mass"] = mass
        new["spread"] = np.where(forecasting, np.where(np.isnan(spread), np.abs(clipped), spread
                                                       + rate * (np.abs(clipped) - spread)), spread)
        learned = np.where(forecasting, forecast + clipped, x)  # what the level and the profile learn

        decay = np.exp(-np.where(np.isnan(dt), 0.0, dt) / self.level_tau_s)
        target = learned - profile
        new["level"] = np.where(valid, np.where(np.isnan(level), target, decay * level + (1 - decay) * target), level)
        fresh = valid & changed
        new["open_slot"] = np.where(valid, slot, open_slot)
        new["open_period"] = np.where(valid, period, old["open_period"])
        new["open_sum"] = np.where(valid, np.where(fresh, 0.0, old["open_sum"]) + omega * (learned - new["level"]),
                                   old["open_sum"])
        new["open_weight"] = np.where(valid, np.where(fresh, 0.0, old["open_weight"]) + omega, old["open_weight"])
        new["last_t"] = np.where(valid, t, old["last_t"])

        u = self._span(old, new, t, omega, z)
        return self._normalise(old, new, t, omega, u), new

    def _span(self, old: dict[str, np.ndarray], new: dict[str, np.ndarray], t: np.ndarray, omega: np.ndarray,
              z: np.ndarray) -> np.ndarray:
        """u: the EW mean of z in time (omega-weighted) times the square root of its effective sample count
        n = w^2 / w2; NaN where z is, or n < span_min_samples. Writes the span's state into `new`."""
        has_z = ~np.isnan(z)
        if not has_z.any():  # the first weeks of a machine: nothing forecast yet
            return np.full(z.shape, np.nan)
        since = np.where(np.isnan(old["span_t"]), np.inf, t - old["span_t"])
        fade = np.exp(-since / self.span_s)
        w = np.where(has_z, old["span_w"] * fade + omega, old["span_w"])
        w2 = np.where(has_z, old["span_w2"] * fade * fade + omega * omega, old["span_w2"])
        mean = old["span_mean"]
        with np.errstate(invalid="ignore", divide="ignore"):
            new["span_mean"] = np.where(has_z, np.where(np.isnan(mean), z, mean + omega / w * (z - mean)), mean)
            n_eff = np.where(w2 > 0, w * w / w2, 0.0)
            u = np.where(has_z & (n_eff >= self.span_min_samples), new["span_mean"] * np.sqrt(n_eff), np.nan)
        new["span_w"], new["span_w2"], new["span_t"] = w, w2, np.where(has_z, t, old["span_t"])
        return u

    def _normalise(self, old: dict[str, np.ndarray], new: dict[str, np.ndarray], t: np.ndarray, omega: np.ndarray,
                   u: np.ndarray) -> np.ndarray:
        """The scores |u| / (1.25 s), s the EW mean of |u| (clipped), NaN until s learned normaliser_warmup_s.
        Writes the normaliser's state into `new`."""
        has_u = ~np.isnan(u)
        if not has_u.any():
            return np.full(u.shape, np.nan)
        since = np.where(np.isnan(old["norm_t"]), np.inf, t - old["norm_t"])
        weight = old["norm_w"] * np.exp(-since / self.normaliser_tau_s)
        s = old["norm_s"]
        warm = has_u & (weight >= self.normaliser_warmup_s) & (s > 0)
        size = np.abs(u)
        clipped = np.where(warm, np.minimum(size, self.clip * MAD_TO_STD * np.where(warm, s, 0.0)), size)
        weight = weight + omega
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(warm, size / (MAD_TO_STD * s), np.nan)
            new["norm_s"] = np.where(has_u, np.where(np.isnan(s), clipped, s + omega / weight * (clipped - s)), s)
        new["norm_w"] = np.where(has_u, weight, old["norm_w"])
        new["norm_t"] = np.where(has_u, t, old["norm_t"])
        return scores

    def _commit(self, machines: np.ndarray, new: dict[str, np.ndarray]) -> None:
        for name in _STATE:
            self.state[name][machines] = new[name]
        rows, channels = np.nonzero(new["fold"])
        where = (machines[rows], channels, new["fold_slot"][rows, channels])
        self.profile[where] = new["fold_profile"][rows, channels]
        self.visits[where] = new["fold_visits"][rows, channels]

    # -- River's interface: one stream is machine 0 ----------------------------------------------------
    def learn_one(self, x: dict[str, float], *, t: float, duration: float = 1.0) -> None:
        """Learn one window of channel values (None or NaN: missing) that starts at `t` seconds."""
        row = self._one(x)
        self.update(np.zeros(1, dtype=np.int64), np.array([t]), np.array([duration]), row)

    def score_one(self, x: dict[str, float], *, t: float, duration: float = 1.0) -> float:
        """The largest channel score of one window at `t` seconds; 0.0 while no channel is warm."""
        scores = self.peek(np.zeros(1, dtype=np.int64), np.array([t]), np.array([duration]), self._one(x))
        return float(np.nanmax(scores)) if np.isfinite(scores).any() else 0.0

    def _one(self, x: dict[str, float]) -> np.ndarray:
        if self._names is None:
            self._names = list(x)
            if len(self._names) > self.n_channels:
                self.add_channels(len(self._names) - self.n_channels)
        if set(x) != set(self._names) or len(self._names) != self.n_channels:
            raise ValueError(f"{self.name}.learn_one/score_one: expected channels {self._names}, got {sorted(x)}")
        self.grow(1)
        return np.array([[np.nan if x[k] is None else float(x[k]) for k in self._names]])
