"""The seasonal span detector (models/seasonal_residual.py) and its place beside the multivariate detector:
hand-computed forecaster, span and normaliser steps, silence before warm-up and on short 10 s streams,
snapshots, batch against one-by-one, the spec table, and an alert through `FleetModels`."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.replay_plots import SCORE_PANEL, plot_machine
from flows.replay_report import write_run
from models.fleet_models import FleetModels
from models.seasonal_residual import SeasonalResidual
from models.spec import ModelSpecs, load_model_specs
from plantpulse.schema import SENSORS, STATUSES, WINDOW_STATS_ARROW_SCHEMA

HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0
HALF_PER_S = 1.0 / math.log(2.0)  # a time constant that halves a weight per second
PACKAGED = "plantpulse/config/models.toml"


def tiny() -> SeasonalResidual:
    """Two 1 s slots per 2 s period; every weight halves per second; warm after one visit and 1 s of spread."""
    detector = SeasonalResidual(1, period_s=2, slot_s=1, level_tau_s=HALF_PER_S, profile_rate=1.0, min_visits=1,
                                spread_warmup_s=1, span_s=HALF_PER_S, span_min_samples=1,
                                normaliser_tau_s=HALF_PER_S, normaliser_warmup_s=0.5)
    detector.grow(1)
    return detector


def step(detector: SeasonalResidual, t: float, x: float, duration: float = 1.0) -> float:
    return float(detector.update(np.array([0]), np.array([t]), np.array([duration]), np.array([[x]]))[0, 0])


def test_forecaster_span_and_normaliser_by_hand() -> None:
    """Windows of 1 s at t = 0..4 with x = 10, 14, 11, 15, 14.25; decay d = 0.5 per second everywhere.

    t=0 slot 0: no level yet: L = 10, visit (slot 0) mean of x - L = 0.
    t=1 slot 1: slot 0's visit joins its profile, S0 = 0; slot 1 never seen: L = .5*10 + .5*14 = 12, visit 2.
    t=2 slot 0: S1 = 2; forecast 12 + S0 = 12, r = -1 (spread not yet known: z none), spread = |r| = 1;
        L = .5*12 + .5*11 = 11.5, visit mean 11 - 11.5 = -0.5.
    t=3 slot 1: S0 = -0.5; forecast 11.5 + 2 = 13.5, r = 1.5, z = 1.5 / (1.25*1) = 1.2; spread = 1 + (1.5 - 1)/2
        = 1.25; span mean 1.2 with n = 1, u = 1.2; the normaliser starts at s = 1.2 (no score yet);
        L = .5*11.5 + .5*(15 - 2) = 12.25, visit mean 15 - 12.25 = 2.75.
    t=4 slot 0: S1 = 2.75; forecast 12.25 - 0.5 = 11.75, r = 2.5, z = 2.5 / (1.25*1.25) = 1.6; spread = 1.25 +
        (2.5 - 1.25)/3; span: w = .5 + 1 = 1.5, w2 = .25 + 1 = 1.25, m = 1.2 + (1.6 - 1.2)/1.5, n = 1.5^2/1.25 = 1.8,
        u = m sqrt(1.8); normaliser weight .5 >= .5: score = u / (1.25*1.2), then s = 1.2 + (u - 1.2)/1.5.
    """
    detector = tiny()
    for t, x in enumerate([10.0, 14.0, 11.0, 15.0]):
        assert math.isnan(step(detector, float(t), x))
    state = detector.state
    assert state["level"][0, 0] == pytest.approx(12.25)
    assert detector.profile[0, 0].tolist() == pytest.approx([-0.5, 2.0])
    assert detector.visits[0, 0].tolist() == [2, 1]
    assert state["spread"][0, 0] == pytest.approx(1.25)
    assert state["span_mean"][0, 0] == pytest.approx(1.2) and state["norm_s"][0, 0] == pytest.approx(1.2)
    score = step(detector, 4.0, 14.25)
    m = 1.2 + (1.6 - 1.2) / 1.5
    u = m * math.sqrt(1.8)
    assert score == pytest.approx(u / (1.25 * 1.2))
    assert score == pytest.approx(1.31183, abs=1e-5)
    assert state["level"][0, 0] == pytest.approx(13.5) and detector.profile[0, 0, 1] == pytest.approx(2.75)
    assert state["spread"][0, 0] == pytest.approx(1.25 + 1.25 / 3)
    assert state["span_mean"][0, 0] == pytest.approx(m) and state["norm_s"][0, 0] == pytest.approx(1.2 + (u - 1.2) / 1.5)


def test_a_slot_visit_of_many_windows_joins_the_profile_as_its_time_weighted_mean() -> None:
    """Two 0.5 s windows in slot 0 (x = 10, 12; the level stays 10), then slot 1: S0 = mean(0, 2) = 1, not the last."""
    detector = SeasonalResidual(1, period_s=2, slot_s=1, level_tau_s=1e12, min_visits=1)
    detector.grow(1)
    for t, x in ((0.0, 10.0), (0.5, 12.0), (1.0, 10.0)):
        step(detector, t, x, duration=0.5)
    assert detector.profile[0, 0, 0] == pytest.approx(1.0)
    assert detector.visits[0, 0].tolist() == [1, 0]


def test_an_outage_does_not_count_as_history() -> None:
    """A window weighs at most one slot: a reading after a day's outage adds an hour to the spread's mass."""
    detector = SeasonalResidual(1)
    detector.grow(1)
    step(detector, 0.0, 1.0, duration=10.0)
    step(detector, DAY, 1.0, duration=10.0)
    assert detector.state["last_t"][0, 0] == DAY
    assert detector.state["open_weight"][0, 0] == HOUR  # a new visit, weighed one slot, not a day


def weekly(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Warm working days, cool nights and weekends, noise 0.3."""
    day, hour = (t // DAY).astype(int) % 7, (t % DAY) / HOUR
    return 20.0 + np.where((day < 5) & (hour >= 8) & (hour < 18), 4.0, 0.0) + rng.normal(0.0, 0.3, len(t))


def test_silent_until_two_weeks_and_the_warm_ups_have_passed() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 5 * WEEK, HOUR)
    x = weekly(rng, t)
    x[24 * 9:24 * 12] += 5.0  # a big shift in week 2: no profile yet to see it against
    detector = SeasonalResidual(1)
    detector.grow(1)
    scores = np.array([step(detector, ti, xi, duration=10.0) for ti, xi in zip(t, x)])
    first = int(np.argmax(np.isfinite(scores)))
    # two periods of visits, then 20 h of spread and 48 h of normaliser history at least
    assert first * HOUR >= 2 * WEEK + 68 * HOUR
    assert np.isnan(scores[:first]).all() and np.isfinite(scores[first:]).all()


