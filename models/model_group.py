"""What every model group of `FleetModels` shares: per-machine state, the adaptive threshold and judging.

A *group* holds the machines that share one model spec (local indices 0..n-1). How a group turns a window
into a feature vector differs (`models.fleet_models` for the physics features, `models.channel_models`
for any channels); what happens to the vector does not, and lives here (`ModelGroup.judge`): score it,
compare with the machine's adaptive threshold after warm-up, learn it unless it looks anomalous (or the
anomaly lasted so long that it is the new normal), feed normal scores to the threshold, and raise an alert
on the first anomalous window of an episode outside the cooldown. See `models.fleet_models` for the rules.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.features import MODES, TRANSITION
from models.spec import ModelSpec
from models.threshold import AdaptiveThreshold

N_MODES = len(MODES)
NO_ALERT_YET = 10**9
# Per-machine state (local machine index first): name -> (initial value, dtype, per mode).
PER_MACHINE: dict[str, tuple[float, type, bool]] = {
    "prev_end": (-1, np.int64, False),
    "prev_temperature": (np.nan, np.float64, False),
    "prev_mode": (TRANSITION, np.int64, False),
    "mode_streak": (0, np.int64, False),
    "reference": (np.nan, np.float64, True),  # EWMA of the temperature of learned windows, per mode
    "learned": (0, np.int64, True),
    "scored": (0, np.int64, False),  # scored windows, all modes (warm-up)
    "anomalous_run": (0, np.int64, False),
    "since_alert": (NO_ALERT_YET, np.int64, False),
    "episode_alerted": (False, bool, False),  # the current run of over windows has alerted
    "unlearned_run": (0, np.int64, False),  # consecutive scored windows held back from learning
}


class Detector(Protocol):
    def grow(self, n_machines: int, keys: list[str] | None = None) -> None: ...
    def score(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def track(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None: ...
    def learn(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> None: ...
    def reset_trend(self, machines: np.ndarray, modes: np.ndarray) -> None: ...


class Outputs:
    """Per-row results of one `FleetModels.score` call, filled group by group and round by round.

    `contributions` holds the physics features' contributions; groups with other features write their top
    features (JSON) and leading sensor into `top` and `sensor` instead. `family` names the detector family
    that judged a row when it is not the spec's `detector` (e.g. "seasonal_span"; None: the spec's); the
    row's score, threshold and top features are then that family's."""

    def __init__(self, n: int, n_physics_features: int) -> None:
        self.score = np.zeros(n)
        self.threshold = np.full(n, np.nan)
        self.warming = np.ones(n, dtype=bool)
        self.anomaly = np.zeros(n, dtype=bool)
        self.alert = np.zeros(n, dtype=bool)
        self.contributions = np.zeros((n, n_physics_features))
        self.top = np.full(n, None, dtype=object)
        self.sensor = np.full(n, None, dtype=object)
        self.family = np.full(n, None, dtype=object)


class Judged:
    """Which of a round's rows were scored (`rows_scored`: positions in the round) and their contributions."""

    def __init__(self, rows_scored: np.ndarray, contributions: np.ndarray) -> None:
        self.rows_scored, self.contributions = rows_scored, contributions


