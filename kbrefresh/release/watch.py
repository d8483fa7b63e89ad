"""One post-deploy check of the live version: measure, judge, record, and act.

Shared by the ``post-deploy-monitor`` flow and ``kbrefresh monitor``. A failed rollback
criterion rolls back to the previous kept version (history row names the criterion and
its values); a version live for the whole validation period without a failed check
becomes ``proven``: the KB's production baseline is taken from it and the version it
replaced is archived (exported first, see :mod:`kbrefresh.release.archive`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from kbrefresh import store
from kbrefresh._faults import fault_point
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.gate.evaluation import run_gate
from kbrefresh.release import archive
from kbrefresh.release.monitor import Judgement, Measurements, anomalous_buckets, judge
from kbrefresh.release.policy import ReleasePolicy
from kbrefresh.release.traffic import window_samples
from kbrefresh.retraining.signals import query_drift
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.store import VersionInfo

logger = logging.getLogger(__name__)

ROLLED_BACK, PROVEN, NONE, SUPERSEDED, REPORT_ONLY = (
    "rolled_back", "proven", "none", "superseded", "report only")


@dataclass(frozen=True)
class CheckResult:
    """What one check saw, decided and did."""

    kb: str
    version: int
    checked_at: datetime
    action: str
    window: tuple[datetime, datetime] | None = None
    measurements: Measurements | None = None
    judgement: Judgement | None = None
    check_id: int | None = None
    previous_version: int | None = None
    live_after: int | None = None
    archived: tuple[int, ...] = ()
    mlflow_run_id: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def outcome(self) -> str:
        return self.judgement.outcome if self.judgement else SUPERSEDED

    def summary(self) -> str:
        if self.judgement is None:
            return f"{self.kb!r} v{self.version} is no longer live: check skipped"
        head = f"{self.kb!r} v{self.version}: {self.outcome}"
        if self.action == ROLLED_BACK:
            return f"{head}; rolled back to v{self.live_after} ({self.judgement.reason()})"
        if self.action == PROVEN:
            return f"{head}; proven" + (f", archived v{list(self.archived)}" if self.archived else "")
        return head + "".join(f"; {n}" for n in self.notes)


def run_monitor_check(settings: Settings, kb: str, *, policy: ReleasePolicy, now: datetime,
                      version: int | None = None, act: bool = True,
                      flow_run_id: str | None = None) -> CheckResult:
    """Check the live version of ``kb`` (skipped when ``version`` is given and no longer live).

    Raises:
        VersionError: unknown KB or nothing live.
    """
    if now.tzinfo is None:
        raise ConfigError(f"now must be timezone-aware, got {now!r}; use datetime.now(UTC)")
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        if live is None:
            raise VersionError(f"knowledge base {kb!r} has no live version to monitor")
        if version is not None and version != live:
            return CheckResult(kb, version, now, SUPERSEDED, live_after=live)
        row = store.version_row(conn, kb_id, live)
        published_at, previous = _published(conn, kb_id, live, row)
        start = _window_start(conn, kb_id, live, published_at, now)
        m = measure(conn, kb_id, live, previous, (start, now), published_at, policy)
    m = _with_golden(settings, kb, m, row, policy)
    judgement = judge(m, policy)
    result = CheckResult(kb, live, now, NONE if act else REPORT_ONLY, (start, now), m, judgement,
                         None, previous, live, mlflow_run_id=row.mlflow_run_id)
    # The check row and the rollback it calls for commit together: a monitor killed in
    # between left a failed check recorded and nothing rolled back, and the next check's
    # window started after it, so the bad version stayed live (found by the kill harness).
    with connect(settings) as conn:
        result = replace(result, check_id=_record(conn, kb_id, live, now, (start, now), m,
                                                  judgement, flow_run_id))
        if act and judgement.rollback:
            fault_point("monitor_judged")
            result = _roll_back(conn, kb, kb_id, result, flow_run_id)
        conn.execute("UPDATE monitor_checks SET action = %s WHERE id = %s",
                     (result.action, result.check_id))
        conn.commit()
    if act and not judgement.rollback and now - published_at >= policy.validation_period:
        result = _prove(settings, kb, kb_id, result, policy, now)
        with connect(settings, autocommit=True) as conn:
            conn.execute("UPDATE monitor_checks SET action = %s WHERE id = %s",
                         (result.action, result.check_id))
    return result


def _published(conn: store.Conn, kb_id: int, version: int,
               row: VersionInfo) -> tuple[datetime, int | None]:
    """When ``version`` last went live, and from which version (the rollback target)."""
    hist = conn.execute(
        "SELECT from_version, changed_at FROM kb_routing_history WHERE kb_id = %s AND"
        " to_version = %s ORDER BY id DESC LIMIT 1", (kb_id, version)).fetchone()
    if hist is not None:
        return hist["changed_at"], hist["from_version"]
    return row.live_at or row.created_at, None


def _window_start(conn: store.Conn, kb_id: int, version: int, published_at: datetime,
                  now: datetime) -> datetime:
    last = conn.execute(
        "SELECT max(window_end) AS t FROM monitor_checks WHERE kb_id = %s AND version = %s"
        " AND window_end > %s", (kb_id, version, published_at)).fetchone()
    start = last["t"] if last and last["t"] is not None else published_at
    return start if start < now else published_at if published_at < now else now - timedelta(1)


def measure(conn: store.Conn, kb_id: int, version: int, previous: int | None,
            window: tuple[datetime, datetime], published_at: datetime,
            policy: ReleasePolicy) -> Measurements:
    """Measure ``version`` in ``window`` against the reference window before the publish."""
    start, end = window
    cur = window_samples(conn, kb_id, version, start, end)
    ref_start = published_at - policy.reference_window
    baseline = _baseline(conn, kb_id)
    base_sat = baseline.get("satisfaction")
    if base_sat is None and previous is not None:
        base_sat = window_samples(conn, kb_id, previous, ref_start, published_at).satisfaction
    side: dict[str, float | None] = {}
    if previous is not None:
        prev = window_samples(conn, kb_id, previous, start, end)
        if prev.searches:  # canary or A/B: the old version still serves part of the traffic
            side = prev.summary(policy.low_similarity_cutoff)
    drift = query_drift(conn, kb_id, end, window_days=max((end - start) / timedelta(days=1), 1e-6),
                        reference_days=policy.reference_window / timedelta(days=1))
    return Measurements(
        version=version, searches=cur.searches, error_rate=cur.error_rate,
        p95_latency_ms=cur.p95_latency_ms, empty_rate=cur.empty_rate,
        low_similarity_rate=cur.low_similarity_rate(policy.low_similarity_cutoff),
        satisfaction=cur.satisfaction, feedback=cur.feedback_count,
        baseline_satisfaction=base_sat, drift_kl=drift.kl, drift_severity=drift.severity,
        anomalies=tuple(_anomalies(conn, kb_id, (ref_start, published_at), window, policy)),
        previous_version=previous, previous=side)


def _anomalies(conn: store.Conn, kb_id: int, reference: tuple[datetime, datetime],
               window: tuple[datetime, datetime], policy: ReleasePolicy) -> list[str]:
    """Hourly search and failure counts of the window that sit beyond a robust z-score."""
    series: list[list[tuple[float, float]]] = []
    for start, end in (reference, window):
        rows = conn.execute(
            "SELECT count(*) AS searches, count(error) AS failed FROM query_log WHERE kb_id = %s"
            " AND ts >= %s AND ts < %s GROUP BY date_bin('1 hour', ts, %s) ORDER BY 1",
            (kb_id, start, end, start)).fetchall()
        series.append([(float(r["searches"]), float(r["failed"])) for r in rows])
    found = []
    for column, what in ((0, "searches"), (1, "failed searches")):
        ref, cur = ([p[column] for p in s] for s in series)
        for i in anomalous_buckets(ref, cur, policy.anomaly_z):
            found.append(f"hourly {what} {cur[i]:.0f} beyond robust z {policy.anomaly_z:g} "
                         f"(reference median {sorted(ref)[len(ref) // 2]:.0f})")
    return found


def _with_golden(settings: Settings, kb: str, m: Measurements, row: VersionInfo,
                 policy: ReleasePolicy) -> Measurements:
    if not policy.golden_check:
        return m
    evaluation = (row.verdict or {}).get("evaluation") or {}
    validated = ((evaluation.get("candidate") or {}).get("overall") or {}).get(policy.accuracy_metric)
    measured = run_gate(settings, kb, m.version, against=None).evaluation
    current = measured.candidate.overall.get(policy.accuracy_metric)
    if evaluation and (measured.golden, measured.n_queries) != (
            evaluation.get("golden"), evaluation.get("n_queries")):
        validated = None  # golden sets changed since validation: only the floor applies
    return Measurements(**(m.as_dict() | {
        "golden_accuracy": None if current is None else float(current),
        "validated_accuracy": None if validated is None else float(validated)}))


def _baseline(conn: store.Conn, kb_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT metrics FROM kb_production_baseline WHERE kb_id = %s",
                       (kb_id,)).fetchone()
    return dict(row["metrics"]) if row else {}


def _record(conn: store.Conn, kb_id: int, version: int, now: datetime,
            window: tuple[datetime, datetime], m: Measurements, judgement: Judgement,
            flow_run_id: str | None) -> int:
    row = conn.execute(
        "INSERT INTO monitor_checks (kb_id, version, checked_at, window_start, window_end,"
        " outcome, action, measurements, criteria, flow_run_id) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (kb_id, version, now, window[0], window[1], judgement.outcome, NONE,
         json.dumps(m.as_dict()), json.dumps([vars(c) for c in judgement.criteria]), flow_run_id),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def _roll_back(conn: store.Conn, kb: str, kb_id: int, result: CheckResult,
               flow_run_id: str | None) -> CheckResult:
    """Roll back inside the caller's transaction (the one that records the check)."""
    assert result.judgement is not None
    reason = f"post-deploy monitor: {result.judgement.reason()}"
    try:
        change = routing.rollback(conn, kb_id, kb, reason=reason, flow_run_id=flow_run_id)
    except VersionError as exc:
        logger.error("monitor of %r: criteria failed but no rollback possible: %s", kb, exc)
        return _replace(result, notes=(f"rollback impossible: {exc}",))
    return _replace(result, action=ROLLED_BACK, live_after=change.to_version)


