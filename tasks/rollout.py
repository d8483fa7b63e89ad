"""Tasks of the rollout-step flow: analyse and move a rollout, approvals, events, reports."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.flow_runs import resume_flow_run

from kbrefresh._text import escape_markdown
from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.release.rollout import Rollout, Transition
from kbrefresh.release.rollout_tracking import log_ab_result
from tasks._common import ROUTING_TASK_OPTIONS, TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings

# Any fixed namespace works: it only makes event ids stable across task retries.
_EVENT_NAMESPACE = uuid.UUID("6b627265-6672-6573-6800-000000000001")
MOVED = ("start", "approve", "advance", "promote", "abort", "reject", "keep_live")


@task(**TASK_OPTIONS)
def read_rollout(kb: str) -> Rollout | None:
    """Return the active rollout of ``kb`` (None when there is none)."""
    with connect(flow_settings()) as conn:
        return rollout.active_rollout(conn, kb)


@task(**ROUTING_TASK_OPTIONS)
def run_rollout_step(kb: str, flow_run_id: str | None) -> Transition:
    """Analyse the active rollout's window and apply the decision (wait, advance, promote, abort)."""
    with connect(flow_settings(), autocommit=True) as conn:
        t = rollout.run_step(conn, kb, now=datetime.now(UTC), flow_run_id=flow_run_id)
    log = get_run_logger()
    (log.warning if t.action in ("abort", "keep_live") else log.info)(
        "rollout #%d of %r v%d: %s (%s)", t.rollout.id, kb, t.rollout.candidate, t.action, t.detail)
    return t


@task(**ROUTING_TASK_OPTIONS)
def apply_rollout_action(kb: str, action: str, reason: str, flow_run_id: str | None) -> Transition:
    """Pause, resume, advance, promote or abort the active rollout of ``kb`` on request."""
    moves = {"pause": rollout.pause, "resume": rollout.resume, "advance": rollout.advance,
             "promote": rollout.promote, "abort": rollout.abort}
    with connect(flow_settings(), autocommit=True) as conn:
        t = moves[action](conn, kb, now=datetime.now(UTC), reason=reason, flow_run_id=flow_run_id)
    get_run_logger().info("rollout #%d of %r: %s (%s)", t.rollout.id, kb, action, reason)
    return t


@task(**TASK_OPTIONS)
def request_approval(kb: str, flow_run_id: str) -> Rollout:
    """Note that this flow run waits for the approval (so the CLI can resume it)."""
    with connect(flow_settings(), autocommit=True) as conn:
        return rollout.wait_for_approval(conn, kb, now=datetime.now(UTC), flow_run_id=flow_run_id)


@task(**TASK_OPTIONS)
def record_approval(
    kb: str, approved: bool, comment: str, by: str, flow_run_id: str | None
) -> Transition:
    """Apply the human decision; if the CLI already recorded it, say so and change nothing."""
    with connect(flow_settings(), autocommit=True) as conn:
        current = rollout.active_rollout(conn, kb)
        if current is None or current.state != "awaiting_approval":
            latest = current or rollout.latest_rollout(conn, kb)
            assert latest is not None
            return Transition(latest, "hold", f"already decided: rollout is {latest.state}")
        return rollout.approve(conn, kb, approved=approved, comment=comment, by=by,
                               now=datetime.now(UTC), flow_run_id=flow_run_id)


def resume_approval(flow_run_id: str, approved: bool, comment: str, by: str) -> None:
    """Resume the flow run paused for an approval, giving it the decision as its input."""
    resume_flow_run(UUID(flow_run_id), run_input={"approved": approved, "comment": comment,
                                                  "by": by})


def emit_transition_event(t: Transition, run_id: str | None) -> str | None:
    """Emit ``kbrefresh.rollout.aborted`` / ``.promoted`` / ``.kept-live``; return the name sent."""
    if t.event is None:
        return None
    event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{run_id or uuid.uuid4()}:{t.rollout.id}:{t.event}")
    sent = emit_event(t.event, resource={"prefect.resource.id": f"kbrefresh.kb.{t.rollout.kb}",
                                         "prefect.resource.name": t.rollout.kb},
                      payload=t.payload(), id=event_id)
    return t.event if sent is not None else None


@task(**TASK_OPTIONS)
def emit_rollout_event(t: Transition, run_id: str | None) -> str | None:
    """Emit the event of a rollout that ended (aborted, promoted, kept live)."""
    sent = emit_transition_event(t, run_id)
    if sent:
        get_run_logger().info("event %s sent for %r", sent, t.rollout.kb)
    return sent


@task(**TASK_OPTIONS | {"retries": 0})
def record_ab_result(t: Transition) -> str | None:
    """Log a concluded A/B's tests as metrics and a JSON artifact on the candidate's MLflow run."""
    settings = flow_settings()
    if not settings.tracking or t.analysis is None or not t.analysis.get("ab"):
        return None
    warning = log_ab_result(settings, t.rollout.kb, t.rollout.candidate, t.analysis)
    if warning:
        get_run_logger().warning("%s", warning)
    return warning


@task(**TASK_OPTIONS)
def report_rollout(t: Transition) -> str:
    """Show the rollout's state and the last analysis as the artifact ``kbrefresh-rollout-<kb>``."""
    key = artifact_key("rollout", t.rollout.kb)
    create_markdown_artifact(rollout_markdown(t), key=key,
                             description=f"{t.action}: {t.detail}"[:500])
    return key


def rollout_markdown(t: Transition) -> str:
    r = t.rollout
    lines = [
        f"# Rollout #{r.id} of {escape_markdown(r.kb)}: v{r.candidate} against v{r.control}",
        "", f"**{escape_markdown(t.action)}**: {escape_markdown(t.detail)}", "",
        (f"Strategy {r.strategy}, steps {', '.join(f'{s:g}%' for s in r.steps)}; state "
        f"**{r.state}**, step {r.step_index + 1} at {r.percent:g}%."), "",
    ]
    analysis: dict[str, Any] = t.analysis or r.last_analysis or {}
    checks = (analysis.get("checks") or {}).get("checks") or []
    if checks:
        lines += ["| metric | outcome | candidate | control | limit | detail |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {escape_markdown(c['metric'])} | {c['outcome']} | {_n(c['candidate'])} | "
                  f"{_n(c['control'])} | {_n(c['limit'])} | {escape_markdown(c['detail'])} |"
                  for c in checks]
    comparisons = (analysis.get("ab") or {}).get("comparisons") or []
    if comparisons:
        lines += ["", "| metric | test | candidate | control | effect | CI | p | significant |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['metric']} | {escape_markdown(c['test'])} | {_n(c['candidate'])} | "
                  f"{_n(c['control'])} | {_n(c['effect'])} | [{_n(c['ci_low'])}, "
                  f"{_n(c['ci_high'])}] | {_n(c['p_value'])} | {c['significant']} |"
                  for c in comparisons]
    return "\n".join(lines) + "\n"


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