def test_silent_on_two_days_of_10_s_windows_even_with_a_shift() -> None:
    rng = np.random.default_rng(4)
    t = np.arange(0.0, 2 * DAY, 10.0)
    x = 50.0 + np.sin(2 * np.pi * t / DAY) + rng.normal(0.0, 0.1, len(t))
    x[len(t) // 2:] += 3.0
    detector = SeasonalResidual(2)
    detector.grow(1)
    rows = np.column_stack([x, -x])
    for i in range(len(t)):
        assert np.isnan(detector.update(np.array([0]), t[i:i + 1], np.array([10.0]), rows[i:i + 1])).all()
    assert detector.state["spread_mass"].max() == 0.0  # no slot was ever forecast


def test_batch_rounds_equal_one_stream_at_a_time_and_snapshots_continue_exactly() -> None:
    rng = np.random.default_rng(5)
    options = {"period_s": 24.0, "slot_s": 1.0, "level_tau_s": 24.0, "span_s": 8.0, "normaliser_tau_s": 48.0,
               "normaliser_warmup_s": 6.0, "spread_tau_s": 30.0, "spread_warmup_s": 4.0}
    n_machines, n_windows = 3, 400
    t = np.arange(n_windows, dtype=float)
    x = np.stack([np.column_stack([np.sin(2 * np.pi * t / 24) * (m + 1) + rng.normal(0, 0.2, n_windows),
                                   rng.normal(m, 1.0, n_windows)]) for m in range(n_machines)])
    x[1, 300:, 0] += 2.0  # machine 1 shifts
    x[rng.random(x.shape) < 0.05] = np.nan
    batch = SeasonalResidual(2, **options)  # type: ignore[arg-type]
    batch.grow(n_machines)
    machines = np.array([2, 0, 1])  # any order of distinct machines in a round
    got = np.full((n_machines, n_windows), np.nan)
    snapshot = b""
    for i in range(n_windows):
        scores = batch.update(machines, np.full(n_machines, t[i]), np.ones(n_machines), x[machines, i])
        got[machines, i] = np.where(np.isfinite(scores).any(axis=1), np.nanmax(np.where(np.isfinite(scores), scores,
                                                                                        -np.inf), axis=1), 0.0)
        if i == 200:
            snapshot = pickle.dumps(batch)
    for m in range(n_machines):
        one = SeasonalResidual(2, **options)  # type: ignore[arg-type]
        for i in range(n_windows):
            row = {"a": x[m, i, 0], "b": x[m, i, 1]}
            assert one.score_one(row, t=t[i]) == got[m, i]
            one.learn_one(row, t=t[i])
    assert (got[1, 300:] > 2.576).any() and np.isfinite(got).all()
    restored = pickle.loads(snapshot)
    for i in range(201, n_windows):
        scores = restored.update(machines, np.full(n_machines, t[i]), np.ones(n_machines), x[machines, i])
        again = np.where(np.isfinite(scores).any(axis=1),
                         np.nanmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1), 0.0)
        assert again.tolist() == got[machines, i].tolist()
    for name, values in restored.state.items():
        assert np.array_equal(values, batch.state[name], equal_nan=True), name
    assert np.array_equal(restored.profile, batch.profile) and np.array_equal(restored.visits, batch.visits)


