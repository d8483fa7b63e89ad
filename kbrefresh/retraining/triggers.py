"""Retraining signals and the playbook decision tree.

Each ``*_signal`` function turns one measurement into a ``Signal`` with an
``Action``; ``decide`` picks the most urgent one. Bands and their edges
(playbook defaults, all configurable through ``TriggerPolicy``):

============  ===========================  ===========================================
signal        band                         action
============  ===========================  ===========================================
time          never built / days >= 30     RUN_NOW
              days < 30                    MONITOR
performance   drop > 20 %                  RUN_NOW       (severity "critical")
              10 % < drop <= 20 %          WITHIN_24H    (severity "critical")
              5 % <= drop <= 10 %          INVESTIGATE   (severity "warning")
              drop < 5 %                   MONITOR       (severity "ok")
              no baseline / too few        MONITOR       (severity "inconclusive")
drift         KL > 0.5                     WITHIN_WEEK   (severity "severe")
              0.1 <= KL <= 0.5             SCHEDULE      (severity "moderate")
              KL < 0.1                     MONITOR       (severity "none")
              inconclusive / no KL         MONITOR       (severity "inconclusive")
volume        n > 10,000                   RUN_NOW
              5,000 <= n <= 10,000         SCHEDULE
              n < 5,000                    WAIT
quality       failed                       SKIP_BAD_DATA (overrides everything, alerts)
============  ===========================  ===========================================

Drops are percentages of the baseline of a higher-is-better metric, rounded to
1e-9 so that 1.0 → 0.9 is exactly 10 % (warning, not critical).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kbrefresh.errors import ConfigError
from kbrefresh.retraining.drift import classify_kl

DEFAULT_EVERY_DAYS = 30.0
DEFAULT_PERF_PCT = (5.0, 10.0, 20.0)  # warning, critical, urgent
DEFAULT_PERF_MIN_SAMPLES = 30
DEFAULT_KL = (0.1, 0.5)  # moderate, severe
DEFAULT_VOLUME = (5_000, 10_000)  # schedule, now


class Action(Enum):
    """What to do; ``urgency_rank`` 0 is the most urgent (bad data blocks everything)."""

    SKIP_BAD_DATA = "skip_bad_data"
    RUN_NOW = "run_now"
    WITHIN_24H = "within_24h"
    WITHIN_WEEK = "within_week"
    SCHEDULE = "schedule"
    INVESTIGATE = "investigate"
    MONITOR = "monitor"
    WAIT = "wait"

    @property
    def urgency_rank(self) -> int:
        return list(Action).index(self)

    @property
    def urgency(self) -> str:
        """Operator-facing label: blocked, urgent, high, medium, normal, low, none."""
        return _URGENCY[self]

    @property
    def retrains(self) -> bool:
        """True when the action starts (now or later) a rebuild of the knowledge base."""
        return self in {Action.RUN_NOW, Action.WITHIN_24H, Action.WITHIN_WEEK, Action.SCHEDULE}


_URGENCY = {
    Action.SKIP_BAD_DATA: "blocked",
    Action.RUN_NOW: "urgent",
    Action.WITHIN_24H: "high",
    Action.WITHIN_WEEK: "medium",
    Action.SCHEDULE: "normal",
    Action.INVESTIGATE: "low",
    Action.MONITOR: "none",
    Action.WAIT: "none",
}


@dataclass(frozen=True)
class Signal:
    """One trigger's reading; ``value`` is days, drop %, KL or a count (None if unknown)."""

    name: str
    value: float | None
    severity: str
    action: Action
    reason: str
    urgency_rank: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "urgency_rank", self.action.urgency_rank)


