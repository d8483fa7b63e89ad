"""One retraining check: measure every signal, decide, record the decision, explain it.

``run_check`` reads the signals (``kbrefresh.signals``), runs the playbook decision
tree (``kbrefresh.triggers.decide``) and stores a ``retrain_decisions`` row. What to
do about the decision (events, a scheduled refresh, a local refresh) is up to the
caller; the helpers at the bottom say what the playbook asks for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kbrefresh import store
from kbrefresh._text import load_settings_file
from kbrefresh.build.quality import QualityReport
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.refresh.request import REASON_MAX_CHARS, KbName, Reason, SourceSpec
from kbrefresh.retraining import signals as measure
from kbrefresh.retraining.rebrand_run import pending_rename_map
from kbrefresh.retraining.triggers import (
    Action,
    Decision,
    Signal,
    TriggerPolicy,
    decide,
    quality_signal,
)
from kbrefresh.retraining.volume import SourceVolume, source_volume
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

DRIFT_EVENT = "kbrefresh.retraining.drift.detected"
PERFORMANCE_EVENT = "kbrefresh.performance.degraded"
RETRAIN_EVENT = "kbrefresh.retrain.requested"
REBRAND_EVENT = "kbrefresh.rebrand.requested"
KB_RESOURCE_PREFIX = "kbrefresh.kb."
# When a retrain is due later, the refresh is scheduled this many days ahead.
SCHEDULE_DELAY_DAYS = {Action.WITHIN_WEEK: 6.0, Action.SCHEDULE: 20.0}


class CheckOptions(BaseModel):
    """Windows and cut-offs of the measurements (the bands are in ``TriggerPolicy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coverage_cutoff: float = Field(default=0.3, ge=-1, le=1)
    drift_window_days: float = Field(default=7, gt=0)
    drift_reference_days: float = Field(default=28, gt=0)
    satisfaction_window_days: float = Field(default=7, gt=0)
    satisfaction_baseline_days: float = Field(default=28, gt=0)
    n_clusters: int = Field(default=8, ge=2, le=64)
    golden: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = [
                f"check option {'.'.join(map(str, e['loc']))}={e['input']!r} is invalid: "
                f"{e['msg'][:1].lower()}{e['msg'][1:]}"
                for e in exc.errors()
            ]
            raise ConfigError("; ".join(problems)) from exc


def load_check_policy(path: str | Path) -> tuple[TriggerPolicy, CheckOptions]:
    """Read per-KB trigger thresholds and check options from one flat YAML or TOML file.

    Raises:
        ConfigError: the file is missing, does not parse, or has unknown or invalid keys.
    """
    path = Path(path)
    data = load_settings_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a mapping of keys, got {type(data).__name__}")
    known = set(TriggerPolicy.model_fields) | set(CheckOptions.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path.name}: unknown key {unknown[0]!r}; valid keys: "
                          f"{', '.join(sorted(known))}")
    try:
        policy = TriggerPolicy(**{k: v for k, v in data.items() if k in TriggerPolicy.model_fields})
        options = CheckOptions(**{k: v for k, v in data.items() if k in CheckOptions.model_fields})
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from exc
    return policy, options


