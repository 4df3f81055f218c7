"""Operating-point regressions: the residual removes what speed and power explain, keeps what they don't;
feature weights; window modes of real (off-grid) streams."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from models.features import IDLE, MODES, RUNNING, TRANSITION, WindowColumns
from models.operating_point import OperatingPointRegression
from models.robust_zscore import RobustZScore
from plantpulse.schema import WINDOW_STATS_ARROW_SCHEMA

ONE, MODE0 = np.array([0]), np.array([0])


def load_swings(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(targets [n x 2], regressors [n x 2]) of a machine whose load wanders: log vibration follows
    1.2 log speed + 0.5 log power, log power follows 2 log speed; both with window noise 0.01."""
    load = 0.5 + 0.3 * np.sin(np.arange(n) / 15.0) + rng.normal(0, 0.05, n)
    log_krpm = np.log(2.0 * (0.6 + 0.4 * load))
    log_power = 2.0 * log_krpm + np.log(20.0) + rng.normal(0, 0.01, n)
    log_vibration = 0.3 + 1.2 * log_krpm + 0.5 * log_power + rng.normal(0, 0.01, n)
    return np.column_stack([log_vibration, log_power]), np.column_stack([log_krpm, log_power])


def fitted(rng: np.random.Generator, n: int = 400) -> OperatingPointRegression:
    fit = OperatingPointRegression(2, [[True, True], [True, False]], alpha=0.01, min_windows=10)
    fit.grow(1)
    y, x = load_swings(rng, n)
    for i in range(n):
        fit.learn(ONE, MODE0, y[i : i + 1], x[i : i + 1])
    return fit


def test_residuals_remove_load_swings_down_to_the_noise() -> None:
    rng = np.random.default_rng(3)
    fit = fitted(rng)
    y, x = load_swings(rng, 300)
    residuals = np.vstack([fit.residuals(ONE, MODE0, y[i : i + 1], x[i : i + 1]) for i in range(300)])
    raw_spread = y.std(axis=0)
    assert raw_spread[0] > 0.1, "the load swing moves raw vibration by 10x its noise"
    # Independent reference: the noise the generator added (0.01 for vibration; power's own noise 0.01).
    assert residuals[:, 0].std() == pytest.approx(0.01, rel=0.3)
    assert residuals[:, 1].std() == pytest.approx(0.01, rel=0.3)
    assert abs(residuals.mean(axis=0)).max() < 0.01


def test_a_fault_at_the_same_operating_point_stays_in_the_residual() -> None:
    rng = np.random.default_rng(4)
    fit = fitted(rng)
    y, x = load_swings(rng, 50)
    worn = y.copy()
    worn[:, 0] += np.log(1.3)  # 30 % more vibration at the same speed and power
    residual = np.vstack([fit.residuals(ONE, MODE0, worn[i : i + 1], x[i : i + 1]) for i in range(50)])
    assert np.median(residual[:, 0]) == pytest.approx(np.log(1.3), abs=0.01)
    assert abs(np.median(residual[:, 1])) < 0.01, "power is untouched"


def test_residuals_are_nan_until_min_windows_and_for_missing_targets() -> None:
    fit = OperatingPointRegression(1, [[True, True]], min_windows=3)
    fit.grow(1)
    y, x = np.array([[1.0]]), np.array([[0.5, np.nan]])  # a NaN regressor contributes nothing
    for _ in range(2):
        assert np.isnan(fit.residuals(ONE, MODE0, y, x)).all()
        fit.learn(ONE, MODE0, y, x)
    fit.learn(ONE, MODE0, y, x)
    assert fit.residuals(ONE, MODE0, y, x)[0, 0] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(fit.residuals(ONE, MODE0, np.array([[np.nan]]), x)).all()
    fit.learn(ONE, MODE0, np.array([[np.nan]]), x)
    assert fit.mean_y[0, 0, 0] == pytest.approx(1.0), "a NaN target is not learned"


def test_operating_point_pickles_exactly_and_grows_geometrically() -> None:
    rng = np.random.default_rng(5)
    fit = fitted(rng, 100)
    copy = pickle.loads(pickle.dumps(fit))
    y, x = load_swings(rng, 5)
    np.testing.assert_array_equal(fit.residuals(ONE, MODE0, y[:1], x[:1]), copy.residuals(ONE, MODE0, y[:1], x[:1]))
    sizes = set()
    for n in range(1, 1000):
        fit.grow(n)
        sizes.add(len(fit.count))
    assert len(sizes) <= 8, f"capacity grows by doubling, not one machine at a time: {sorted(sizes)}"


