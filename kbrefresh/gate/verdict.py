"""The validation gate: judge a candidate's metrics against the live version's.

Pure: takes metric tables, sizes and smoke failures, returns a :class:`Verdict`.
Value thresholds always apply; change thresholds and the size ratio need a live
baseline, so a first version is judged on value thresholds (and smoke) only. A
metric the policy names but that could not be computed fails its rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import MetricTable, slice_disparity
from kbrefresh.gate.policy import (
    ALL_SLICES,
    AcceptancePolicy,
    ChangeThreshold,
    DisparityRule,
    MetricRule,
)

logger = logging.getLogger(__name__)

# Float noise (0.8 - 0.02 == 0.7800000000000001) must not fail a value sitting on its threshold.
_EPSILON = 1e-9
_SMOKE_SHOWN = 3


@dataclass(frozen=True)
class RuleResult:
    """One checked threshold: what was measured, against what, and why it passed or failed."""

    name: str
    metric: str
    slice: str | None
    value: float | None
    baseline: float | None
    threshold: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on a candidate version, with every rule it checked."""

    passed: bool
    first_version: bool
    rules: tuple[RuleResult, ...]
    summary: str

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
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a verdict dict ({exc!r}); expected Verdict.to_dict() output"
            ) from exc

    def to_markdown(self) -> str:
        """Return a markdown report: a decision line, the summary and a table of rules."""
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"**Validation gate: {status}**", "", self.summary, ""]
        lines.append("| Rule | Value | Live | Threshold | Result | Reason |")
        lines.append("|---|---|---|---|---|---|")
        for rule in self.rules:
            cells = (
                rule.name,
                _fmt(rule.value),
                _fmt(rule.baseline),
                _fmt(rule.threshold),
                "pass" if rule.passed else "**FAIL**",
                rule.reason,
            )
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines += ["", f"**Decision:** {_decision(self)}"]
        return "\n".join(lines)


def evaluate_gate(
    candidate: MetricTable,
    live: MetricTable | None,
    policy: AcceptancePolicy,
    *,
    candidate_size_bytes: int,
    live_size_bytes: int | None,
    smoke_failures: Sequence[str],
) -> Verdict:
    """Judge ``candidate`` against ``live`` (None for a first version) under ``policy``."""
    results: list[RuleResult] = []
    if policy.require_smoke:
        results.append(_smoke_result(smoke_failures))
    for rule in policy.rules:
        results += _metric_rule_results(rule, candidate, live)
    for disparity in policy.max_slice_disparity:
        results.append(_disparity_result(disparity, candidate))
    if live is not None and policy.max_size_ratio is not None:
        results.append(_size_result(policy.max_size_ratio, candidate_size_bytes, live_size_bytes))
    passed = all(result.passed for result in results)
    verdict = Verdict(
        passed=passed,
        first_version=live is None,
        rules=tuple(results),
        summary=_summary(results, first_version=live is None),
    )
    logger.info("validation gate %s: %s", "passed" if passed else "failed", verdict.summary)
    return verdict


def _metric_rule_results(
    rule: MetricRule, candidate: MetricTable, live: MetricTable | None
) -> list[RuleResult]:
    has_bounds = rule.lower_bound is not None or rule.upper_bound is not None
    change = rule.change if live is not None else None
    if not has_bounds and change is None:
        return []
    slices: Sequence[str | None] = [rule.slice]
    if rule.slice == ALL_SLICES:
        names = set(candidate.slices) | (set(live.slices) if live and change else set())
        slices = sorted(names)
        if not slices:
            label = _label(rule.metric, ALL_SLICES)
            return [_missing(label, rule.metric, ALL_SLICES, "any slice of the candidate")]
    results: list[RuleResult] = []
    for slice_ in slices:
        value = candidate.get(rule.metric, slice_)
        label = _label(rule.metric, slice_)
        if rule.lower_bound is not None:
            name = f"{label} ≥ {_fmt(rule.lower_bound)}"
            results.append(_judge(name, rule.metric, slice_, value, None, rule.lower_bound, "≥"))
        if rule.upper_bound is not None:
            name = f"{label} ≤ {_fmt(rule.upper_bound)}"
            results.append(_judge(name, rule.metric, slice_, value, None, rule.upper_bound, "≤"))
        if change is not None and live is not None:
            baseline = live.get(rule.metric, slice_)
            results += _change_results(rule.metric, slice_, value, baseline, change)
    return results


