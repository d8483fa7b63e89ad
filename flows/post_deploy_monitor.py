"""The post-deploy monitor: one check of a published version, with automatic rollback."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, Field

from kbrefresh.release.report import notice_for
from kbrefresh.release.watch import ROLLED_BACK
from kbrefresh.store import validate_kb_name
from tasks import sync_registry_aliases
from tasks.monitor import (
    check_live_version,
    emit_rollback_event,
    log_check_metrics,
    policy_for,
    report_check,
    schedule_monitoring,
)
from tasks.notify import send_notice


class MonitorParameters(BaseModel):
    """Which knowledge base and version to check, under which release policy."""

    kb: Annotated[str, AfterValidator(validate_kb_name)] = Field(
        min_length=1, max_length=55, description="Knowledge base name")
    version: int | None = Field(
        default=None, ge=1, description="Version published; the run is skipped if it is no "
                                        "longer live. Empty: whatever is live.")
    policy_file: str | None = Field(
        default=None, min_length=1, description="YAML/TOML release policy (criteria, intervals)")


@flow(name="post-deploy-monitor")
def post_deploy_monitor(params: MonitorParameters) -> dict[str, Any]:
    """Check a freshly published knowledge-base version and roll it back when it misbehaves.

    Scheduled at every publish (swap, rollout promotion, rollback): every 2 h for 24 h, then
    daily until the 7-day validation period ends (intervals from the release policy); a later
    publish cancels the pending runs. Each run measures the live version since the previous
    check: error rate, p95 latency, satisfaction against the production baseline, golden
    accuracy (re-run) against its validated value, empty / low-similarity answers, query drift
    and hourly anomalies, and the previous version side by side while it still has traffic.
    A failed criterion (defaults: error rate > 5%, p95 > 5 s, golden accuracy more than 10
    points below validated, satisfaction drop > 10%) rolls back to the previous kept version,
    emits kbrefresh.version.rolled_back, notifies and schedules monitoring of the restored
    version. A version clean for the whole period becomes proven: production baseline
    updated, the replaced version archived (Parquet on its MLflow run). Artifact:
    kbrefresh-monitor-<kb>. Notification failures are logged, never fail the run.
    """
    run_id = flow_run.id
    policy = policy_for(params.policy_file)
    result = check_live_version(params.kb, params.version, params.policy_file, run_id)
    if result.judgement is None:
        return {"kb": params.kb, "version": params.version, "action": result.action}
    out: dict[str, Any] = {"kb": params.kb, "version": result.version, "action": result.action,
                           "outcome": result.outcome, "check_id": result.check_id,
                           "mlflow_warning": log_check_metrics(result),
                           "artifact": report_check(result)}
    if result.action == ROLLED_BACK:
        out["event"] = emit_rollback_event(result, run_id)
        sync_registry_aliases(params.kb)
        assert result.live_after is not None
        out["schedule"] = schedule_monitoring(params.kb, result.live_after,
                                              f"monitor rollback of v{result.version}",
                                              params.policy_file)
    notice = notice_for(result, {"prefect_flow_run": str(run_id)} if run_id else {})
    if notice is not None:
        out["notification_problems"] = send_notice(notice, policy.notify_blocks)
    return out
