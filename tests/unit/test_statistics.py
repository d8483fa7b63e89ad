from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kbrefresh.errors import ConfigError
from kbrefresh.gate.statistics import gap_difference, hit_difference, mean_difference


def hits(total: int, ones: int) -> np.ndarray:
    return np.array([1.0] * ones + [0.0] * (total - ones))


def test_hit_difference_of_a_128_query_slice_losing_38_queries() -> None:
    live = hits(128, 100)
    candidate = live.copy()
    candidate[:38] = 0.0
    diff = hit_difference(live, candidate)
    # 38 discordant pairs, all live-only: Clopper–Pearson for 38/38 is [0.025^(1/38), 1]
    # = [0.9074884, 1]; the difference is 38 (1 − 2p) / 128 over that range.
    assert (diff.live, diff.candidate, diff.n) == (100 / 128, 62 / 128, 128)
    assert diff.delta == pytest.approx(-38 / 128)
    assert diff.low == pytest.approx(-38 / 128)
    assert diff.high == pytest.approx(38 * (1 - 2 * 0.025 ** (1 / 38)) / 128)
    assert diff.high == pytest.approx(-0.2419455, abs=1e-7)


def test_hit_difference_of_a_six_query_slice_losing_one() -> None:
    live = hits(6, 6)
    candidate = hits(6, 5)
    diff = hit_difference(live, candidate)
    # 1 discordant pair: p in [0.025, 1] -> difference in [−1/6, (1 − 0.05)/6].
    assert diff.delta == pytest.approx(-1 / 6)
    assert (diff.low, diff.high) == pytest.approx((-1 / 6, 0.95 / 6))


def test_hit_difference_with_pairs_both_ways_matches_the_sign_test_interval() -> None:
    live = np.array([1, 1, 1, 0] + [1] * 10 + [0] * 6, dtype=float)
    candidate = np.array([0, 0, 0, 1] + [1] * 10 + [0] * 6, dtype=float)
    diff = hit_difference(live, candidate, confidence=0.9)
    # b = 3 live-only, c = 1 candidate-only, n = 20.
    p_low = stats.beta.ppf(0.05, 3, 2)  # Clopper–Pearson bounds of 3/4 at 90%
    p_high = stats.beta.ppf(0.95, 4, 1)
    assert p_high == pytest.approx(0.95 ** (1 / 4))
    assert diff.delta == pytest.approx(-2 / 20)
    assert (diff.low, diff.high) == pytest.approx((4 * (1 - 2 * p_high) / 20, 4 * (1 - 2 * p_low) / 20))


def test_hit_difference_without_discordant_pairs_is_zero_wide() -> None:
    diff = hit_difference(hits(10, 7), hits(10, 7))
    assert (diff.delta, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_hit_difference_refuses_scores_other_than_zero_or_one() -> None:
    with pytest.raises(ConfigError, match=r"^hit scores must be 0 or 1 for the exact paired interval$"):
        hit_difference(np.array([0.5]), np.array([1.0]))


def test_mean_difference_is_close_to_the_normal_interval_on_many_queries() -> None:
    rng = np.random.default_rng(1)
    live = rng.random(700)
    candidate = live + rng.normal(0, 0.1, 700) - 0.01
    diff = mean_difference(live, candidate, seed=3)
    d = candidate - live
    half = 1.959964 * d.std(ddof=1) / np.sqrt(700)
    assert diff.delta == pytest.approx(d.mean())
    assert diff.low == pytest.approx(d.mean() - half, abs=0.001)
    assert diff.high == pytest.approx(d.mean() + half, abs=0.001)


def test_mean_difference_is_seeded() -> None:
    rng = np.random.default_rng(2)
    live, candidate = rng.random(50), rng.random(50)
    first = mean_difference(live, candidate, seed=5)
    assert mean_difference(live, candidate, seed=5) == first
    assert mean_difference(live, candidate, seed=6) != first


def test_mean_difference_of_a_constant_shift_is_exact() -> None:
    live = np.array([0.2, 0.4, 0.6])
    diff = mean_difference(live, live - 0.1)
    assert (diff.delta, diff.low, diff.high) == pytest.approx((-0.1, -0.1, -0.1))


def test_mean_difference_refuses_unpaired_arrays() -> None:
    with pytest.raises(ConfigError, match=r"^paired scores need two 1-d arrays of one length"):
        mean_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ConfigError, match=r"^no paired scores to compare"):
        mean_difference(np.zeros(0), np.zeros(0))


def test_gap_difference_of_a_slice_that_fell_behind() -> None:
    slices = ["a"] * 40 + ["b"] * 40
    live = np.concatenate([hits(40, 32), hits(40, 32)])  # 0.8 and 0.8: gap 0
    candidate = np.concatenate([hits(40, 32), hits(40, 20)])  # 0.8 and 0.5: gap 0.3
    diff = gap_difference(slices, live, candidate, seed=1)
    assert (diff.live, diff.candidate, diff.delta) == pytest.approx((0.0, 0.3, 0.3))
    assert 0.1 < diff.low < 0.3 < diff.high


def test_gap_difference_with_the_same_scores_is_zero_wide() -> None:
    slices = ["a"] * 3 + ["b"] * 3
    live = np.array([1.0, 1, 0, 1, 0, 0])
    diff = gap_difference(slices, live, live.copy())
    assert (diff.live, diff.delta, diff.low, diff.high) == pytest.approx((1 / 3, 0, 0, 0))


def test_gap_difference_needs_two_slices() -> None:
    with pytest.raises(ConfigError, match=r"^a slice gap needs at least two slices, got \['a'\]$"):
        gap_difference(["a", "a"], np.zeros(2), np.zeros(2))