def test_wrong_input_and_parameters_are_refused_with_their_names() -> None:
    detector = SeasonalResidual(1)
    detector.grow(2)
    with pytest.raises(ValueError, match="rows must be"):
        detector.update(np.array([0]), np.array([0.0]), np.array([1.0]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="at most once"):
        detector.update(np.array([0, 0]), np.zeros(2), np.ones(2), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="window lengths > 0"):
        detector.update(np.array([0]), np.array([0.0]), np.array([0.0]), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="span_s = 0"):
        SeasonalResidual(1, span_s=0)
    with pytest.raises(ValueError, match="whole number of slots"):
        SeasonalResidual(1, period_s=1000.0, slot_s=300.0)
    # a window not after the channel's previous one is ignored, not learned
    step(detector, 100.0, 1.0)
    assert math.isnan(step(detector, 100.0, 5.0)) and detector.state["level"][0, 0] == 1.0


def test_the_packaged_spec_enables_it_for_channels_only_and_checks_its_table() -> None:
    specs = load_model_specs(PACKAGED)
    assert specs.default.seasonal_enabled and not specs.for_type("pump").seasonal_enabled
    assert specs.default.seasonal_options() == {
        "period_s": WEEK, "slot_s": HOUR, "level_tau_s": WEEK, "profile_rate": 0.2, "min_visits": 2,
        "span_s": 4 * DAY, "normaliser_tau_s": 14 * DAY, "normaliser_warmup_s": 48 * HOUR}
    assert specs.default.seasonal_threshold == pytest.approx(2.5758, abs=1e-4)  # Phi^-1(0.995) = 2.57583
    assert specs.default.seasonal_cooldown_s == WEEK
    channels = {"features": "channels", "detector": "multivariate"}
    with pytest.raises(ValueError, match=r'seasonal.enabled = True: the seasonal detector needs features = "channels"'):
        ModelSpecs({"default": {"seasonal": {"enabled": True}}})
    with pytest.raises(ValueError, match=r"\[default\]: seasonal: seasonal_residual: span_s = -1.0: must be > 0"):
        ModelSpecs({"default": {**channels, "seasonal": {"enabled": True, "span_s": -1}}})
    with pytest.raises(ValueError, match="need threshold > 0"):
        ModelSpecs({"default": {**channels, "seasonal": {"enabled": True, "threshold": 0}}})
    with pytest.raises(ValueError, match="seasonal.min_visits = 'two' is not a int"):
        ModelSpecs({"default": {**channels, "seasonal": {"enabled": True, "min_visits": "two"}}})


def hourly_windows(values: np.ndarray, start_s: float = 0.0, step_s: float = HOUR, length_s: float = 10.0) -> pa.Table:
    """One machine's window stats: one reading of channel "value" per window, as NAB replays."""
    n = len(values)
    starts = (start_s + np.arange(n) * step_s) * 1000
    columns: dict[str, object] = {f.name: pa.nulls(n, f.type) for f in WINDOW_STATS_ARROW_SCHEMA}
    columns |= {"machine_id": pa.array(["AC1"] * n), "machine_type": pa.array(["unknown"] * n),
                "window_start": pa.array(starts.astype(np.int64)).cast(pa.timestamp("ms", "UTC")),
                "window_end": pa.array((starts + length_s * 1000).astype(np.int64)).cast(pa.timestamp("ms", "UTC")),
                "readings": pa.array(np.ones(n, dtype=np.int64)),
                # a held status: not a transition window
                **{f"secs_{status}": pa.array(np.full(n, length_s if status == "running" else 0.0)) for status in STATUSES},
                **{f"{s}_count": pa.array(np.zeros(n, dtype=np.int64)) for s in SENSORS},
                "channel_count": pa.array([[("value", 1)]] * n, WINDOW_STATS_ARROW_SCHEMA.field("channel_count").type)}
    for stat in ("mean", "std", "last", "min", "max"):
        kind = WINDOW_STATS_ARROW_SCHEMA.field(f"channel_{stat}").type
        columns[f"channel_{stat}"] = pa.array([[("value", float(v if stat != "std" else 0.0))] for v in values], kind)
    return pa.table(columns, schema=WINDOW_STATS_ARROW_SCHEMA)


def test_through_the_fleet_models_a_shift_of_days_alerts_as_its_own_family() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(0.0, 6 * WEEK, HOUR)
    x = weekly(rng, t)
    x[24 * 32:] += 1.0  # from day 32: a degree warm, within each hour's normal swing
    models = FleetModels(load_model_specs(PACKAGED))
    scores = models.score(hourly_windows(x), now_ms=0).scores
    detector = np.array(scores["detector"].to_pylist())
    alerts = np.flatnonzero(scores["alert_raised"].to_numpy(zero_copy_only=False))
    span_alerts = [i for i in alerts if detector[i] == "seasonal_span"]
    assert len(span_alerts) == 1 and span_alerts[0] >= 24 * 32  # one alert: the 7-day cooldown holds
    row = scores.slice(span_alerts[0], 1).to_pylist()[0]
    assert row["threshold"] == pytest.approx(2.5758) and row["score"] > row["threshold"] and row["is_anomaly"]
    assert row["top_features"].startswith('[["value:span", ')
    assert not (detector[: 24 * 14] == "seasonal_span").any()  # never before two weeks
    restored = pickle.loads(pickle.dumps(models))  # the family's state snapshots with the rest
    more = weekly(rng, np.arange(6 * WEEK, 7 * WEEK, HOUR)) + 1.0
    a = models.score(hourly_windows(more, start_s=6 * WEEK), now_ms=0).scores
    b = restored.score(hourly_windows(more, start_s=6 * WEEK), now_ms=0).scores
    assert a.equals(b)


def test_through_the_fleet_models_two_days_of_10_s_windows_stay_the_multivariate_detectors() -> None:
    rng = np.random.default_rng(8)
    n = int(2 * DAY / 10)
    x = 50.0 + rng.normal(0.0, 0.5, n)
    x[n // 2:] += 0.8  # a lasting shift
    models = FleetModels(load_model_specs(PACKAGED))
    scores = models.score(hourly_windows(x, step_s=10.0), now_ms=0).scores
    assert set(scores["detector"].to_pylist()) == {"multivariate"}
    seasonal = models.groups["default"].seasonal  # type: ignore[union-attr]
    assert seasonal is not None and seasonal.state["spread_mass"].max() == 0.0  # never forecast, never scored


def test_the_replay_report_and_plot_name_the_family_that_alerted(tmp_path: Path) -> None:
    from tests.test_replay_report import tables

    stats, scores, labels = tables()
    rows = scores.to_pylist()
    mine = [i for i, r in enumerate(rows) if r["machine_id"] == "M1"]
    rows[mine[-5]] |= {"detector": "seasonal_span", "score": 2.7, "threshold": 2.5758, "is_anomaly": True,
                       "alert_raised": True, "top_features": '[["flow:span", 2.7]]'}
    scores = pa.Table.from_pylist(rows, schema=scores.schema)
    layout = plot_machine(tmp_path / "m1.png", "M1", scores, stats, labels)
    assert layout.panels[-1] == SCORE_PANEL and (tmp_path / "m1.png").stat().st_size > 0
    write_run(tmp_path / "run-01", {}, scores, stats, labels, None, 100, 1.0, scoring="nab", benchmark=None)
    metrics = json.loads((tmp_path / "run-01" / "metrics.json").read_text())
    main = rows[0]["detector"]
    assert metrics["alerts_by_detector"]["seasonal_span"] == 1 and set(metrics["alerts_by_detector"]) <= {main,
                                                                                                        "seasonal_span"}
    assert "by detector family: " in (tmp_path / "run-01" / "report.md").read_text()