@dataclass(frozen=True)
class Decision:
    """The chosen action, the signal that drove it, and every signal considered.

    ``alert`` is True when the data failed quality checks or performance is critical.
    """

    action: Action
    urgency: str
    driver: Signal
    signals: tuple[Signal, ...]
    summary: str
    alert: bool

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form for the ``retrain_decisions`` table."""
        return {
            "action": self.action.value,
            "urgency": self.urgency,
            "driver": self.driver.name,
            "alert": self.alert,
            "summary": self.summary,
            "signals": [
                {
                    "name": s.name,
                    "value": s.value,
                    "severity": s.severity,
                    "action": s.action.value,
                    "reason": s.reason,
                }
                for s in self.signals
            ],
        }


class TriggerPolicy(BaseModel):
    """Trigger thresholds; constructing one with bad values raises ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_days: float = Field(default=DEFAULT_EVERY_DAYS, gt=0)
    perf_warning_pct: float = Field(default=DEFAULT_PERF_PCT[0], ge=0, le=100)
    perf_critical_pct: float = Field(default=DEFAULT_PERF_PCT[1], ge=0, le=100)
    perf_urgent_pct: float = Field(default=DEFAULT_PERF_PCT[2], ge=0, le=100)
    perf_min_samples: int = Field(default=DEFAULT_PERF_MIN_SAMPLES, ge=1)
    drift_moderate_kl: float = Field(default=DEFAULT_KL[0], ge=0)
    drift_severe_kl: float = Field(default=DEFAULT_KL[1], ge=0)
    drift_min_samples: int = Field(default=200, ge=1)
    volume_schedule: int = Field(default=DEFAULT_VOLUME[0], ge=0)
    volume_now: int = Field(default=DEFAULT_VOLUME[1], ge=0)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from exc

    @model_validator(mode="after")
    def _ordered(self) -> TriggerPolicy:
        _check_ascending(
            ("perf_warning_pct", self.perf_warning_pct),
            ("perf_critical_pct", self.perf_critical_pct),
            ("perf_urgent_pct", self.perf_urgent_pct),
        )
        _check_ascending(
            ("drift_moderate_kl", self.drift_moderate_kl),
            ("drift_severe_kl", self.drift_severe_kl),
        )
        _check_ascending(("volume_schedule", self.volume_schedule), ("volume_now", self.volume_now))
        return self

    def time(self, days_since_last_build: float | None) -> Signal:
        """``time_signal`` with this policy's period."""
        return time_signal(days_since_last_build, self.every_days)

    def performance(
        self, baseline: float | None, current: float | None, *, n_baseline: int, n_current: int
    ) -> Signal:
        """``performance_signal`` with this policy's bands and minimum sample size."""
        return performance_signal(
            baseline,
            current,
            n_baseline=n_baseline,
            n_current=n_current,
            min_samples=self.perf_min_samples,
            warning_pct=self.perf_warning_pct,
            critical_pct=self.perf_critical_pct,
            urgent_pct=self.perf_urgent_pct,
        )

    def drift(self, kl: float | None, *, inconclusive: bool) -> Signal:
        """``drift_signal`` with this policy's KL bands."""
        return drift_signal(
            kl,
            inconclusive=inconclusive,
            moderate_kl=self.drift_moderate_kl,
            severe_kl=self.drift_severe_kl,
        )

    def volume(self, new_samples: int) -> Signal:
        """``volume_signal`` with this policy's sample counts."""
        return volume_signal(
            new_samples, schedule_at=self.volume_schedule, now_above=self.volume_now
        )


def _check_ascending(*named: tuple[str, float]) -> None:
    for (low_name, low), (high_name, high) in itertools.pairwise(named):
        if not low < high:
            raise ConfigError(f"{low_name} ({low!r}) must be below {high_name} ({high!r})")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            valid = ", ".join(TriggerPolicy.model_fields)
            problems.append(f"unknown trigger policy key {key!r}; valid keys: {valid}")
        elif key:
            msg = error["msg"][:1].lower() + error["msg"][1:]
            problems.append(f"trigger policy {key}={error['input']!r} is invalid: {msg}")
        else:
            problems.append(f"invalid trigger policy: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def time_signal(
    days_since_last_build: float | None, every_days: float = DEFAULT_EVERY_DAYS
) -> Signal:
    """Due when ``days_since_last_build >= every_days``; None (never built) runs now."""
    if not every_days > 0:
        raise ConfigError(f"expected every_days > 0, got {every_days!r}")
    if days_since_last_build is None:
        return Signal("time", None, "never_built", Action.RUN_NOW, "no build yet")
    if math.isnan(days_since_last_build) or days_since_last_build < 0:
        raise ConfigError(
            f"expected days_since_last_build >= 0 or None, got {days_since_last_build!r}"
        )
    days = float(days_since_last_build)
    if days >= every_days:
        reason = f"last build {days:g} days ago, refresh every {every_days:g} days"
        return Signal("time", days, "due", Action.RUN_NOW, reason)
    reason = f"last build {days:g} days ago, next refresh in {every_days - days:g} days"
    return Signal("time", days, "ok", Action.MONITOR, reason)


