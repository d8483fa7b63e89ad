"""Judge a rollout's arms on what users saw: Argo-style checks per step, significance tests for A/B.

A canary step's metrics each come out ``successful``, ``inconclusive`` (too few samples:
wait, never promote on thin data) or ``failed`` (abort). A rate above its limit fails
only when an exact one-sided binomial test says the candidate's rate is above the limit
at ``alpha``; until then it is inconclusive, so a few dozen searches at 5 % cannot abort
a good candidate on noise, and more traffic decides. An A/B compares the arms with
one test per metric: a χ² test on the 2×2 table for proportions (the two-proportion
z-test squared), Mann–Whitney U for ratings, Welch's t for latency; each result carries
the effect (candidate − control) and its confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from kbrefresh.errors import ConfigError
from kbrefresh.release.traffic import WindowSamples

Outcome = Literal["successful", "inconclusive", "failed"]
SUCCESSFUL: Outcome = "successful"
INCONCLUSIVE: Outcome = "inconclusive"
FAILED: Outcome = "failed"


@dataclass(frozen=True)
class MetricCheck:
    """One metric of one canary step: both arms' values, the limit, the outcome and why."""

    metric: str
    outcome: Outcome
    candidate: float | None
    control: float | None
    limit: float | None
    samples: int
    detail: str


