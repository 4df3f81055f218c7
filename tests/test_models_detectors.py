"""Per-detector behaviour: scores rise on a shift, steady input stays below threshold, pickling is exact."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from models.half_space_trees import HalfSpaceTreesDetector, HalfSpaceTreesFleet
from models.robust_zscore import RobustZScore
from models.threshold import AdaptiveThreshold

M2 = np.array([0, 1])
MODE0 = np.array([0, 0])


def steady_rows(rng: np.random.Generator, n: int = 2) -> np.ndarray:
    return np.column_stack([rng.normal(10, 0.1, n), rng.normal(5, 0.05, n)])


def test_robust_zscore_rises_on_a_shift_in_the_bad_direction_only() -> None:
    detector = RobustZScore(2, alpha=0.05, min_deviation=0.01, direction=np.array([1.0, -1.0]))
    detector.grow(2)
    rng = np.random.default_rng(1)
    for _ in range(200):
        detector.learn(M2, MODE0, steady_rows(rng))
    steady, _ = detector.score(M2, MODE0, steady_rows(rng))
    up, z = detector.score(M2, MODE0, np.array([[12.0, 5.0], [10.0, 4.0]]))
    down, _ = detector.score(M2, MODE0, np.array([[8.0, 5.0], [10.0, 6.0]]))
    assert steady.max() < 4
    assert up.min() > 10, "feature 0 up and feature 1 down are the bad directions"
    assert down.max() < 4, "the good directions do not score"
    assert z[0].argmax() == 0 and z[1].argmax() == 1, "contributions name the feature that moved"


def test_robust_zscore_skips_missing_features_and_uses_priors() -> None:
    detector = RobustZScore(2, min_deviation=0.1, prior=np.array([0.0, np.nan]), prior_windows=10, min_count=5)
    detector.grow(1)
    one, mode = np.array([0]), np.array([0])
    score, z = detector.score(one, mode, np.array([[2.0, 100.0]]))
    assert z[0, 0] == pytest.approx(2.0 / 0.1) and z[0, 1] == 0, "prior scores at once, unlearned feature not"
    detector.learn(one, mode, np.array([[0.0, np.nan]]))
    assert detector.count[0, 0].tolist() == [11, 0], "a NaN feature is not learned"


def test_robust_zscore_pickle_round_trip_gives_identical_scores() -> None:
    detector = RobustZScore(2, alpha=0.1, min_deviation=0.01, direction=1.0, trend_weight=np.array([1.5, 0.0]))
    detector.grow(2)
    rng = np.random.default_rng(2)
    for _ in range(30):
        x = steady_rows(rng)
        detector.track(M2, MODE0, x)
        detector.learn(M2, MODE0, x)
    clone = pickle.loads(pickle.dumps(detector))
    for _ in range(20):
        x = steady_rows(rng) + rng.normal(0, 0.5, (2, 2))
        assert np.array_equal(detector.score(M2, MODE0, x)[0], clone.score(M2, MODE0, x)[0])
        for copy in (detector, clone):
            copy.track(M2, MODE0, x)
            copy.learn(M2, MODE0, x)
    assert np.array_equal(detector.trend, clone.trend) and detector.trend[:2, 0, 0].any()


def test_robust_zscore_trend_is_the_ewma_of_directed_z_in_its_own_standard_deviations() -> None:
    alpha, weight = 0.4, 2.0
    # Prior level 0 with deviation 1 / 1.25, never learned: the scale is 1, so a row's z along direction -1 is -x.
    detector = RobustZScore(1, min_deviation=1.0, direction=-1.0, prior=np.array([0.0]), prior_windows=1,
                            trend_alpha=alpha, trend_weight=weight)
    detector.grow(1)
    one, mode = np.array([0]), np.array([0])
    ewma = 0.0
    for x in [-1.0, -2.0, 0.5, -2.5, -2.5, -2.5, math.nan, -2.5, 3.0]:
        row = np.array([[x]])
        if math.isnan(x):
            expected = 0.0  # not scored, and the trend holds
        else:
            ewma += alpha * (-x - ewma)
            expected = max(-x, weight * max(ewma, 0.0) / math.sqrt(alpha / (2 - alpha)), 0.0)
        score, _ = detector.score(one, mode, row)
        assert detector.score(one, mode, row)[0] == pytest.approx(score), "score alone does not move the trend"
        detector.track(one, mode, row)
        assert score[0] == pytest.approx(expected), f"row {x}"
        assert detector.trend[0, 0, 0] == pytest.approx(ewma)
    detector.reset_trend(one, mode)
    assert detector.trend[0, 0, 0] == 0.0 and detector.score(one, mode, np.array([[0.0]]))[0][0] == 0.0


def test_robust_zscore_trend_needs_a_direction_and_a_valid_rate() -> None:
    with pytest.raises(ValueError, match="a trend needs the feature's fault direction"):
        RobustZScore(2, direction=np.array([1.0, 0.0]), trend_weight=1.0)
    with pytest.raises(ValueError, match="need 0 < trend_alpha <= 1"):
        RobustZScore(1, direction=1.0, trend_alpha=0.0, trend_weight=1.0)
    RobustZScore(2, direction=np.array([1.0, 0.0]), trend_weight=np.array([1.0, 0.0]))  # no trend where none


def test_robust_zscore_river_interface_checks_feature_names() -> None:
    detector = RobustZScore(1)
    detector.learn_one({"a": 1.0})
    with pytest.raises(ValueError, match=r"expected features \['a'\]"):
        detector.score_one({"b": 1.0})


def test_half_space_trees_scores_a_shift_higher_and_round_trips_through_pickle() -> None:
    fleet = HalfSpaceTreesFleet(["a", "b"], direction=np.array([1.0, 1.0]), warmup=20, window_size=20, seed=3)
    fleet.grow(2, ["M1", "M2"])
    rng = np.random.default_rng(3)
    for _ in range(100):
        fleet.learn(M2, MODE0, steady_rows(rng))
    clone = pickle.loads(pickle.dumps(fleet))
    steady, _ = fleet.score(M2, MODE0, np.array([[10.0, 5.0], [10.0, 5.0]]))
    shifted, contributions = fleet.score(M2, MODE0, np.array([[14.0, 5.0], [10.0, 5.0]]))
    assert shifted[0] > steady[0] and contributions[0].argmax() == 0
    for _ in range(20):
        x = steady_rows(rng)
        assert np.array_equal(fleet.score(M2, MODE0, x)[0], clone.score(M2, MODE0, x)[0])
        fleet.learn(M2, MODE0, x)
        clone.learn(M2, MODE0, x)


def test_half_space_trees_seeds_by_machine_key_not_by_order() -> None:
    a = HalfSpaceTreesFleet(["f"], direction=np.array([1.0]), warmup=5, window_size=5)
    b = HalfSpaceTreesFleet(["f"], direction=np.array([1.0]), warmup=5, window_size=5)
    a.grow(2, ["M1", "M2"])
    b.grow(1, ["M2"])
    rng = np.random.default_rng(4)
    for value in rng.normal(1.0, 0.1, 40):
        a.learn(np.array([1]), np.array([0]), np.array([[value]]))
        b.learn(np.array([0]), np.array([0]), np.array([[value]]))
    probe = np.array([[1.5]])
    assert a.score(np.array([1]), np.array([0]), probe)[0] == b.score(np.array([0]), np.array([0]), probe)[0]


def test_half_space_trees_detector_needs_a_warmup_of_two() -> None:
    with pytest.raises(ValueError, match="warmup must be >= 2 windows to learn a range, got 1"):
        HalfSpaceTreesDetector(["f"], warmup=1)


def test_adaptive_threshold_tracks_the_quantile_and_keeps_its_floor() -> None:
    threshold = AdaptiveThreshold(quantile=0.95, margin=1.0, floor=0.5, rate=0.05)
    threshold.grow(2)
    rng = np.random.default_rng(5)
    for _ in range(4000):
        threshold.update(M2, MODE0, np.array([rng.uniform(0, 1), rng.uniform(0, 0.1)]))
    value = threshold.threshold(M2, MODE0)
    assert 0.85 < value[0] < 1.05 and value[1] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"quantile": 1.0}, "quantile must be in"), ({"margin": 0}, "margin must be > 0"),
     ({"floor": -1}, "floor must be >= 0"), ({"rate": 1.5}, "rate must be in")],
)
def test_adaptive_threshold_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveThreshold(**kwargs)