@dataclass(frozen=True)
class CheckResult:
    """Every measurement of one check, the decision, and the id of its stored row."""

    kb: str
    checked_at: datetime
    decision: Decision
    days_since_build: float | None
    satisfaction: measure.Satisfaction
    golden: measure.GoldenAccuracy | None
    drift: measure.QueryDrift
    volume: SourceVolume | None
    decision_id: int | None = None
    dispatched: dict[str, Any] | None = None
    # A rename map is on record and no version applied it yet (``kbrefresh rebrand``).
    rename_pending: bool = False
    rename_source: str | None = None
    # The last proven version's satisfaction: a fixed reference a slow decline cannot drag.
    proven: measure.ProvenBaseline | None = None

    @property
    def rebrand_due(self) -> bool:
        """A critical satisfaction drop while a rename map waits: the rebrand is overdue."""
        sat = next((s for s in self.decision.signals if s.name == "performance"
                    and s.reason.startswith("satisfaction")), None)
        return self.rename_pending and sat is not None and sat.severity == "critical"

    @property
    def performance(self) -> Signal | None:
        """The most urgent performance signal (satisfaction or golden accuracy)."""
        perf = [s for s in self.decision.signals if s.name == "performance"]
        return min(perf, key=lambda s: s.urgency_rank) if perf else None

    @property
    def retrain_reason(self) -> str:
        driver = self.decision.driver
        return f"{driver.name}: {driver.reason}"[:REASON_MAX_CHARS]

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON stored in ``retrain_decisions.signals``."""
        sat, golden, volume = self.satisfaction, self.golden, self.volume
        return self.decision.as_dict() | {
            "kb": self.kb,
            "checked_at": self.checked_at.isoformat(),
            "days_since_build": self.days_since_build,
            "satisfaction": _plain(sat),
            "golden": _plain(golden) if golden else None,
            "proven": _plain(self.proven) | {"set_at": self.proven.set_at.isoformat()}
            if self.proven else None,
            "drift": self.drift.as_dict(),
            "volume": None if volume is None else _plain(volume) | {
                "new_samples": volume.new_samples, "quality": volume.quality.to_dict()},
        }

    def to_markdown(self) -> str:
        """Render the check for operators: decision, driver, every signal, drift segments."""
        from kbrefresh.retraining.check_report import render_markdown

        return render_markdown(self)


def _plain(value: Any) -> dict[str, Any]:
    return {name: item for name, item in asdict(value).items() if name != "quality"}


def run_check(
    settings: Settings,
    kb: str,
    *,
    source: str | None,
    query: str | None = None,
    policy: TriggerPolicy | None = None,
    options: CheckOptions | None = None,
    now: datetime | None = None,
    record: bool = True,
) -> CheckResult:
    """Measure every signal of ``kb``, decide, and (with ``record``) store the decision.

    Without ``source`` the volume and quality signals are not measured.

    Raises:
        VersionError: ``kb`` does not exist.
        SourceError: ``source`` cannot be read.
    """
    policy = policy or TriggerPolicy()
    options = options or CheckOptions()
    now = now or datetime.now(UTC)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        days = measure.days_since_last_build(conn, kb_id, now)
        sat = measure.satisfaction_windows(conn, kb_id, now, options.satisfaction_window_days,
                                           options.satisfaction_baseline_days)
        drift = measure.query_drift(
            conn, kb_id, now, options.drift_window_days, options.drift_reference_days,
            policy.drift_min_samples, options.n_clusters, coverage_cutoff=options.coverage_cutoff,
            kl_thresholds=(policy.drift_moderate_kl, policy.drift_severe_kl),
        )
        pending = pending_rename_map(conn, kb_id)
        proven = measure.proven_baseline(conn, kb_id)
    golden = measure.golden_accuracy_drop(settings, kb) if options.golden else None
    volume = source_volume(settings, kb, source, query, now=now) if source else None
    decision = decide(_signals(policy, days, sat, golden, drift, volume, proven))
    result = CheckResult(kb, now, decision, days, sat, golden, drift, volume,
                         rename_pending=pending is not None,
                         rename_source=pending.source if pending else None, proven=proven)
    logger.info("check of %r: %s", kb, decision.summary)
    return record_decision(settings, result) if record else result


def _signals(
    policy: TriggerPolicy,
    days: float | None,
    sat: measure.Satisfaction,
    golden: measure.GoldenAccuracy | None,
    drift: measure.QueryDrift,
    volume: SourceVolume | None,
    proven: measure.ProvenBaseline | None = None,
) -> list[Signal]:
    """Signals in tie-break order: the first of equally urgent signals drives.

    Quality comes last: failing, it outranks everything anyway; passing, it says nothing.
    """
    found: list[Signal] = []
    perf = policy.performance(sat.baseline, sat.current, n_baseline=sat.n_baseline,
                              n_current=sat.n_current)
    found.append(replace(perf, reason=f"satisfaction {perf.reason}"))
    if proven is not None:
        perf = policy.performance(proven.satisfaction, sat.current, n_baseline=proven.n_feedback,
                                  n_current=sat.n_current)
        found.append(replace(perf, reason=f"satisfaction against proven v{proven.version} "
                                          f"{perf.reason}"))
    if golden is not None:
        n = golden.n_queries
        perf = policy.performance(golden.baseline, golden.current, n_baseline=n, n_current=n)
        found.append(replace(perf, reason=f"golden {golden.metric} of v{golden.version} "
                                          f"{perf.reason}"))
    found.append(_drift_signal(policy, drift))
    if volume is not None:
        found.append(policy.volume(volume.new_samples))
    found.append(policy.time(days))
    if volume is not None:
        found.append(quality_signal(volume.quality.passed, _quality_reason(volume.quality)))
    return found


def _drift_signal(policy: TriggerPolicy, drift: measure.QueryDrift) -> Signal:
    signal = policy.drift(drift.kl, inconclusive=drift.inconclusive)
    if drift.inconclusive:
        return replace(signal, reason=f"inconclusive: {drift.reason}")
    view = next(v for v in drift.views if v.kl == drift.kl)
    grown = f"; grew: {', '.join(str(g) for g in drift.grown)}" if drift.grown else ""
    return replace(signal, reason=f"{view.view} {signal.reason}{grown}")


def _quality_reason(report: QualityReport) -> str:
    if report.passed:
        return f"{report.doc_count} documents passed the quality checks"
    shown = "; ".join(issue.message for issue in report.errors[:3])
    noun = "error" if len(report.errors) == 1 else "errors"
    return f"{len(report.errors)} quality {noun}: {shown}"


def record_decision(
    settings: Settings,
    result: CheckResult,
    *,
    dispatched: dict[str, Any] | None = None,
    flow_run_id: str | None = None,
) -> CheckResult:
    """Store ``result`` as a ``retrain_decisions`` row; return it with ``decision_id`` set."""
    d = result.decision
    payload = json.loads(json.dumps(result.as_dict(), default=str))
    with connect(settings) as conn:
        row = conn.execute(
            "INSERT INTO retrain_decisions (kb_id, decided_at, action, urgency, driver, summary,"
            " signals, dispatched, flow_run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            (store.get_kb_id(conn, result.kb), result.checked_at, d.action.value, d.urgency,
             d.driver.name, d.summary, Jsonb(payload),
             Jsonb(dispatched) if dispatched is not None else None, flow_run_id),
        ).fetchone()
        conn.commit()
    assert row is not None
    return replace(result, decision_id=int(row["id"]), dispatched=dispatched)


@dataclass(frozen=True)
class PlannedEvent:
    """A Prefect event to emit: name, resource and payload."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]


