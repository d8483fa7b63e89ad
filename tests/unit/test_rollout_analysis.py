"""Rollout analysis: significance tests pinned to hand-computed values, Argo-style checks."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.release import analysis as an
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.release.traffic import WindowSamples

T0 = datetime(2026, 11, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 2, tzinfo=UTC)


def samples(n: int = 100, *, failed: int = 0, latency: float = 10.0, sim: float = 0.8,
            empty: int = 0, ratings: tuple[float, ...] = (), thumbs: tuple[bool, ...] = (),
            version: int = 2) -> WindowSamples:
    fails = np.arange(n) < failed
    empties = (np.arange(n) >= failed) & (np.arange(n) < failed + empty)
    ok = n - failed - empty
    return WindowSamples(version, T0, T1, np.full(n, latency), fails, empties,
                         np.full(ok, sim), np.array(ratings, dtype=np.float64),
                         np.array(thumbs, dtype=np.bool_))


LIMITS = RolloutPolicy(min_samples=50, min_feedback=10, min_golden_accuracy=0.75).limits()


def test_two_proportion_test_matches_the_hand_computed_z_test() -> None:
    # p1 = .30, p2 = .45; pooled p = .375; z = -.15 / sqrt(.375 * .625 * 2/100) = -2.19089
    # z² = 4.8 = χ²; p = 2(1 - Φ(2.19089)) = 0.028460; Wald se = sqrt(.3*.7/100 + .45*.55/100)
    # = 0.067639, so the 95% interval is -0.15 ± 1.959964 × 0.067639 = [-0.28257, -0.01743].
    c = an.two_proportion_test("thumbs_up_rate", 30, 100, 45, 100, alpha=0.05)
    assert (c.candidate, c.control, c.effect) == pytest.approx((0.30, 0.45, -0.15))
    assert c.p_value == pytest.approx(0.028460, abs=1e-6)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.28257, -0.01743), abs=1e-5)
    assert c.significant and c.test == "chi2 2x2 (two-proportion z)"
    assert not an.two_proportion_test("x", 30, 100, 45, 100, alpha=0.01).significant


def test_two_proportion_test_with_no_variation_is_not_significant() -> None:
    c = an.two_proportion_test("error_rate", 0, 50, 0, 60, alpha=0.05)
    assert (c.p_value, c.effect, c.significant) == (1.0, 0.0, False)


def test_welch_test_matches_the_hand_computed_values() -> None:
    # means 2.5 and 4; se = sqrt(1.6667/4 + 2.5/5) = 0.957427; t = -1.56670;
    # Welch–Satterthwaite df = 0.840278 / (0.41667²/3 + 0.5²/4) = 6.98077; p = 0.16129.
    c = an.welch_test("latency_ms", [1, 2, 3, 4], [2, 3, 4, 5, 6], alpha=0.05)
    assert c.effect == pytest.approx(-1.5)
    assert c.p_value == pytest.approx(0.161286, abs=1e-6)
    assert (c.ci_low, c.ci_high) == pytest.approx((-3.765220, 0.765220), abs=1e-6)
    assert not c.significant and (c.n_candidate, c.n_control) == (4, 5)


def test_mann_whitney_matches_the_hand_computed_values() -> None:
    # U = 0 + .5 + 1.5 + 2.5 = 4.5; mean 10; tie-corrected var = 20/12 × (10 − 18/72) = 16.25;
    # z = (4.5 − 10 + .5) / 4.0311 = −1.24035; p = 2Φ(−1.24035) = 0.21485.
    c = an.mann_whitney_test("rating", [1, 2, 3, 4], [2, 3, 4, 5, 6], alpha=0.05)
    assert c.p_value == pytest.approx(0.214847, abs=1e-6)
    assert c.effect == pytest.approx(-1.5) and not c.significant


def test_tests_refuse_thin_samples_and_bad_alpha() -> None:
    with pytest.raises(ConfigError, match="^rating: each arm needs at least 2 samples; got 1 and 3$"):
        an.mann_whitney_test("rating", [1], [1, 2, 3], alpha=0.05)
    with pytest.raises(ConfigError, match="^alpha 1.5 is out of range"):
        an.welch_test("x", [1, 2], [1, 2], alpha=1.5)
    with pytest.raises(ConfigError, match="each arm needs at least one sample; got 0 and 5"):
        an.two_proportion_test("x", 0, 0, 1, 5, alpha=0.05)


def test_constant_latencies_give_an_exact_answer() -> None:
    same = an.welch_test("latency_ms", [5, 5, 5], [5, 5], alpha=0.05)
    other = an.welch_test("latency_ms", [6, 6, 6], [5, 5], alpha=0.05)
    assert (same.p_value, same.significant) == (1.0, False)
    assert (other.p_value, other.effect, other.ci_low) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize(("cand", "outcome", "detail"), [
    (samples(40, failed=20), "inconclusive", "40 searches on the candidate, need 50: waiting for more traffic"),
    (samples(100, failed=1), "successful", "1.0% of 100 searches failed (within 2.0%; control 0.0%)"),
    (samples(100, failed=3), "inconclusive", ("3.0% of 100 searches failed (above 2.0% but not"
     " significantly, binomial p=0.32 ≥ 0.05: waiting for more traffic; control 0.0%)")),
    (samples(100, failed=8), "failed",
     "8.0% of 100 searches failed (above 2.0%, binomial p=0.00093 < 0.05; control 0.0%)"),
])
def test_error_rate_check(cand: WindowSamples, outcome: str, detail: str) -> None:
    check = an.check_error_rate(cand, samples(100, version=1), LIMITS)
    assert (check.outcome, check.detail) == (outcome, detail)


def upper_tail(hits: int, n: int, rate: float) -> float:
    """P(X ≥ hits) for X ~ Binomial(n, rate), summed term by term."""
    return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(hits, n + 1))


def test_a_rate_above_its_limit_fails_only_when_the_binomial_test_says_so() -> None:
    assert upper_tail(8, 100, 0.02) == pytest.approx(0.000932, abs=1e-6)
    assert upper_tail(3, 100, 0.02) == pytest.approx(0.3233, abs=1e-4)
    # The canary demo's good candidate at 5 %: 19 of 33 low-similarity answers against a
    # 55.1 % limit (control 45.1 % + 10 points) is within chance of the limit; 140 of 200 is not.
    ctrl = samples(1000, version=1, sim=0.8, empty=451)
    thin = an.check_low_similarity(samples(33, empty=19), ctrl, replace(LIMITS, min_samples=20))
    assert thin.outcome == "inconclusive" and thin.limit == pytest.approx(0.551)
    assert f"p={upper_tail(19, 33, 0.551):.2g}" in thin.detail
    clear = an.check_low_similarity(samples(200, empty=140), ctrl, LIMITS)
    assert clear.outcome == "failed" and f"p={upper_tail(140, 200, 0.551):.2g}" in clear.detail
    strict = an.check_low_similarity(samples(33, empty=19), ctrl, replace(LIMITS, min_samples=20,
                                                                       alpha=0.5))
    assert strict.outcome == "failed"  # the policy's alpha decides


def test_error_rate_cap_holds_even_when_control_is_bad() -> None:
    check = an.check_error_rate(samples(100, failed=12), samples(100, failed=10), LIMITS)
    assert check.outcome == "failed" and check.limit == pytest.approx(0.05)
    assert an.check_error_rate(samples(100, failed=6), samples(100, failed=10),
                               LIMITS).outcome == "inconclusive"


def test_latency_check_uses_ratio_and_slack() -> None:
    ctrl = samples(100, latency=10.0, version=1)
    assert an.check_latency(samples(100, latency=39.0), ctrl, LIMITS).outcome == "successful"
    failed = an.check_latency(samples(100, latency=41.0), ctrl, LIMITS)
    assert failed.outcome == "failed" and failed.detail == (
        "p95 41.0 ms (above 40.0 ms; control 10.0 ms)")


def test_low_similarity_and_satisfaction_checks() -> None:
    ctrl = samples(100, version=1, thumbs=(True,) * 10)
    worse = samples(100, sim=0.1)
    assert an.check_low_similarity(worse, ctrl, LIMITS).outcome == "failed"
    unhappy = samples(100, thumbs=(True,) * 5 + (False,) * 5)
    check = an.check_satisfaction(unhappy, ctrl, LIMITS)
    assert check.outcome == "failed" and check.detail == (
        "mean 3.00 of 5 over 10 feedback (below 4.50; control 5.00)")
    thin = an.check_satisfaction(samples(100, thumbs=(True,)), ctrl, LIMITS)
    assert thin.outcome == "inconclusive"
    skipped = RolloutPolicy(min_feedback=0).limits()
    assert an.check_satisfaction(samples(100), ctrl, skipped).outcome == "successful"


def test_golden_check_and_step_outcome() -> None:
    assert an.check_golden(0.8, "hit@5", LIMITS).outcome == "successful"
    assert an.check_golden(0.7, "hit@5", LIMITS).detail == "0.700 (below 0.750)"
    assert an.check_golden(None, "hit@5", LIMITS).outcome == "failed"
    fb = (True,) * 20
    step = an.analyse_step(samples(100, thumbs=fb), samples(100, version=1, thumbs=fb), 0.9,
                           "hit@5", LIMITS)
    assert step.outcome == "successful" and step.failures() == []
    bad = an.analyse_step(samples(100, failed=10, thumbs=fb), samples(10, version=1), 0.9,
                          "hit@5", LIMITS)
    assert bad.outcome == "failed" and bad.failures()[0].startswith("error_rate: 10.0%")


def test_ab_decision() -> None:
    better = samples(300, thumbs=(True,) * 240 + (False,) * 60)
    base = samples(300, version=1, thumbs=(True,) * 150 + (False,) * 150)
    result = an.decide_ab(an.compare_arms(better, base, alpha=0.05, low_similarity=0.3,
                                          min_latency_effect_ms=5), "thumbs_up_rate")
    assert result.decision == "promote"
    assert [c.metric for c in result.comparisons] == [
        "error_rate", "low_similarity_rate", "thumbs_up_rate", "latency_ms"]
    worse_errors = samples(300, failed=30, thumbs=(True,) * 240 + (False,) * 30)
    kept = an.decide_ab(an.compare_arms(worse_errors, base, alpha=0.05, low_similarity=0.3,
                                        min_latency_effect_ms=5), "thumbs_up_rate")
    assert kept.decision == "keep_live"
    assert kept.reason.startswith("the candidate is significantly worse on error_rate (+0.1 [")
    none = an.decide_ab(an.compare_arms(samples(100), samples(100, version=1), alpha=0.05,
                                        low_similarity=0.3, min_latency_effect_ms=5), "rating")
    assert none.reason == "no samples of the primary metric 'rating' on both arms; live kept"
