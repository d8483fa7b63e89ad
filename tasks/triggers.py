"""Tasks of the retraining check: measure and decide, emit events, schedule, record, report."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound

from kbrefresh.retraining import check as checks
from kbrefresh.retraining.check import CheckResult
from tasks._common import TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings

# Any fixed namespace works: it only makes event ids stable across task retries.
_EVENT_NAMESPACE = uuid.UUID("6b627265-6672-6573-6800-000000000000")


@task(**TASK_OPTIONS)
def compute_signals(
    kb: str, source: str | None, query: str | None, policy_file: str | None
) -> CheckResult:
    """Measure every signal of ``kb`` and decide (not recorded yet)."""
    policy, options = checks.load_check_policy(policy_file) if policy_file else (None, None)
    result = checks.run_check(flow_settings(), kb, source=source, query=query, policy=policy,
                              options=options, record=False)
    logger = get_run_logger()
    if result.decision.alert:
        logger.error("%s", result.decision.summary)
    else:
        logger.info("%s", result.decision.summary)
    return result


@task(**TASK_OPTIONS)
def emit_check_events(
    check: CheckResult, source: str | None, request_retrain: bool, run_id: str | None
) -> list[str]:
    """Emit drift / performance events and, for retrains due within 24 h, a retrain request.

    Returns the names of the events sent (none when events are disabled).
    """
    sent = []
    for planned in checks.planned_events(check, source, request_retrain=request_retrain):
        event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{run_id or uuid.uuid4()}:{planned.event}")
        if emit_event(planned.event, resource=planned.resource, payload=planned.payload,
                      id=event_id) is not None:
            sent.append(planned.event)
    get_run_logger().info("events sent for %r: %s", check.kb, ", ".join(sent) or "none")
    return sent


@task(**TASK_OPTIONS)
def schedule_refresh(
    kb: str, source: str | None, reason: str, delay_days: float, deployment_name: str
) -> dict[str, Any]:
    """Create a scheduled run of ``deployment_name`` for ``kb`` ``delay_days`` from now.

    Nothing is created when the deployment does not exist, or when a run of it for
    ``kb`` is already scheduled to start before then; the returned dict says which.
    """
    logger = get_run_logger()
    when = datetime.now(UTC) + timedelta(days=delay_days)
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            logger.warning("no deployment %r: the refresh of %r was not scheduled",
                           deployment_name, kb)
            return {"scheduled": False, "deployment": deployment_name,
                    "reason": "no deployment to schedule"}
        pending = [
            run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                    {"before_": when}),
            ), limit=200)
            if (run.parameters.get("params") or {}).get("kb") == kb
        ]
    if pending:
        logger.info("a refresh of %r is already scheduled (flow run %s)", kb, pending[0].id)
        return {"scheduled": False, "deployment": deployment_name,
                "reason": "already scheduled", "flow_run_id": str(pending[0].id)}
    params = dict((deployment.parameters or {}).get("params") or {}) | {"kb": kb, "reason": reason}
    if source is not None:
        params["source"] = source
    # Called from a sync task, run_deployment returns the flow run itself.
    run = cast(FlowRun, run_deployment(
        deployment_name, parameters={"params": params}, scheduled_time=when, timeout=0,
        as_subflow=False, tags=["kbrefresh", "retraining-check"],
        idempotency_key=f"kbrefresh-check:{kb}:{when:%Y-%m-%d}",
    ))
    logger.info("refresh of %r scheduled for %s (flow run %s)", kb, when.isoformat(), run.id)
    return {"scheduled": True, "deployment": deployment_name, "flow_run_id": str(run.id),
            "scheduled_time": when.isoformat(), "params": params}


@task(**TASK_OPTIONS)
def record_decision(
    check: CheckResult, dispatched: dict[str, Any], run_id: str | None
) -> CheckResult:
    """Store the decision and what was dispatched as a ``retrain_decisions`` row."""
    return checks.record_decision(flow_settings(), check, dispatched=dispatched, flow_run_id=run_id)


@task(**TASK_OPTIONS)
def report_check(check: CheckResult) -> str:
    """Show the check as the markdown artifact ``kbrefresh-check-<kb>``; return its key."""
    key = artifact_key("check", check.kb)
    create_markdown_artifact(check.to_markdown(), key=key, description=check.decision.summary)
    return key