def kb_resource(kb: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{KB_RESOURCE_PREFIX}{kb}", "prefect.resource.name": kb}


class RetrainPayload(BaseModel):
    """``kbrefresh.retrain.requested``'s payload; kb/source/reason typed as RefreshRequest's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kb: KbName
    reason: Reason
    urgency: str
    action: str
    segment: str | None
    source: SourceSpec | None = None  # left out when unknown: the trigger has a default


def planned_events(
    result: CheckResult, source: str | None, *, request_retrain: bool
) -> tuple[PlannedEvent, ...]:
    """Events the playbook asks for: drift detected, performance degraded, retrain requested.

    A retrain is requested (by event) only for RUN_NOW and WITHIN_24H; later retrains
    are scheduled instead (``SCHEDULE_DELAY_DAYS``). ``source`` is left out of the
    payload when unknown, so the refresh trigger falls back to its default source.
    """
    kb, drift, perf = result.kb, result.drift, result.performance
    events = []
    if drift.severity in ("moderate", "severe"):
        events.append(PlannedEvent(DRIFT_EVENT, kb_resource(kb), {
            "kb": kb, "kl": drift.kl, "severity": drift.severity,
            "segments": [str(g) for g in drift.grown]}))
    if perf is not None and perf.severity in ("warning", "critical"):
        events.append(PlannedEvent(PERFORMANCE_EVENT, kb_resource(kb), {
            "kb": kb, "drop_pct": perf.value, "band": perf.severity, "reason": perf.reason}))
    action = result.decision.action
    if request_retrain and result.rebrand_due:  # the rebrand replaces the plain retrain
        events.append(PlannedEvent(REBRAND_EVENT, kb_resource(kb), {
            "kb": kb, "reason": f"rebrand: {result.retrain_reason}"[:REASON_MAX_CHARS]}
            | ({"source": src} if (src := result.rename_source or source) else {})))
    elif request_retrain and action in (Action.RUN_NOW, Action.WITHIN_24H):
        payload = RetrainPayload(kb=kb, reason=result.retrain_reason, source=source,
                                 urgency=result.decision.urgency, action=action.value,
                                 segment=drift.segment)
        events.append(PlannedEvent(RETRAIN_EVENT, kb_resource(kb), payload.model_dump(
            exclude={"source"} if source is None else set())))
    return tuple(events)