def test_distance_is_the_mahalanobis_distance_from_the_learned_operating_points() -> None:
    rng = np.random.default_rng(8)
    n = 60  # fewer than 1 / alpha windows: the fit is a plain running mean and (population) covariance
    fit = OperatingPointRegression(1, [[True, True]], alpha=0.001, ridge=0.0, ridge_floor=1e-12)
    fit.grow(1)
    x = rng.multivariate_normal([1.0, 3.0], [[0.04, 0.03], [0.03, 0.09]], n)
    for i in range(n):
        fit.learn(ONE, MODE0, np.array([[0.0]]), x[i : i + 1])
    points = np.array([[1.0, 3.0], [1.4, 3.0], [0.5, 3.9], [np.nan, 3.5]])
    mean, inverse = x.mean(axis=0), np.linalg.inv(np.cov(x.T, bias=True))
    offsets = points - mean
    offsets[3, 0] = 0.0  # a NaN regressor counts as at its mean (as in `residuals`)
    expected = [float(d @ inverse @ d) for d in offsets]
    got = fit.distance(np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64), points)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[0] < 0.1 and got[1] > 4, "the learned centre is near, 2 sd out is far"


def test_operating_point_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="operating_point: target_regressors"):
        OperatingPointRegression(2, [[True, True]])
    with pytest.raises(ValueError, match="operating_point: alpha"):
        OperatingPointRegression(1, [[True]], alpha=0.0)


def test_feature_weight_scales_its_contribution_only() -> None:
    plain = RobustZScore(2, min_deviation=0.1, prior=np.array([0.0, 0.0]), prior_windows=10)
    weighted = RobustZScore(2, min_deviation=0.1, prior=np.array([0.0, 0.0]), prior_windows=10,
                            weight=np.array([1.0, 1.5]))
    for detector in (plain, weighted):
        detector.grow(1)
    row = np.array([[0.4, 0.4]])
    _, z_plain = plain.score(ONE, MODE0, row)
    score, z = weighted.score(ONE, MODE0, row)
    assert z_plain[0].tolist() == pytest.approx([4.0, 4.0])
    assert z[0].tolist() == pytest.approx([4.0, 6.0]) and score[0] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="weight must be > 0"):
        RobustZScore(1, weight=0.0)


def window_row(first_ts_offset_ms: int, secs: dict[str, float], start: int = 0) -> dict:
    row = {f.name: [] if pa.types.is_map(f.type) else 0 for f in WINDOW_STATS_ARROW_SCHEMA}
    row.update(machine_id="M1", machine_type="pump", status_last="running", window_start=start,
               window_end=start + 10_000, first_ts=start + first_ts_offset_ms, last_ts=start + 9_900,
               temperature_mean=60.0, pressure_mean=5.0, pressure_min=4.9, vibration_mean=2.0, rpm_mean=2000.0,
               power_mean=30.0, **secs)
    return row


@pytest.mark.parametrize(
    ("offset_ms", "secs", "mode"),
    [
        (437, {"secs_running": 9.563}, RUNNING),  # readings off the window grid: held for all observed time
        (0, {"secs_running": 10.0}, RUNNING),
        (437, {"secs_idle": 9.563}, IDLE),
        (437, {"secs_running": 8.563, "secs_idle": 1.0}, TRANSITION),  # a start inside the window
        (6_000, {"secs_running": 4.0}, TRANSITION),  # came online late: too little of the window observed
    ],
)
def test_window_mode_is_judged_on_the_observed_part_of_the_window(offset_ms: int, secs: dict, mode: int) -> None:
    """A live stream's readings do not start on window boundaries (the bug this guards against: every
    window of such a stream was judged a transition, so no model ever left warm-up)."""
    table = pa.Table.from_pylist([window_row(offset_ms, secs)], schema=WINDOW_STATS_ARROW_SCHEMA)
    got = int(WindowColumns.of(table).mode[0])
    assert got == mode, (MODES[got] if got >= 0 else "transition", secs)