def _change_results(
    metric: str,
    slice_: str | None,
    value: float | None,
    baseline: float | None,
    change: ChangeThreshold,
) -> list[RuleResult]:
    higher = change.direction == "higher_is_better"
    op = "≥" if higher else "≤"
    sign = -1.0 if higher else 1.0
    label = _label(metric, slice_)
    # (name, factor, offset): threshold = baseline × factor + offset
    checks: list[tuple[str, float, float]] = []
    if change.absolute is not None:
        minus_plus = "−" if higher else "+"
        name = f"{label} {op} live {minus_plus} {_fmt(change.absolute)}"
        checks.append((name, 1.0, sign * change.absolute))
    if change.relative is not None:
        factor = 1.0 + sign * change.relative
        slack = f" {'−' if higher else '+'} {_fmt(change.slack)}" if change.slack else ""
        checks.append((f"{label} {op} live × {_fmt(factor)}{slack}", factor, sign * change.slack))
    if baseline is None:
        return [
            _missing(name, metric, slice_, "the live baseline", value=value)
            for name, _, _ in checks
        ]
    return [
        _judge(name, metric, slice_, value, baseline, baseline * factor + offset, op)
        for name, factor, offset in checks
    ]


def _disparity_result(rule: DisparityRule, candidate: MetricTable) -> RuleResult:
    name = f"{rule.metric} slice disparity ≤ {_fmt(rule.max)}"
    try:
        gap = slice_disparity(candidate, rule.metric)
    except ConfigError:
        return _missing(name, rule.metric, ALL_SLICES, "all slices of the candidate")
    result = _judge(name, rule.metric, ALL_SLICES, gap, None, rule.max, "≤")
    by_slice = {s: candidate.get(rule.metric, s) or 0.0 for s in candidate.slices}
    low, high = min(by_slice, key=by_slice.__getitem__), max(by_slice, key=by_slice.__getitem__)
    spread = f"{high} {_fmt(by_slice[high])}, {low} {_fmt(by_slice[low])}"
    return _with_reason(result, f"{result.reason} ({spread})")


def _size_result(max_ratio: float, candidate_bytes: int, live_bytes: int | None) -> RuleResult:
    name = f"size ≤ live × {_fmt(max_ratio)}"
    if live_bytes is None or live_bytes <= 0:
        return _missing(name, "size_bytes", None, "the live baseline", value=float(candidate_bytes))
    result = _judge(
        name,
        "size_bytes",
        None,
        float(candidate_bytes),
        float(live_bytes),
        max_ratio * live_bytes,
        "≤",
    )
    ratio = candidate_bytes / live_bytes
    return _with_reason(result, f"{result.reason} bytes ({_fmt(ratio)}× live)")


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


def _judge(
    name: str,
    metric: str,
    slice_: str | None,
    value: float | None,
    baseline: float | None,
    threshold: float,
    op: str,
) -> RuleResult:
    if value is None:
        return _missing(name, metric, slice_, "the candidate", baseline=baseline)
    if op == "≥":
        passed = value >= threshold - _EPSILON
        shown_op = "≥" if passed else "<"
    else:
        passed = value <= threshold + _EPSILON
        shown_op = "≤" if passed else ">"
    reason = f"{_fmt(value)} {shown_op} {_fmt(threshold)}"
    return RuleResult(name, metric, slice_, value, baseline, threshold, passed, reason)


def _missing(
    name: str,
    metric: str,
    slice_: str | None,
    whose: str,
    *,
    value: float | None = None,
    baseline: float | None = None,
) -> RuleResult:
    reason = f"metric {_label(metric, slice_)!r} could not be computed for {whose}"
    return RuleResult(name, metric, slice_, value, baseline, None, False, reason)


def _with_reason(result: RuleResult, reason: str) -> RuleResult:
    return RuleResult(**{**asdict(result), "reason": reason})


def _label(metric: str, slice_: str | None) -> str:
    return metric if slice_ is None else f"{metric} [{slice_}]"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value.is_integer() and abs(value) >= 10_000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _summary(results: Sequence[RuleResult], *, first_version: bool) -> str:
    prefix = (
        "First version, no live baseline: judged on value thresholds only. "
        if first_version
        else ""
    )
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