@dataclass(frozen=True)
class StepAnalysis:
    """Every metric check of one step; the step fails if any failed, waits if any is thin."""

    checks: tuple[MetricCheck, ...]

    @property
    def outcome(self) -> Outcome:
        outcomes = {c.outcome for c in self.checks}
        if FAILED in outcomes:
            return FAILED
        return INCONCLUSIVE if INCONCLUSIVE in outcomes else SUCCESSFUL

    def failures(self) -> list[str]:
        return [f"{c.metric}: {c.detail}" for c in self.checks if c.outcome == FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class CanaryLimits:
    """Thresholds of a canary step (see ``RolloutPolicy`` for their meaning)."""

    min_samples: int
    min_feedback: int
    max_error_rate: float
    max_error_rate_increase: float
    max_latency_ratio: float
    latency_slack_ms: float
    max_latency_ms: float
    max_low_similarity_increase: float
    max_satisfaction_drop: float
    low_similarity: float
    min_golden_accuracy: float | None
    alpha: float = 0.05


def check_error_rate(cand: WindowSamples, ctrl: WindowSamples, lim: CanaryLimits) -> MetricCheck:
    """Fail when the candidate's failed-search rate passes the cap or the control by a margin."""
    c, b = cand.error_rate, ctrl.error_rate
    if c is None or cand.searches < lim.min_samples:
        return _thin("error_rate", c, b, cand.searches, lim.min_samples)
    limit = min(lim.max_error_rate, (b or 0.0) + lim.max_error_rate_increase)
    failed = int(cand.failed.sum())
    outcome, versus = _rate_outcome(failed, cand.searches, limit, lim.alpha)
    return MetricCheck("error_rate", outcome, c, b, limit, cand.searches,
                       f"{c:.1%} of {cand.searches} searches failed "
                       f"({versus}; control {_pct(b)})")


def check_latency(cand: WindowSamples, ctrl: WindowSamples, lim: CanaryLimits) -> MetricCheck:
    """Fail when the candidate's p95 is above the cap or ``ratio`` × control (+ slack)."""
    c, b = cand.p95_latency_ms, ctrl.p95_latency_ms
    if c is None or cand.searches < lim.min_samples:
        return _thin("p95_latency_ms", c, b, cand.searches, lim.min_samples)
    limit = lim.max_latency_ms if b is None else min(
        lim.max_latency_ms, b * lim.max_latency_ratio + lim.latency_slack_ms)
    ok = c <= limit
    return MetricCheck("p95_latency_ms", SUCCESSFUL if ok else FAILED, c, b, limit, cand.searches,
                       f"p95 {c:.1f} ms ({'within' if ok else 'above'} {limit:.1f} ms; "
                       f"control {_ms(b)})")


def check_low_similarity(cand: WindowSamples, ctrl: WindowSamples, lim: CanaryLimits) -> MetricCheck:
    """Fail when empty or low-similarity answers rise by more than the allowed points."""
    c = cand.low_similarity_rate(lim.low_similarity)
    b = ctrl.low_similarity_rate(lim.low_similarity)
    ok_searches = cand.answered
    if c is None or ok_searches < lim.min_samples:
        return _thin("low_similarity_rate", c, b, ok_searches, lim.min_samples)
    limit = (b or 0.0) + lim.max_low_similarity_increase
    outcome, versus = _rate_outcome(cand.low_similarity_count(lim.low_similarity),
                                    ok_searches, limit, lim.alpha)
    return MetricCheck("low_similarity_rate", outcome, c, b, limit, ok_searches,
                       f"{c:.1%} of {ok_searches} empty or below similarity {lim.low_similarity} "
                       f"({versus}; control {_pct(b)})")


def _rate_outcome(hits: int, n: int, limit: float, alpha: float) -> tuple[Outcome, str]:
    """Judge ``hits`` of ``n`` against a rate ``limit``: within, above by chance, or above.

    Above the limit fails only when the exact one-sided binomial test rejects "the
    candidate's true rate is at most the limit" at ``alpha``; otherwise more traffic decides.
    """
    if hits / n <= limit:
        return SUCCESSFUL, f"within {limit:.1%}"
    p_value = float(stats.binomtest(hits, n, limit, alternative="greater").pvalue)
    if p_value < alpha:
        return FAILED, f"above {limit:.1%}, binomial p={p_value:.2g} < {alpha:g}"
    return INCONCLUSIVE, (f"above {limit:.1%} but not significantly, binomial p={p_value:.2g}"
                          f" ≥ {alpha:g}: waiting for more traffic")


def check_satisfaction(cand: WindowSamples, ctrl: WindowSamples, lim: CanaryLimits) -> MetricCheck:
    """Fail when mean satisfaction (1..5) drops more than the allowed share below control."""
    c, b = cand.satisfaction, ctrl.satisfaction
    n = cand.feedback_count
    if lim.min_feedback == 0 and (c is None or b is None):
        return MetricCheck("satisfaction", SUCCESSFUL, c, b, None, n,
                           "not checked: no feedback on an arm and none required")
    if c is None or b is None or n < lim.min_feedback or ctrl.feedback_count < lim.min_feedback:
        return _thin("satisfaction", c, b, min(n, ctrl.feedback_count), lim.min_feedback,
                     what="feedback on each arm")
    limit = b * (1.0 - lim.max_satisfaction_drop)
    ok = c >= limit
    return MetricCheck("satisfaction", SUCCESSFUL if ok else FAILED, c, b, limit, n,
                       f"mean {c:.2f} of 5 over {n} feedback "
                       f"({'at or above' if ok else 'below'} {limit:.2f}; control {b:.2f})")


def check_golden(accuracy: float | None, metric: str, lim: CanaryLimits) -> MetricCheck:
    """Fail when the candidate's golden accuracy (from its gate verdict) is below the floor."""
    floor = lim.min_golden_accuracy
    if floor is None:
        return MetricCheck(f"golden {metric}", SUCCESSFUL, accuracy, None, None, 0, "not checked")
    if accuracy is None:
        return MetricCheck(f"golden {metric}", FAILED, None, None, floor, 0,
                           f"the candidate's verdict has no {metric!r}; run `kbrefresh eval`")
    ok = accuracy >= floor
    return MetricCheck(f"golden {metric}", SUCCESSFUL if ok else FAILED, accuracy, None, floor, 0,
                       f"{accuracy:.3f} ({'at or above' if ok else 'below'} {floor:.3f})")


def analyse_step(
    cand: WindowSamples, ctrl: WindowSamples, golden_accuracy: float | None, golden_metric: str,
    lim: CanaryLimits,
) -> StepAnalysis:
    """Run every canary check on one step's window."""
    return StepAnalysis((
        check_error_rate(cand, ctrl, lim), check_latency(cand, ctrl, lim),
        check_low_similarity(cand, ctrl, lim), check_satisfaction(cand, ctrl, lim),
        check_golden(golden_accuracy, golden_metric, lim),
    ))


def _thin(metric: str, c: float | None, b: float | None, n: int, need: int,
          what: str = "searches on the candidate") -> MetricCheck:
    return MetricCheck(metric, INCONCLUSIVE, c, b, None, n,
                       f"{n} {what}, need {need}: waiting for more traffic")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


# --- A/B significance tests ---------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One A/B metric: both arms, the effect (candidate − control), its CI, p and the verdict."""

    metric: str
    test: str
    candidate: float
    control: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    n_candidate: int
    n_control: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha {alpha!r} is out of range; expected a number between 0 and 1")


def two_proportion_test(
    metric: str, cand_successes: int, cand_n: int, ctrl_successes: int, ctrl_n: int, alpha: float
) -> Comparison:
    """χ² test of a 2×2 table (no continuity correction: the two-proportion z-test squared).

    The interval is the Wald interval of the difference of proportions.
    """
    _check_alpha(alpha)
    if cand_n < 1 or ctrl_n < 1:
        raise ConfigError(f"{metric}: each arm needs at least one sample; got {cand_n} and {ctrl_n}")
    p1, p2 = cand_successes / cand_n, ctrl_successes / ctrl_n
    table = np.array([[cand_successes, cand_n - cand_successes],
                      [ctrl_successes, ctrl_n - ctrl_successes]])
    if (table.sum(axis=0) == 0).any():  # everyone succeeded (or failed) in both arms
        p_value = 1.0
    else:
        p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    se = math.sqrt(p1 * (1 - p1) / cand_n + p2 * (1 - p2) / ctrl_n)
    z = float(stats.norm.ppf(1 - alpha / 2))
    diff = p1 - p2
    return Comparison(metric, "chi2 2x2 (two-proportion z)", p1, p2, diff, diff - z * se,
                      diff + z * se, p_value, p_value < alpha, cand_n, ctrl_n)


def mann_whitney_test(
    metric: str, cand: npt.ArrayLike, ctrl: npt.ArrayLike, alpha: float
) -> Comparison:
    """Mann–Whitney U (two-sided) for ordinal scores; effect is the difference of means.

    The interval is Welch's interval of that difference (U itself has no mean interval).
    """
    _check_alpha(alpha)
    a, b = _two_samples(metric, cand, ctrl)
    p_value = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    low, high = _welch_interval(a, b, alpha)
    return Comparison(metric, "Mann-Whitney U", float(a.mean()), float(b.mean()),
                      float(a.mean() - b.mean()), low, high, p_value, p_value < alpha,
                      int(a.size), int(b.size))


def welch_test(metric: str, cand: npt.ArrayLike, ctrl: npt.ArrayLike, alpha: float) -> Comparison:
    """Welch's t-test (unequal variances) on means, with its interval of the difference."""
    _check_alpha(alpha)
    a, b = _two_samples(metric, cand, ctrl)
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # both arms constant: no variance to test
        p_value, low, high = (1.0 if diff == 0 else 0.0), diff, diff
    else:
        p_value = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        low, high = _welch_interval(a, b, alpha)
    return Comparison(metric, "Welch t", float(a.mean()), float(b.mean()), diff, low, high,
                      p_value, p_value < alpha,
                      int(a.size), int(b.size))


def _two_samples(
    metric: str, cand: npt.ArrayLike, ctrl: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    a, b = np.asarray(cand, dtype=np.float64), np.asarray(ctrl, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ConfigError(f"{metric}: each arm needs at least 2 samples; got {a.size} and {b.size}")
    return a, b


def _welch_interval(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], alpha: float
) -> tuple[float, float]:
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(1 - alpha)
    diff = float(a.mean() - b.mean())
    low, high = float(ci.low), float(ci.high)
    return (diff, diff) if not (math.isfinite(low) and math.isfinite(high)) else (low, high)


@dataclass(frozen=True)
class ABResult:
    """The comparisons of an A/B and its decision: ``promote`` or ``keep_live``, and why."""

    comparisons: tuple[Comparison, ...]
    decision: Literal["promote", "keep_live"]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason,
                "comparisons": [c.to_dict() for c in self.comparisons]}


# Which direction is worse for the candidate, per A/B metric.
_HIGHER_IS_BETTER = {"thumbs_up_rate": True, "rating": True, "error_rate": False,
                     "low_similarity_rate": False, "latency_ms": False}


def compare_arms(
    cand: WindowSamples, ctrl: WindowSamples, *, alpha: float, low_similarity: float,
    min_latency_effect_ms: float,
) -> tuple[Comparison, ...]:
    """Run every A/B test that both arms have samples for."""
    out = []
    for metric, c_hits, c_n, b_hits, b_n in (
        ("error_rate", int(cand.failed.sum()), cand.searches,
         int(ctrl.failed.sum()), ctrl.searches),
        ("low_similarity_rate", *_low(cand, low_similarity), *_low(ctrl, low_similarity)),
        ("thumbs_up_rate", int(cand.thumbs.sum()), int(cand.thumbs.size),
         int(ctrl.thumbs.sum()), int(ctrl.thumbs.size)),
    ):
        if c_n and b_n:
            out.append(two_proportion_test(metric, c_hits, c_n, b_hits, b_n, alpha))
    if cand.ratings.size >= 2 and ctrl.ratings.size >= 2:
        out.append(mann_whitney_test("rating", cand.ratings, ctrl.ratings, alpha))
    if cand.latencies_ms.size >= 2 and ctrl.latencies_ms.size >= 2:
        latency = welch_test("latency_ms", cand.latencies_ms, ctrl.latencies_ms, alpha)
        # Milliseconds of scheduler noise are "significant" on big samples; not worth a verdict.
        if abs(latency.effect) < min_latency_effect_ms:
            latency = Comparison(**{**asdict(latency), "significant": False})
        out.append(latency)
    return tuple(out)


def _low(s: WindowSamples, cutoff: float) -> tuple[int, int]:
    return s.low_similarity_count(cutoff), s.answered


def decide_ab(comparisons: Sequence[Comparison], primary: str) -> ABResult:
    """Promote when nothing is significantly worse and the primary metric is significantly better."""
    worse = [c for c in comparisons if c.significant
             and (c.effect < 0) == _HIGHER_IS_BETTER[c.metric] and c.effect != 0]
    if worse:
        names = ", ".join(f"{c.metric} {_effect(c)}" for c in worse)
        return ABResult(tuple(comparisons), "keep_live",
                        f"the candidate is significantly worse on {names}; live kept")
    main = next((c for c in comparisons if c.metric == primary), None)
    if main is None:
        return ABResult(tuple(comparisons), "keep_live",
                        f"no samples of the primary metric {primary!r} on both arms; live kept")
    if main.significant and (main.effect > 0) == _HIGHER_IS_BETTER[primary]:
        return ABResult(tuple(comparisons), "promote",
                        f"the candidate is significantly better on {primary} {_effect(main)}")
    return ABResult(tuple(comparisons), "keep_live",
                    f"no significant difference on {primary} {_effect(main)}; live kept")


def _effect(c: Comparison) -> str:
    return f"({c.effect:+.4g} [{c.ci_low:+.4g}, {c.ci_high:+.4g}], p={c.p_value:.3g})"
