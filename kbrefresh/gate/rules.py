"""One checked rule of the validation gate and the helpers that build one."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Float noise (0.8 - 0.02 == 0.7800000000000001) must not fail a value sitting on its threshold.
EPSILON = 1e-9


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
    # Paired rules (candidate − live on the same queries): the difference, its interval, n.
    n: int | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


def judge(
    name: str,
    metric: str,
    slice_: str | None,
    value: float | None,
    baseline: float | None,
    threshold: float,
    op: str,
) -> RuleResult:
    if value is None:
        return missing(name, metric, slice_, "the candidate", baseline=baseline)
    if op == "≥":
        passed = value >= threshold - EPSILON
        shown_op = "≥" if passed else "<"
    else:
        passed = value <= threshold + EPSILON
        shown_op = "≤" if passed else ">"
    reason = f"{fmt(value)} {shown_op} {fmt(threshold)}"
    return RuleResult(name, metric, slice_, value, baseline, threshold, passed, reason)


def missing(
    name: str,
    metric: str,
    slice_: str | None,
    whose: str,
    *,
    value: float | None = None,
    baseline: float | None = None,
) -> RuleResult:
    reason = f"metric {label(metric, slice_)!r} could not be computed for {whose}"
    return RuleResult(name, metric, slice_, value, baseline, None, False, reason)


def with_reason(result: RuleResult, reason: str) -> RuleResult:
    return RuleResult(**{**asdict(result), "reason": reason})


def label(metric: str, slice_: str | None) -> str:
    return metric if slice_ is None else f"{metric} [{slice_}]"


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value.is_integer() and abs(value) >= 10_000:
        return f"{int(value):,}"
    return f"{value:.4g}"
