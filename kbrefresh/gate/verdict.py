"""The validation gate: judge a candidate's results against the live version's.

Pure: takes per-query results of both versions on the same golden queries, sizes
and smoke failures, returns a :class:`Verdict`. Value thresholds always apply;
change thresholds, the disparity increase and the size ratio need a live baseline,
so a first version is judged on value thresholds (and smoke) only. Change rules on
quality metrics are paired and noise-aware (:mod:`kbrefresh.gate.comparison`);
latency and size are compared as measured. A metric the policy names but that
could not be computed fails its rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kbrefresh.errors import ConfigError
from kbrefresh.gate.comparison import PairedScores, disparity_results, paired_change_results
from kbrefresh.gate.metrics import MetricTable, QueryResult, aggregate, per_query_scores
from kbrefresh.gate.policy import ALL_SLICES, AcceptancePolicy, ChangeThreshold, MetricRule
from kbrefresh.gate.rules import RuleResult, fmt, judge, label, missing, with_reason

__all__ = ["RuleResult", "Verdict", "evaluate_gate"]

logger = logging.getLogger(__name__)

_SMOKE_SHOWN = 3


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on a candidate version, with every rule it checked."""

    passed: bool
    first_version: bool
    rules: tuple[RuleResult, ...]
    summary: str
    # Golden queries left out of the comparison: every relevant document was deleted at
    # the source (stale labels), or exists only in the candidate (coverage gained).
    stale_queries: tuple[str, ...] = ()
    coverage_gained: tuple[str, ...] = ()

    @property
    def failed_rules(self) -> tuple[RuleResult, ...]:
        return tuple(rule for rule in self.rules if not rule.passed)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict that :meth:`from_dict` turns back into this verdict."""
        return {
            "passed": self.passed,
            "first_version": self.first_version,
            "summary": self.summary,
            "rules": [asdict(rule) for rule in self.rules],
            "stale_queries": list(self.stale_queries),
            "coverage_gained": list(self.coverage_gained),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Rebuild a verdict from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or unexpected.
        """
        try:
            return cls(
                passed=bool(data["passed"]),
                first_version=bool(data["first_version"]),
                rules=tuple(RuleResult(**rule) for rule in data["rules"]),
                summary=str(data["summary"]),
                stale_queries=tuple(data.get("stale_queries", ())),
                coverage_gained=tuple(data.get("coverage_gained", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a verdict dict ({exc!r}); expected Verdict.to_dict() output"
            ) from exc

    def to_markdown(self) -> str:
        """Return a markdown report: a decision line, the summary and a table of rules."""
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"**Validation gate: {status}**", "", self.summary, ""]
        lines.append("| Rule | Live | Candidate | Δ | CI | n | Threshold | Result | Reason |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for rule in self.rules:
            cells = (
                rule.name,
                fmt(rule.baseline),
                fmt(rule.value),
                fmt(rule.delta),
                interval(rule),
                "–" if rule.n is None else str(rule.n),
                fmt(rule.threshold),
                "pass" if rule.passed else "**FAIL**",
                rule.reason,
            )
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        for title, queries in (("Stale golden queries (left out)", self.stale_queries),
                               ("Coverage gained (left out)", self.coverage_gained)):
            if queries:
                lines += ["", f"**{title}:** " + "; ".join(repr(q) for q in queries)]
        lines += ["", f"**Decision:** {_decision(self)}"]
        return "\n".join(lines)


def evaluate_gate(
    candidate: Sequence[QueryResult],
    live: Sequence[QueryResult] | None,
    policy: AcceptancePolicy,
    *,
    candidate_size_bytes: int,
    live_size_bytes: int | None,
    smoke_failures: Sequence[str],
    stale_queries: Sequence[str] = (),
    coverage_gained: Sequence[str] = (),
) -> Verdict:
    """Judge ``candidate`` against ``live`` (None for a first version) under ``policy``.

    ``candidate`` and ``live`` hold the same compared queries in one order;
    ``stale_queries`` and ``coverage_gained`` were left out and are only reported.

    Raises:
        ConfigError: the two result lists do not hold the same queries.
    """
    k, ndcg_k = policy.k, policy.ndcg_k
    table = aggregate(candidate, k=k, ndcg_k=ndcg_k)
    live_table = aggregate(live, k=k, ndcg_k=ndcg_k) if live is not None else None
    paired = PairedScores.from_results(candidate, live, k, ndcg_k) if live is not None else None
    results: list[RuleResult] = []
    if policy.require_smoke:
        results.append(_smoke_result(smoke_failures))
    for rule in policy.rules:
        results += _metric_rule_results(rule, table, live_table, paired, policy)
    slices = [r.slice for r in candidate]
    scores = paired.candidate if paired else per_query_scores(candidate, k, ndcg_k)
    for disparity in policy.max_slice_disparity:
        results += disparity_results(
            disparity, slices, scores, paired.live if paired else None, policy
        )
    if live is not None and policy.max_size_ratio is not None:
        results.append(_size_result(policy.max_size_ratio, candidate_size_bytes, live_size_bytes))
    passed = all(result.passed for result in results)
    verdict = Verdict(
        passed=passed,
        first_version=live is None,
        rules=tuple(results),
        summary=_summary(results, first_version=live is None, stale=len(stale_queries),
                         gained=len(coverage_gained)),
        stale_queries=tuple(stale_queries),
        coverage_gained=tuple(coverage_gained),
    )
    logger.info("validation gate %s: %s", "passed" if passed else "failed", verdict.summary)
    return verdict


def interval(rule: RuleResult) -> str:
    """Return ``[low, high]`` of a paired rule's interval, or "–"."""
    if rule.ci_low is None or rule.ci_high is None:
        return "–"
    return f"[{rule.ci_low:+.3f}, {rule.ci_high:+.3f}]"


def _metric_rule_results(
    rule: MetricRule,
    candidate: MetricTable,
    live: MetricTable | None,
    paired: PairedScores | None,
    policy: AcceptancePolicy,
) -> list[RuleResult]:
    has_bounds = rule.lower_bound is not None or rule.upper_bound is not None
    change = rule.change if live is not None else None
    if not has_bounds and change is None:
        return []
    slices: Sequence[str | None] = [rule.slice]
    if rule.slice == ALL_SLICES:
        slices = list(candidate.slices)
        if not slices:
            name = label(rule.metric, ALL_SLICES)
            return [missing(name, rule.metric, ALL_SLICES, "any slice of the candidate")]
    results: list[RuleResult] = []
    for slice_ in slices:
        value = candidate.get(rule.metric, slice_)
        name = label(rule.metric, slice_)
        if rule.lower_bound is not None:
            bound = f"{name} ≥ {fmt(rule.lower_bound)}"
            results.append(judge(bound, rule.metric, slice_, value, None, rule.lower_bound, "≥"))
        if rule.upper_bound is not None:
            bound = f"{name} ≤ {fmt(rule.upper_bound)}"
            results.append(judge(bound, rule.metric, slice_, value, None, rule.upper_bound, "≤"))
        if change is None or live is None:
            continue
        if paired is not None and rule.metric in paired.candidate:
            results += paired_change_results(rule.metric, slice_, paired, change, policy)
        else:
            results += _change_results(rule.metric, slice_, value, live.get(rule.metric, slice_),
                                       change)
    return results


def _change_results(
    metric: str,
    slice_: str | None,
    value: float | None,
    baseline: float | None,
    change: ChangeThreshold,
) -> list[RuleResult]:
    """Compare a measured value (latency percentiles) with its threshold as measured."""
    higher = change.direction == "higher_is_better"
    op = "≥" if higher else "≤"
    sign = -1.0 if higher else 1.0
    name = label(metric, slice_)
    # (name, factor, offset): threshold = baseline × factor + offset
    checks: list[tuple[str, float, float]] = []
    if change.absolute is not None:
        minus_plus = "−" if higher else "+"
        checks.append((f"{name} {op} live {minus_plus} {fmt(change.absolute)}", 1.0,
                       sign * change.absolute))
    if change.relative is not None:
        factor = 1.0 + sign * change.relative
        slack = f" {'−' if higher else '+'} {fmt(change.slack)}" if change.slack else ""
        checks.append((f"{name} {op} live × {fmt(factor)}{slack}", factor, sign * change.slack))
    if baseline is None:
        return [
            missing(check, metric, slice_, "the live baseline", value=value)
            for check, _, _ in checks
        ]
    return [
        judge(check, metric, slice_, value, baseline, baseline * factor + offset, op)
        for check, factor, offset in checks
    ]


def _size_result(max_ratio: float, candidate_bytes: int, live_bytes: int | None) -> RuleResult:
    name = f"size ≤ live × {fmt(max_ratio)}"
    if live_bytes is None or live_bytes <= 0:
        return missing(name, "size_bytes", None, "the live baseline", value=float(candidate_bytes))
    result = judge(
        name,
        "size_bytes",
        None,
        float(candidate_bytes),
        float(live_bytes),
        max_ratio * live_bytes,
        "≤",
    )
    ratio = candidate_bytes / live_bytes
    return with_reason(result, f"{result.reason} bytes ({fmt(ratio)}× live)")


def _smoke_result(failures: Sequence[str]) -> RuleResult:
    count = len(failures)
    if count == 0:
        reason = "every smoke query returned sane results"
    else:
        shown = "; ".join(failures[:_SMOKE_SHOWN])
        more = f" (+{count - _SMOKE_SHOWN} more)" if count > _SMOKE_SHOWN else ""
        reason = f"{count} smoke failure{'s' if count > 1 else ''}: {shown}{more}"
    return RuleResult(
        name="smoke queries return sane results",
        metric="smoke_failures",
        slice=None,
        value=float(count),
        baseline=None,
        threshold=0.0,
        passed=count == 0,
        reason=reason,
    )


def _summary(
    results: Sequence[RuleResult], *, first_version: bool, stale: int = 0, gained: int = 0
) -> str:
    prefix = (
        "First version, no live baseline: judged on value thresholds only. "
        if first_version
        else ""
    )
    if stale:
        prefix += (f"{stale} golden quer{'ies are' if stale > 1 else 'y is'} answerable only by "
                   "deleted documents: left out (archive with `kbrefresh golden prune`). ")
    if gained:
        prefix += (f"{gained} golden quer{'ies are' if gained > 1 else 'y is'} answerable only by "
                   "documents new in the candidate: coverage gained, left out. ")
    failed = [result for result in results if not result.passed]
    if not failed:
        against = "" if first_version else " against the live version"
        return f"{prefix}Candidate passed all {len(results)} rules{against}; it may be published."
    details = "; ".join(f"{result.name} ({result.reason})" for result in failed)
    outcome = "nothing is published" if first_version else "the live version keeps serving"
    return f"{prefix}Candidate failed {len(failed)} of {len(results)} rules: {details}; {outcome}."


def _decision(verdict: Verdict) -> str:
    if verdict.passed:
        return "publish the candidate."
    failed = len(verdict.failed_rules)
    keep = "publish nothing" if verdict.first_version else "keep the live version"
    return f"{keep}: {failed} of {len(verdict.rules)} rules failed."
