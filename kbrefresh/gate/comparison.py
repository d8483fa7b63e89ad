"""Judge candidate against live query by query: change and disparity rules with intervals.

Pure: takes per-query scores of both versions on the same queries (paired) and a
policy, returns :class:`~kbrefresh.gate.rules.RuleResult` values. How the intervals
are computed is in :mod:`kbrefresh.gate.statistics`; when a rule fails is in
:mod:`kbrefresh.gate.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import QueryResult, per_query_scores
from kbrefresh.gate.policy import AcceptancePolicy, ChangeThreshold, DisparityRule
from kbrefresh.gate.rules import EPSILON, RuleResult, fmt, judge, label
from kbrefresh.gate.statistics import Difference, gap_difference, hit_difference, mean_difference

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PairedScores:
    """Per-query quality scores of candidate and live on the same queries, in one order."""

    slices: tuple[str, ...]
    candidate: Mapping[str, Scores]
    live: Mapping[str, Scores]

    @classmethod
    def from_results(
        cls, candidate: Sequence[QueryResult], live: Sequence[QueryResult], k: int, ndcg_k: int
    ) -> PairedScores:
        """Pair results query by query.

        Raises:
            ConfigError: the two lists do not hold the same queries in the same order.
        """
        if [r.query for r in candidate] != [r.query for r in live]:
            raise ConfigError("candidate and live results must hold the same queries in one order")
        return cls(
            tuple(r.slice for r in candidate),
            per_query_scores(candidate, k, ndcg_k),
            per_query_scores(live, k, ndcg_k),
        )

    def mask(self, slice_: str | None) -> npt.NDArray[np.bool_]:
        labels = np.asarray(self.slices, dtype=object)
        return np.ones(len(labels), dtype=bool) if slice_ is None else labels == slice_

    def sizes(self) -> dict[str, int]:
        return {name: self.slices.count(name) for name in sorted(set(self.slices))}


def paired_change_results(
    metric: str,
    slice_: str | None,
    scores: PairedScores,
    change: ChangeThreshold,
    policy: AcceptancePolicy,
) -> list[RuleResult]:
    """Judge a change threshold on a quality metric by the interval of candidate − live."""
    mask = scores.mask(slice_)
    if metric not in scores.candidate or not mask.any():
        return [judge(name, metric, slice_, None, None, 0.0, "≥")
                for name, _, _ in _checks(metric, slice_, change)]
    live, cand = scores.live[metric][mask], scores.candidate[metric][mask]
    confidence = family_confidence(policy, scores.sizes()) if slice_ is not None else policy.confidence
    if metric.startswith("hit@"):
        diff = hit_difference(live, cand, confidence)
    else:
        seed = policy.seed + _stable_hash(f"{metric}|{slice_}")
        diff = mean_difference(live, cand, confidence, resamples=policy.resamples, seed=seed)
    return [
        _judge_difference(name, metric, slice_, diff, diff.live * factor + offset, change, policy,
                          confidence)
        for name, factor, offset in _checks(metric, slice_, change)
    ]


def family_confidence(policy: AcceptancePolicy, sizes: Mapping[str, int]) -> float:
    """Per-slice confidence so that all slices together keep ``policy.confidence`` (Bonferroni).

    Each slice that can fail on its interval is one more chance for luck to fail a
    harmless refresh: with 13 slices at 95% each, one slice in two refreshes would.
    """
    tested = sum(1 for n in sizes.values() if n >= policy.min_slice_size)
    return 1 - (1 - policy.confidence) / max(tested, 1)


def _checks(
    metric: str, slice_: str | None, change: ChangeThreshold
) -> list[tuple[str, float, float]]:
    """(name, factor, offset) per threshold of ``change``: required = live × factor + offset."""
    higher = change.direction == "higher_is_better"
    op, sign, pm = ("≥", -1.0, "−") if higher else ("≤", 1.0, "+")
    name = label(metric, slice_)
    checks: list[tuple[str, float, float]] = []
    if change.absolute is not None:
        checks.append((f"{name} {op} live {pm} {fmt(change.absolute)}", 1.0, sign * change.absolute))
    if change.relative is not None:
        factor = 1.0 + sign * change.relative
        slack = f" {pm} {fmt(change.slack)}" if change.slack else ""
        checks.append((f"{name} {op} live × {fmt(factor)}{slack}", factor, sign * change.slack))
    return checks


def _judge_difference(
    name: str,
    metric: str,
    slice_: str | None,
    diff: Difference,
    required: float,
    change: ChangeThreshold,
    policy: AcceptancePolicy,
    confidence: float,
) -> RuleResult:
    higher = change.direction == "higher_is_better"
    allowed = required - diff.live  # the tolerated change of the mean (negative when higher)
    level = percent(confidence)
    shown = f"Δ {_signed(diff.delta)}, {level} CI [{_signed(diff.low)}, {_signed(diff.high)}], n={diff.n}"
    catastrophic = policy.catastrophic_drop
    # The drop must be catastrophic with the policy's confidence: on a 14-query slice a
    # point drop of 10 points is 1.4 queries, exactly the noise small slices are spared.
    surely_worse = -diff.high if higher else diff.low
    if (catastrophic is not None and diff.n >= policy.catastrophic_min_queries
            and surely_worse >= catastrophic - EPSILON):
        passed, why = False, (f"catastrophic: worse by ≥ {fmt(catastrophic)} with {level} "
                              f"confidence on {diff.n} queries")
    elif diff.n < policy.min_slice_size:
        passed, why = True, f"{diff.n} < {policy.min_slice_size} queries: reported, cannot fail alone"
    elif higher:
        passed = diff.high >= allowed - EPSILON
        why = (f"upper bound ≥ {_signed(allowed)}" if passed
               else f"whole interval below {_signed(allowed)}: worse beyond the tolerance")
    else:
        passed = diff.low <= allowed + EPSILON
        why = (f"lower bound ≤ {_signed(allowed)}" if passed
               else f"whole interval above {_signed(allowed)}: worse beyond the tolerance")
    return RuleResult(name, metric, slice_, diff.candidate, diff.live, required, passed,
                      f"{shown}; {why}", diff.n, diff.delta, diff.low, diff.high)


def disparity_results(
    rule: DisparityRule,
    slices: Sequence[str],
    candidate: Mapping[str, Scores],
    live: Mapping[str, Scores] | None,
    policy: AcceptancePolicy,
) -> list[RuleResult]:
    """Judge how the slice gap of ``rule.metric`` moved (paired) and, if set, its absolute cap.

    Only slices of at least ``min_slice_size`` queries take part: a 6-query slice's
    mean moves 17 points with one query and would decide the gap alone.
    """
    sizes = {name: list(slices).count(name) for name in sorted(set(slices))}
    large = [name for name, n in sizes.items() if n >= policy.min_slice_size]
    keep = np.isin(np.asarray(slices, dtype=object), large)
    kept = tuple(s for s, k in zip(slices, keep, strict=True) if k)
    results: list[RuleResult] = []
    too_few = (f"fewer than 2 slices of ≥ {policy.min_slice_size} queries "
               f"({', '.join(f'{n} {c}' for n, c in sizes.items()) or 'none'}): nothing to compare")
    if rule.max_increase is not None and live is not None:
        name = f"{rule.metric} slice gap ≤ live's + {fmt(rule.max_increase)}"
        if len(large) < 2:
            results.append(RuleResult(name, rule.metric, "*", None, None, None, True, too_few))
        else:
            diff = gap_difference(kept, live[rule.metric][keep],
                                  candidate[rule.metric][keep], policy.confidence,
                                  resamples=policy.resamples, seed=policy.seed)
            passed = diff.low <= rule.max_increase + EPSILON
            level = percent(policy.confidence)
            reason = (f"gap {fmt(diff.live)} → {fmt(diff.candidate)}, Δ {_signed(diff.delta)}, "
                      f"{level} CI [{_signed(diff.low)}, {_signed(diff.high)}] over {len(large)} "
                      f"slices; " + ("lower bound ≤ " if passed else "whole interval above ")
                      + fmt(rule.max_increase))
            results.append(RuleResult(name, rule.metric, "*", diff.candidate, diff.live,
                                      diff.live + rule.max_increase, passed, reason, diff.n,
                                      diff.delta, diff.low, diff.high))
    if rule.max is not None:
        name = f"{rule.metric} slice disparity ≤ {fmt(rule.max)}"
        if len(large) < 2:
            results.append(RuleResult(name, rule.metric, "*", None, None, rule.max, True, too_few))
        else:
            means = {s: float(np.mean(candidate[rule.metric][np.asarray(slices) == s]))
                     for s in large}
            high, low = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
            result = judge(name, rule.metric, "*", means[high] - means[low], None, rule.max, "≤")
            results.append(RuleResult(**{**result.__dict__, "reason": f"{result.reason} ({high} "
                                         f"{fmt(means[high])}, {low} {fmt(means[low])})"}))
    return results


def percent(confidence: float) -> str:
    """Return ``0.95`` as "95%", ``0.975`` as "97.5%", ``0.99615`` as "99.62%"."""
    return f"{confidence * 100:.2f}".rstrip("0").rstrip(".") + "%"


def _signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; seeds must repeat across runs.
    return sum((i + 1) * ord(ch) for i, ch in enumerate(text)) % 1_000_003