def _prove(settings: Settings, kb: str, kb_id: int, result: CheckResult, policy: ReleasePolicy,
           now: datetime) -> CheckResult:
    assert result.measurements is not None
    version, m = result.version, result.measurements
    with connect(settings, autocommit=True) as conn:
        failed = conn.execute(
            "SELECT count(*) AS n FROM monitor_checks WHERE kb_id = %s AND version = %s"
            " AND outcome = 'fail'", (kb_id, version)).fetchone()
        if failed and failed["n"]:
            return _replace(result, notes=(f"not proven: {failed['n']} failed checks",))
        totals = window_samples(conn, kb_id, version, now - policy.validation_period, now)
        metrics = totals.summary(policy.low_similarity_cutoff) | {
            "golden_accuracy": m.golden_accuracy}
        with conn.transaction():
            conn.execute("UPDATE kb_versions SET status = 'proven', proven_at = %s WHERE kb_id = %s"
                         " AND version = %s", (now, kb_id, version))
            conn.execute(
                "INSERT INTO kb_production_baseline (kb_id, version, metrics, set_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (kb_id) DO UPDATE SET"
                " version = EXCLUDED.version, metrics = EXCLUDED.metrics, set_at = EXCLUDED.set_at",
                (kb_id, version, json.dumps(metrics | {"metric": policy.accuracy_metric}), now))
        replaced = result.previous_version
        status = store.version_row(conn, kb_id, replaced).status if replaced else None
    archived: tuple[int, ...] = ()
    if replaced is not None and status == "retired":
        archive.archive_version(settings, kb, replaced, now=now, retention=policy.archive_retention)
        archived = (replaced,)
    return _replace(result, action=PROVEN, archived=archived)


def _replace(result: CheckResult, **changes: Any) -> CheckResult:
    return replace(result, **changes)
