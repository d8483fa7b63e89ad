"""Post-deploy checks: what one check measured and the pure judgement of it.

Measuring (Postgres, the golden re-run, drift) lives in :mod:`kbrefresh.release.watch`;
this module only judges numbers against a :class:`ReleasePolicy`, so every criterion
is a small pure function pinned by unit tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import median_abs_deviation

from kbrefresh.release.policy import ReleasePolicy

PASS, WARN, FAIL, NO_DATA = "pass", "warn", "fail", "no data"
_ORDER = (PASS, NO_DATA, WARN, FAIL)


@dataclass(frozen=True)
class Measurements:
    """What one check saw of the live version (and, side by side, the previous one)."""

    version: int
    searches: int
    error_rate: float | None
    p95_latency_ms: float | None
    empty_rate: float | None
    low_similarity_rate: float | None
    satisfaction: float | None
    feedback: int
    baseline_satisfaction: float | None  # production baseline, else the window before publish
    golden_accuracy: float | None = None
    validated_accuracy: float | None = None
    drift_kl: float | None = None
    drift_severity: str | None = None
    anomalies: tuple[str, ...] = ()
    previous_version: int | None = None
    previous: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Criterion:
    """One rollback criterion's result: ``str()`` reads like a line of the history."""

    name: str
    outcome: str
    value: float | None
    threshold: float | None
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass(frozen=True)
class Judgement:
    criteria: tuple[Criterion, ...]

    @property
    def outcome(self) -> str:
        if not self.criteria:
            return NO_DATA
        worst = max(_ORDER.index(c.outcome) for c in self.criteria)
        return _ORDER[worst] if worst else PASS

    @property
    def failed(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if c.outcome == FAIL)

    @property
    def rollback(self) -> bool:
        return bool(self.failed)

    def reason(self) -> str:
        """The failed criteria in one line, for the routing history and notifications."""
        return "; ".join(str(c) for c in self.failed) or "all criteria passed"


def error_rate_criterion(m: Measurements, policy: ReleasePolicy) -> Criterion:
    limit = policy.max_error_rate
    if m.error_rate is None or m.searches < policy.min_searches:
        return Criterion("error_rate", NO_DATA, m.error_rate, limit,
                         f"{m.searches} searches, need {policy.min_searches}")
    outcome = FAIL if m.error_rate > limit else PASS
    verb = "above" if outcome == FAIL else "within"
    return Criterion("error_rate", outcome, m.error_rate, limit,
                     f"{m.error_rate:.1%} of {m.searches} searches failed, {verb} {limit:.0%}")


def latency_criterion(m: Measurements, policy: ReleasePolicy) -> Criterion:
    limit = policy.max_p95_latency_ms
    if m.p95_latency_ms is None or m.searches < policy.min_searches:
        return Criterion("p95_latency", NO_DATA, m.p95_latency_ms, limit,
                         f"{m.searches} searches, need {policy.min_searches}")
    outcome = FAIL if m.p95_latency_ms > limit else PASS
    verb = "above" if outcome == FAIL else "within"
    return Criterion("p95_latency", outcome, m.p95_latency_ms, limit,
                     f"p95 {m.p95_latency_ms:.0f} ms, {verb} {limit:.0f} ms")


def accuracy_criterion(m: Measurements, policy: ReleasePolicy) -> Criterion:
    name = f"golden_{policy.accuracy_metric}"
    if m.golden_accuracy is None:
        return Criterion(name, NO_DATA, None, None, "golden queries not re-run or not comparable")
    limits = []
    if m.validated_accuracy is not None:
        limits.append((m.validated_accuracy - policy.accuracy_margin,
                       f"validated {m.validated_accuracy:.3f} - {policy.accuracy_margin:.2f}"))
    if policy.accuracy_floor is not None:
        limits.append((policy.accuracy_floor, f"floor {policy.accuracy_floor:.3f}"))
    if not limits:
        return Criterion(name, NO_DATA, m.golden_accuracy, None, "no validated value and no floor")
    threshold, why = max(limits)
    outcome = FAIL if m.golden_accuracy < threshold - 1e-12 else PASS
    verb = "below" if outcome == FAIL else "at or above"
    return Criterion(name, outcome, m.golden_accuracy, threshold,
                     f"{m.golden_accuracy:.3f} {verb} {threshold:.3f} ({why})")


def satisfaction_criterion(m: Measurements, policy: ReleasePolicy) -> Criterion:
    base = m.baseline_satisfaction
    if m.satisfaction is None or base is None or base <= 0 or m.feedback < policy.min_feedback:
        return Criterion("satisfaction", NO_DATA, m.satisfaction, base,
                         f"{m.feedback} ratings, need {policy.min_feedback} and a baseline")
    drop = (base - m.satisfaction) / base
    if drop > policy.satisfaction_critical_drop:
        outcome = FAIL
    elif drop > policy.satisfaction_warning_drop:
        outcome = WARN
    else:
        outcome = PASS
    return Criterion("satisfaction", outcome, m.satisfaction, base,
                     f"{m.satisfaction:.2f} vs baseline {base:.2f} ({drop:+.1%} drop)")


def low_similarity_criterion(m: Measurements, policy: ReleasePolicy) -> Criterion | None:
    limit = policy.max_low_similarity_rate
    if limit is None:
        return None
    if m.low_similarity_rate is None or m.searches < policy.min_searches:
        return Criterion("low_similarity_rate", NO_DATA, m.low_similarity_rate, limit,
                         f"{m.searches} searches, need {policy.min_searches}")
    outcome = FAIL if m.low_similarity_rate > limit else PASS
    return Criterion("low_similarity_rate", outcome, m.low_similarity_rate, limit,
                     f"{m.low_similarity_rate:.1%} of answers empty or weak (limit {limit:.0%})")


def observations(m: Measurements) -> list[Criterion]:
    """Drift and anomalies are reported as warnings: they inform, they never roll back."""
    seen = []
    if m.drift_severity in ("moderate", "severe"):
        seen.append(Criterion("query_drift", WARN, m.drift_kl, None,
                              f"{m.drift_severity} query drift (KL {m.drift_kl:.3f})"))
    if m.anomalies:
        seen.append(Criterion("anomalies", WARN, float(len(m.anomalies)), None,
                              "; ".join(m.anomalies)))
    return seen


def judge(m: Measurements, policy: ReleasePolicy) -> Judgement:
    """Apply every rollback criterion of ``policy`` to one check's measurements."""
    criteria = [error_rate_criterion(m, policy), latency_criterion(m, policy),
                accuracy_criterion(m, policy), satisfaction_criterion(m, policy)]
    low = low_similarity_criterion(m, policy)
    if low is not None:
        criteria.append(low)
    return Judgement(tuple(criteria + observations(m)))


def anomalous_buckets(reference: npt.ArrayLike, current: npt.ArrayLike, z: float) -> list[int]:
    """Indexes of ``current`` hourly counts whose robust z against ``reference`` passes ``z``."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size < 3 or cur.size == 0:
        return []
    mad = median_abs_deviation(ref, scale="normal")
    # A flat reference (MAD 0) makes every change infinitely surprising: floor it at 1.
    scores = (cur - np.median(ref)) / max(float(mad), 1.0)
    return [int(i) for i in np.flatnonzero(np.abs(scores) > z)]