class ModelGroup:
    """Threshold, warm-up and alerting state of the machines under one spec; subclasses add a detector."""

    # The per-machine arrays of `PER_MACHINE`, set (and grown) by name: [machines] or [machines x modes].
    # Annotations only (no class values), so a pickled group restores exactly as before.
    prev_end: np.ndarray
    prev_temperature: np.ndarray
    prev_mode: np.ndarray
    mode_streak: np.ndarray
    reference: np.ndarray
    learned: np.ndarray
    scored: np.ndarray
    anomalous_run: np.ndarray
    since_alert: np.ndarray
    episode_alerted: np.ndarray
    unlearned_run: np.ndarray
    detector: Detector

    def _init_state(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.ids: list[str] = []
        self.threshold = AdaptiveThreshold(
            spec.threshold_quantile, spec.threshold_margin, spec.threshold_floor, spec.threshold_rate, N_MODES
        )
        for name, (fill, dtype, per_mode) in PER_MACHINE.items():
            setattr(self, name, np.full((0, N_MODES) if per_mode else 0, fill, dtype=dtype))

    def _grow_more(self, size: int) -> None:
        """Grow what a subclass keeps per machine to `size` machines."""

    def _learn_more(self, ms: np.ndarray, modes: np.ndarray, scored_rows: np.ndarray, learn: np.ndarray) -> None:
        """A subclass's own learning from the learned rows (`scored_rows[learn]` of the round), before their
        `learned` counts go up."""

    def add(self, machine_id: str) -> int:
        local = len(self.ids)
        self.ids.append(machine_id)
        if local >= len(self.prev_end):
            size = max(16, 2 * len(self.prev_end))
            extra = size - len(self.prev_end)
            for name, (fill, dtype, per_mode) in PER_MACHINE.items():
                new_rows: np.ndarray = np.full((extra, N_MODES) if per_mode else extra, fill, dtype=dtype)
                setattr(self, name, np.concatenate((getattr(self, name), new_rows)))
            self.threshold.grow(size)
            self._grow_more(size)
        self.detector.grow(len(self.ids), self.ids)
        return local

    def judge(self, m: np.ndarray, mode: np.ndarray, x: np.ndarray, streak: np.ndarray, settling: np.ndarray,
              window_end: np.ndarray, rows: np.ndarray, out: Outputs) -> Judged:
        """Score rows `x` (one window per distinct machine `m`; transition rows are not scored), judge, learn
        and alert; results go to `out[rows]`. Returns what was scored, with each scored row's feature
        contributions."""
        spec = self.spec
        scored = mode != TRANSITION
        safe_mode = np.where(scored, mode, 0)
        restarted = scored & (streak == 1)
        self.detector.reset_trend(m[restarted], mode[restarted])
        run = np.zeros(len(m), dtype=np.int64)
        alert = np.zeros(len(m), dtype=bool)
        since = self.since_alert[m] + 1
        s = np.flatnonzero(scored)
        contributions = np.zeros((len(s), x.shape[1]))
        if len(s):
            ms, modes, xs = m[s], mode[s], x[s]
            score, contributions = self.detector.score(ms, modes, xs)
            self.detector.track(ms, modes, xs)
            warming = self.scored[ms] < spec.warmup_windows
            threshold = self.threshold.threshold(ms, modes)
            # Over the threshold counts during warm-up too (not learned, not an alert): a machine whose
            # first windows are already faulty must not learn the fault as its baseline.
            over = score > threshold
            anomalous = ~warming & over
            run[s] = np.where(over, self.anomalous_run[ms] + 1, 0)
            alert[s] = (anomalous & (run[s] >= spec.alert_min_windows) & ~self.episode_alerted[ms]
                        & (since[s] > spec.alert_cooldown_windows))
            held = score > spec.alert_learn_below * threshold
            held_run = np.where(held, self.unlearned_run[ms] + 1, 0)
            self.unlearned_run[ms] = held_run
            learn = (~held | (held_run >= spec.alert_relearn_after_windows)) & ~settling[s]
            if spec.alert_learn_in_warmup:
                learn |= warming & ~settling[s]
            self.detector.learn(ms[learn], modes[learn], xs[learn])
            self._learn_more(ms, modes, s, learn)
            self.learned[ms[learn], modes[learn]] += 1
            self.scored[ms] += 1
            steady = (~over | (warming & spec.alert_learn_in_warmup)) & ~settling[s]
            self.threshold.update(ms[steady], modes[steady], score[steady])
            rs = rows[s]
            out.score[rs] = score
            out.threshold[rs] = np.where(warming, np.nan, threshold)
            out.warming[rs], out.anomaly[rs] = warming, anomalous
        unscored = np.flatnonzero(~scored)
        if len(unscored):
            mu, modes = m[unscored], safe_mode[unscored]
            warming = self.scored[mu] < spec.warmup_windows
            out.warming[rows[unscored]] = warming
            out.threshold[rows[unscored]] = np.where(warming, np.nan, self.threshold.threshold(mu, modes))
        out.alert[rows] = alert
        self.anomalous_run[m] = run  # a transition or a settling window ends an anomalous run
        self.episode_alerted[m] = (run > 0) & (self.episode_alerted[m] | alert)
        self.since_alert[m] = np.where(alert, 0, since)
        self.prev_end[m] = window_end
        self.prev_mode[m] = mode
        self.mode_streak[m] = streak
        return Judged(s, contributions)
