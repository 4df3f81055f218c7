"""The multivariate (shrinkage Mahalanobis) detector: learn/score, NaN, new features, pickling, scale
invariance, and a correlated-sensor fault that a per-feature robust z-score misses."""

from __future__ import annotations

import math
import pickle
from statistics import NormalDist

import numpy as np
import pytest

from models.multivariate import Multivariate, wilson_hilferty
from models.robust_zscore import RobustZScore
from models.threshold import AdaptiveThreshold

ONE, MODE0 = np.array([0]), np.array([0])
NORMAL = NormalDist()


def chi2_quantile(p: float, k: int) -> float:
    """The p-quantile of chi-square(k), from its closed-form distribution function (k = 1 or even k)."""
    if k == 1:
        return NORMAL.inv_cdf((1 + p) / 2) ** 2

    def cdf(x: float) -> float:
        return 1 - math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(k // 2))
    lo, hi = 0.0, 10.0 * k + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return lo


def correlated_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two features that follow a shared load (correlation ~0.99) and one independent feature."""
    load = rng.normal(0.0, 1.0, n)
    return np.column_stack([10.0 + load + rng.normal(0, 0.1, n), 50.0 + 3.0 * load + rng.normal(0, 0.3, n),
                            rng.normal(-5.0, 2.0, n)])


def trained(rows: np.ndarray, **kwargs: float) -> Multivariate:
    detector = Multivariate(rows.shape[1], **kwargs)  # type: ignore[arg-type]
    detector.grow(1)
    for row in rows:
        detector.learn(ONE, MODE0, row[None, :])
    return detector


def test_learned_moments_match_numpy_and_healthy_scores_are_about_standard_normal() -> None:
    rng = np.random.default_rng(0)
    rows = correlated_rows(rng, 3000)
    detector = trained(rows[:50], alpha=0.001)  # within 1/alpha windows: plain running moments
    assert np.allclose(detector.mean[0, 0], rows[:50].mean(axis=0))
    assert np.allclose(detector.cov[0, 0], np.cov(rows[:50].T, bias=True))
    detector = trained(rows[:2000], alpha=0.001, shrinkage=0.0)
    scores, _ = detector.score(np.zeros(1000, dtype=np.int64), np.zeros(1000, dtype=np.int64), rows[2000:])
    # d2 of healthy rows is ~chi-square(3); Wilson-Hilferty makes it ~N(0, 1)
    assert abs(np.mean(scores)) < 0.15 and 0.85 < np.std(scores) < 1.15
    assert np.mean(scores > NORMAL.inv_cdf(0.99)) < 0.02


def test_wilson_hilferty_matches_the_chi_square_quantiles() -> None:
    for k in (1, 2, 8, 40):
        for p in (0.5, 0.99, 0.9999):
            assert wilson_hilferty(np.array([chi2_quantile(p, k)]), np.array([k]))[0] == pytest.approx(
                NORMAL.inv_cdf(p), rel=0.05, abs=0.1)


def test_a_correlated_sensor_fault_is_caught_where_a_univariate_score_stays_low() -> None:
    rng = np.random.default_rng(1)
    rows = correlated_rows(rng, 400)[:, :2]
    multivariate = trained(rows, alpha=0.01)
    univariate = RobustZScore(2, alpha=0.01, direction=0.0)
    univariate.grow(1)
    threshold = AdaptiveThreshold(quantile=0.99, margin=1.5, floor=4.0, rate=0.05)
    threshold.grow(1)
    for row in correlated_rows(rng, 400)[:, :2]:
        univariate.learn(ONE, MODE0, row[None, :])
        threshold.update(ONE, MODE0, multivariate.score(ONE, MODE0, row[None, :])[0])
    mean, sd = rows.mean(axis=0), rows.std(axis=0)
    apart = mean + np.array([1.5, -1.5]) * sd  # each within 1.5 sigma of its own mean, but against each other
    mv_score, contributions = multivariate.score(ONE, MODE0, apart[None, :])
    uv_score, _ = univariate.score(ONE, MODE0, apart[None, :])
    limit = threshold.threshold(ONE, MODE0)[0]
    assert mv_score[0] > 2 * limit, (mv_score, limit)
    assert uv_score[0] < 2.5 and uv_score[0] < limit
    assert (contributions >= 0).all() and contributions.sum() == pytest.approx(mv_score[0])
    together = mean + np.array([1.5, 1.5]) * sd  # the same distances, along the learned correlation
    assert multivariate.score(ONE, MODE0, together[None, :])[0][0] < limit


def test_scores_do_not_depend_on_units_or_offsets() -> None:
    rng = np.random.default_rng(2)
    rows, probe = correlated_rows(rng, 300), correlated_rows(rng, 50) + rng.normal(0, 2, (50, 3))
    scale, shift = np.array([1000.0, 1.0, 0.001]), np.array([-7.0e4, 3.0, 1.0e3])
    plain, moved = trained(rows, alpha=0.02), trained(rows * scale + shift, alpha=0.02)
    n = np.zeros(50, dtype=np.int64)
    a, ca = plain.score(n, n, probe)
    b, cb = moved.score(n, n, probe * scale + shift)
    assert np.allclose(a, b, atol=1e-6) and np.allclose(ca, cb, atol=1e-6)


def test_missing_and_constant_features_are_left_out_without_nan_or_inf() -> None:
    rng = np.random.default_rng(3)
    rows = correlated_rows(rng, 200)
    rows[:, 2] = 7.25  # a constant feature (the spread of one-reading windows)
    detector = trained(rows, alpha=0.02)
    n = np.zeros(3, dtype=np.int64)
    probe = np.array([[10.0, 50.0, 7.25], [10.0, 50.0, 99.0], [10.0, np.nan, 99.0]])
    scores, contributions = detector.score(n, n, probe)
    assert np.isfinite(scores).all() and np.isfinite(contributions).all()
    assert scores[0] == pytest.approx(scores[1]), "a constant feature is not scored"
    assert (contributions[:, 2] == 0).all() and contributions[2, 1] == 0
    # Only the known feature counts: the score is the one-feature z of feature 0
    z0 = (10.0 - detector.mean[0, 0, 0]) / np.sqrt(detector.cov[0, 0, 0, 0])
    assert scores[2] == pytest.approx(wilson_hilferty(np.array([z0 * z0]), np.array([1]))[0])
    before = detector.mean[0, 0].copy(), detector.cov[0, 0].copy(), detector.count[0, 0].copy()
    detector.learn(ONE, MODE0, np.array([[11.0, np.nan, 7.25]]))
    assert detector.count[0, 0].tolist() == [before[2][0] + 1, before[2][1], before[2][2] + 1]
    assert detector.mean[0, 0, 1] == before[0][1] and detector.cov[0, 0, 1, 1] == before[1][1, 1]
    assert detector.cov[0, 0, 0, 1] == before[1][0, 1], "a pair with a missing feature keeps its covariance"
    assert detector.score(ONE, MODE0, np.full((1, 3), np.nan))[0][0] == 0.0


def test_added_features_start_unlearned_and_scores_of_the_others_hold() -> None:
    rng = np.random.default_rng(4)
    rows = correlated_rows(rng, 200)
    detector = trained(rows[:, :2], alpha=0.02, shrinkage=0.1)
    probe = np.array([[11.0, 52.0]])
    before = detector.score(ONE, MODE0, probe)[0][0]
    detector.add_features(1)
    assert detector.n_features == 3 and detector.count[0, 0].tolist() == [200, 200, 0]
    assert detector.score(ONE, MODE0, np.array([[11.0, 52.0, 123.0]]))[0][0] == pytest.approx(before)
    for row in rows[:50]:
        detector.learn(ONE, MODE0, row[None, :])
    assert detector.count[0, 0].tolist() == [250, 250, 50]
    assert detector.score(ONE, MODE0, np.array([[10.0, 50.0, 30.0]]))[0][0] > 5, "the new feature scores now"


def test_pickle_round_trip_gives_identical_scores_afterwards() -> None:
    rng = np.random.default_rng(5)
    machines, modes = np.array([0, 1, 2]), np.array([0, 1, 0])
    detector = Multivariate(3, n_modes=2, alpha=0.05, smooth=0.5)
    detector.grow(3)
    for _ in range(40):
        x = correlated_rows(rng, 3)
        detector.track(machines, modes, x)
        detector.learn(machines, modes, x)
    clone = pickle.loads(pickle.dumps(detector))
    for _ in range(20):
        x = correlated_rows(rng, 3) + rng.normal(0, 1, (3, 3))
        a, b = detector.score(machines, modes, x), clone.score(machines, modes, x)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for copy in (detector, clone):
            copy.track(machines, modes, x)
            copy.learn(machines, modes, x)


def test_machines_and_modes_are_independent_and_batched_like_one_by_one() -> None:
    rng = np.random.default_rng(6)
    batch = Multivariate(3, n_modes=2)
    batch.grow(4)
    singles = [Multivariate(3) for _ in range(4)]
    for single in singles:
        single.grow(1)
    machines, modes = np.arange(4), np.array([0, 1, 1, 0])
    for _ in range(30):
        x = correlated_rows(rng, 4) * np.array([[1.0], [2.0], [0.5], [3.0]])
        batch.learn(machines, modes, x)
        for i, single in enumerate(singles):
            single.learn(ONE, MODE0, x[i:i + 1])
    probe = correlated_rows(rng, 4) + 1.0
    scores = batch.score(machines, modes, probe)[0]
    assert np.allclose(scores, [singles[i].score(ONE, MODE0, probe[i:i + 1])[0][0] for i in range(4)])
    assert (batch.count[machines, 1 - modes] == 0).all(), "the other mode learned nothing"


def test_smoothing_adds_up_a_small_persistent_shift() -> None:
    rng = np.random.default_rng(7)
    rows = correlated_rows(rng, 300)
    plain, smoothed = trained(rows, alpha=0.01), trained(rows, alpha=0.01, smooth=0.2)
    shifted = rows.mean(axis=0) + np.array([0.0, 0.0, 2.0 * rows[:, 2].std()])
    for _ in range(20):
        smoothed.track(ONE, MODE0, shifted[None, :])
    # 20 windows at a steady 2-sigma shift: the MEWMA sits at ~2 sigma, i.e. 2 * sqrt((2 - 0.2) / 0.2) = 6 z
    assert smoothed.score(ONE, MODE0, shifted[None, :])[0][0] > 2 * plain.score(ONE, MODE0, shifted[None, :])[0][0]
    smoothed.reset_trend(ONE, MODE0)
    assert not smoothed.trend.any()


@pytest.mark.parametrize("kwargs, name", [({"n_features": 0}, "n_features"), ({"alpha": 0.0}, "alpha"),
                                          ({"shrinkage": 1.5}, "shrinkage"), ({"min_count": 1}, "min_count"),
                                          ({"smooth": 0.0}, "smooth"), ({"n_modes": 0}, "n_modes")])
def test_bad_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    args = {"n_features": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        Multivariate(**args)


def test_river_interface_and_added_feature_names() -> None:
    detector = Multivariate(1, alpha=0.1)
    assert detector.score_one({"a": 1.0}) == 0.0
    for v in [1.0, 1.2, 0.8, 1.1, 0.9] * 10:
        detector.learn_one({"a": v})
    assert detector.score_one({"a": 1.0}) < 1 < 5 < detector.score_one({"a": 3.0})
    detector.add_features(1)
    detector.learn_one({"b": 2.0, "a": 1.0})
    assert detector.count[0, 0].tolist() == [51, 1]
    with pytest.raises(ValueError, match="expected features"):
        detector.score_one({"a": 1.0})
