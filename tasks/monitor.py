"""Tasks of the post-deploy monitor: schedule its runs, check, emit, report, notify."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Scheduled

from kbrefresh.release.policy import ReleasePolicy, check_times, load_release_policy
from kbrefresh.release.report import check_markdown, check_metrics
from kbrefresh.release.watch import ROLLED_BACK, CheckResult, run_monitor_check
from tasks._common import TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings

MONITOR_TAG = "post-deploy-monitor"
_EVENT_NAMESPACE = uuid.UUID("6b627265-6672-6573-6800-00000000000d")


def kb_tag(kb: str) -> str:
    return f"kbrefresh-monitor:{kb}"


def policy_for(policy_file: str | None) -> ReleasePolicy:
    return load_release_policy(policy_file) if policy_file else ReleasePolicy()


@task(**TASK_OPTIONS)
def schedule_monitoring(kb: str, version: int, reason: str, policy_file: str | None = None,
                        published_at: datetime | None = None) -> dict[str, Any]:
    """After a publish: cancel pending monitor runs of ``kb`` and schedule the new version's.

    Nothing is scheduled when the ``post-deploy-monitor`` deployment does not exist.
    """
    policy, logger = policy_for(policy_file), get_run_logger()
    start = published_at or datetime.now(UTC)
    with get_client(sync_client=True) as client:
        pending = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[MONITOR_TAG, kb_tag(kb)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED, StateType.PENDING]))), limit=200)
        for run in pending:
            client.set_flow_run_state(run.id, Cancelled(
                message=f"superseded: {kb!r} v{version} published ({reason})"), force=True)
        try:
            deployment = client.read_deployment_by_name(policy.monitor_deployment)
        except ObjectNotFound:
            logger.warning("no deployment %r: monitoring of %r v%d not scheduled",
                           policy.monitor_deployment, kb, version)
            return {"scheduled": [], "cancelled": len(pending), "reason": "no deployment"}
        params = {"kb": kb, "version": version, "policy_file": policy_file}
        created = [
            client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": params},
                state=Scheduled(scheduled_time=when), tags=["kbrefresh", MONITOR_TAG, kb_tag(kb)],
                idempotency_key=f"kbrefresh-monitor:{kb}:{version}:{start.isoformat()}:{i}")
            for i, when in enumerate(check_times(start, policy))
        ]
    logger.info("%r v%d: %d monitor runs scheduled (%s to %s); %d superseded runs cancelled",
                kb, version, len(created), created[0].expected_start_time,
                created[-1].expected_start_time, len(pending))
    return {"scheduled": [str(r.id) for r in created], "cancelled": len(pending),
            "deployment": policy.monitor_deployment}


@task(**TASK_OPTIONS)
def check_live_version(kb: str, version: int | None, policy_file: str | None,
                       flow_run_id: str | None, now: datetime | None = None) -> CheckResult:
    """Measure and judge the live version; roll back or prove it as the policy says."""
    result = run_monitor_check(flow_settings(), kb, policy=policy_for(policy_file),
                               now=now or datetime.now(UTC), version=version,
                               flow_run_id=flow_run_id)
    logger = get_run_logger()
    (logger.error if result.action == ROLLED_BACK else logger.info)("%s", result.summary())
    return result


@task(**TASK_OPTIONS)
def emit_rollback_event(result: CheckResult, flow_run_id: str | None) -> str | None:
    """Emit ``kbrefresh.version.rolled_back`` naming the criteria and their values."""
    assert result.judgement is not None
    event = emit_event(
        "kbrefresh.version.rolled_back",
        resource={"prefect.resource.id": f"kbrefresh.kb.{result.kb}",
                  "prefect.resource.name": result.kb},
        payload={"kb": result.kb, "from_version": result.version, "to_version": result.live_after,
                 "reason": result.judgement.reason(), "trigger": "post-deploy-monitor",
                 "criteria": [vars(c) for c in result.judgement.failed]},
        id=uuid.uuid5(_EVENT_NAMESPACE, f"{flow_run_id or uuid.uuid4()}:{result.check_id}"))
    return None if event is None else event.event


@task(**TASK_OPTIONS)
def log_check_metrics(result: CheckResult) -> str | None:
    """Log the check's measurements to the version's MLflow run; return a warning or None."""
    settings = flow_settings()
    if not (settings.tracking and result.mlflow_run_id and result.measurements):
        return None
    from kbrefresh.release.report import log_to_mlflow

    warning = log_to_mlflow(settings, result)
    if warning:
        get_run_logger().warning("%s", warning)
    return warning


@task(**TASK_OPTIONS)
def report_check(result: CheckResult) -> str:
    """Show the check (criteria table, time-series chart) as ``kbrefresh-monitor-<kb>``."""
    key = artifact_key("monitor", result.kb)
    create_markdown_artifact(check_markdown(flow_settings(), result), key=key,
                             description=result.summary())
    return key


__all__ = ["check_live_version", "check_metrics", "emit_rollback_event", "log_check_metrics",
           "report_check", "schedule_monitoring"]