def performance_signal(
    baseline: float | None,
    current: float | None,
    *,
    n_baseline: int,
    n_current: int,
    min_samples: int = DEFAULT_PERF_MIN_SAMPLES,
    warning_pct: float = DEFAULT_PERF_PCT[0],
    critical_pct: float = DEFAULT_PERF_PCT[1],
    urgent_pct: float = DEFAULT_PERF_PCT[2],
) -> Signal:
    """Band the relative drop of a higher-is-better metric, (baseline - current) / baseline."""
    _check_ascending(
        ("warning_pct", warning_pct), ("critical_pct", critical_pct), ("urgent_pct", urgent_pct)
    )
    for name, value in (("baseline", baseline), ("current", current)):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"expected a finite {name} or None, got {value!r}")
    if baseline is None or current is None:
        missing = "baseline" if baseline is None else "current value"
        return _inconclusive_perf(f"no {missing} yet")
    if baseline <= 0:
        return _inconclusive_perf(f"baseline {baseline!r} is not positive; a drop % is undefined")
    if min(n_baseline, n_current) < min_samples:
        return _inconclusive_perf(
            f"too few samples: baseline {n_baseline}, current {n_current}, need {min_samples} each"
        )
    drop = round((baseline - current) / baseline * 100, 9)
    change = f"dropped {drop:.1f}% ({baseline:g} → {current:g})"
    if drop > urgent_pct:
        return Signal(
            "performance", drop, "critical", Action.RUN_NOW, f"{change} > {urgent_pct:g}%"
        )
    if drop > critical_pct:
        reason = f"{change} > {critical_pct:g}%"
        return Signal("performance", drop, "critical", Action.WITHIN_24H, reason)
    if drop >= warning_pct:
        reason = f"{change}, warning band {warning_pct:g}-{critical_pct:g}%: investigate first"
        return Signal("performance", drop, "warning", Action.INVESTIGATE, reason)
    return Signal("performance", drop, "ok", Action.MONITOR, f"{change} < {warning_pct:g}%")


def _inconclusive_perf(reason: str) -> Signal:
    return Signal("performance", None, "inconclusive", Action.MONITOR, reason)


def drift_signal(
    kl: float | None,
    *,
    inconclusive: bool,
    moderate_kl: float = DEFAULT_KL[0],
    severe_kl: float = DEFAULT_KL[1],
) -> Signal:
    """Band query drift by KL; an inconclusive report or missing KL never alarms."""
    _check_ascending(("moderate_kl", moderate_kl), ("severe_kl", severe_kl))
    if kl is None or inconclusive:
        return Signal("drift", kl, "inconclusive", Action.MONITOR, "drift report is inconclusive")
    severity = classify_kl(kl, (moderate_kl, severe_kl))
    action = {"severe": Action.WITHIN_WEEK, "moderate": Action.SCHEDULE}.get(
        severity, Action.MONITOR
    )
    reason = f"KL {kl:.3f} is {severity} (moderate >= {moderate_kl:g}, severe > {severe_kl:g})"
    return Signal("drift", float(kl), severity, action, reason)


def volume_signal(
    new_samples: int,
    *,
    schedule_at: int = DEFAULT_VOLUME[0],
    now_above: int = DEFAULT_VOLUME[1],
) -> Signal:
    """More than ``now_above`` new samples: run now; ``schedule_at``..``now_above``: schedule."""
    _check_ascending(("schedule_at", schedule_at), ("now_above", now_above))
    if new_samples < 0:
        raise ConfigError(f"expected new_samples >= 0, got {new_samples!r}")
    value = float(new_samples)
    if new_samples > now_above:
        reason = f"{new_samples} new samples > {now_above}"
        return Signal("volume", value, "high", Action.RUN_NOW, reason)
    if new_samples >= schedule_at:
        reason = f"{new_samples} new samples in {schedule_at}..{now_above}"
        return Signal("volume", value, "medium", Action.SCHEDULE, reason)
    reason = f"{new_samples} new samples < {schedule_at}: wait for more"
    return Signal("volume", value, "low", Action.WAIT, reason)


def quality_signal(passed: bool, reason: str = "") -> Signal:
    """Bad data blocks every retrain: the decision becomes SKIP_BAD_DATA with an alert."""
    if passed:
        return Signal("quality", None, "ok", Action.MONITOR, reason or "data quality checks passed")
    return Signal(
        "quality", None, "bad_data", Action.SKIP_BAD_DATA, reason or "data quality failed"
    )


def decide(signals: Sequence[Signal]) -> Decision:
    """Pick the most urgent signal's action; ties go to the earliest signal given.

    Raises:
        ConfigError: no signals were given.
    """
    if not signals:
        raise ConfigError("expected at least one signal to decide on")
    driver = min(signals, key=lambda s: s.urgency_rank)
    action = driver.action
    alert = action is Action.SKIP_BAD_DATA or any(s.severity == "critical" for s in signals)
    summary = f"{action.value} ({action.urgency}): {driver.name}: {driver.reason}"
    return Decision(action, action.urgency, driver, tuple(signals), summary, alert)
