"""Move a knowledge base's canary or A/B rollout one decision forward."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, Field

from kbrefresh.release.notify import Notice
from kbrefresh.store import validate_kb_name
from tasks import sync_registry_aliases
from tasks.monitor import schedule_monitoring
from tasks.notify import send_notice
from tasks.rollout import (
    MOVED,
    apply_rollout_action,
    emit_rollout_event,
    read_rollout,
    record_ab_result,
    record_approval,
    report_rollout,
    request_approval,
    run_rollout_step,
)


class RolloutStepParameters(BaseModel):
    """Which knowledge base's rollout to move, and how."""

    kb: Annotated[str, AfterValidator(validate_kb_name)] = Field(
        min_length=1, max_length=55, description="Knowledge base name")
    action: Literal["analyse", "pause", "resume", "advance", "promote", "abort"] = Field(
        default="analyse", description="'analyse' lets the analysis decide; the rest are manual.")
    reason: str = Field(default="scheduled analysis", min_length=1, max_length=500,
                        description="Why; kept in the rollout's history.")
    approval_timeout_seconds: int = Field(default=86400, ge=1, le=30 * 86400,
                                          description="How long to wait for a human decision.")
    poll_seconds: int = Field(default=10, ge=1, le=600,
                              description="How often a paused run checks it was resumed.")


class ApprovalInput(RunInput):
    """Approve or reject the rollout, with a comment kept in its history."""

    approved: bool
    comment: str = Field(min_length=1, max_length=500)
    by: str = Field(default="operator", min_length=1, max_length=100)


@flow(name="rollout-step")
def rollout_step(params: RolloutStepParameters) -> dict[str, Any]:
    """Analyse the active rollout of a knowledge base and apply the decision.

    Scheduled every few minutes. Each run compares the candidate's arm with live's on
    the query log and feedback of the current step (error rate, p95 latency, empty or
    low-similarity answers, satisfaction, golden accuracy): a failed check aborts (every
    session back on live within one routing-cache period, candidate rejected, event
    kbrefresh.rollout.aborted), thin data waits, a passed step advances (5 -> 50 -> 100%
    by default) and the last one promotes (event kbrefresh.rollout.promoted). An A/B ends
    with significance tests after its period. When the policy requires approval, the run
    pauses for a human decision (approve or reject with a comment) before any traffic
    moves. Nothing happens when the KB has no active rollout.
    """
    current = read_rollout(params.kb)
    if current is None:
        return {"kb": params.kb, "action": "none", "detail": "no active rollout"}
    if current.state == "awaiting_approval":
        request_approval(params.kb, str(flow_run.id))
        decision = pause_flow_run(wait_for_input=ApprovalInput, key=f"approval-{current.id}",
                                  timeout=params.approval_timeout_seconds,
                                  poll_interval=params.poll_seconds)
        t = record_approval(params.kb, decision.approved, decision.comment, decision.by,
                            flow_run.id)
    elif params.action == "analyse":
        t = run_rollout_step(params.kb, flow_run.id)
    else:
        t = apply_rollout_action(params.kb, params.action, params.reason, flow_run.id)
    if t.action in MOVED:
        sync_registry_aliases(params.kb)  # challenger follows the canary, champion the live
    if t.action in ("promote", "keep_live"):
        record_ab_result(t)
    emit_rollout_event(t, flow_run.id)
    if t.action in ("promote", "abort"):
        send_notice(Notice(f"rollout_{'promoted' if t.action == 'promote' else 'aborted'}",
                           params.kb, {"candidate": t.rollout.candidate,
                                       "control": t.rollout.control}, t.detail))
    if t.action == "promote":
        schedule_monitoring(params.kb, t.rollout.candidate, f"rollout #{t.rollout.id} promoted")
    report_rollout(t)
    return {"kb": params.kb, "rollout_id": t.rollout.id, "action": t.action,
            "state": t.rollout.state, "percent": t.rollout.percent, "detail": t.detail}
