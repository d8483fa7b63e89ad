"""Progressive delivery: start, analyse and move a canary or A/B rollout of a candidate.

See ``rollout_state`` for the state machine drawing. ``run_step`` is what the scheduled
``rollout-step`` flow calls: it reads both arms' samples from the query log and feedback,
runs the analysis and applies the decision (wait, advance, promote, abort, keep live).
The other transitions are the operator's: pause, resume, advance, promote, abort, approve.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from kbrefresh import store
from kbrefresh._faults import fault_point
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.release import analysis as an
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.release.rollout_state import (
    ACTIVE,
    Rollout,
    Transition,
    active_rollout,
    events,
    latest_rollout,
    locked_rollout,
    record_event,
    route_canary,
    update_rollout,
)
from kbrefresh.release.traffic import window_samples
from kbrefresh.serving import routing
from kbrefresh.store import Conn, VersionStatus

__all__ = ["ACTIVE", "Decision", "Rollout", "Transition", "abort", "active_rollout", "advance",
           "approve", "decide", "events", "latest_rollout", "pause", "promote", "resume",
           "run_step", "start", "wait_for_approval"]

logger = logging.getLogger(__name__)
STRATEGIES = ("canary", "ab")


@dataclass(frozen=True)
class Decision:
    action: str  # hold, wait, advance, promote, abort, keep_live
    detail: str


def _check_now(now: datetime) -> None:
    if now.tzinfo is None:
        raise ConfigError(f"now {now!r} must be timezone-aware")


def start(
    conn: Conn, kb: str, *, strategy: str, policy: RolloutPolicy, now: datetime,
    candidate: int | None = None, steps: tuple[float, ...] | None = None,
    reason: str = "rollout", flow_run_id: str | None = None,
) -> Transition:
    """Start a canary or A/B of ``candidate`` (default: the newest passing candidate) against live.

    Raises:
        ConfigError: unknown strategy, bad steps, naive ``now``.
        VersionError: no live version, no passing candidate, or a rollout already active.
    """
    _check_now(now)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    if steps is not None:
        policy = RolloutPolicy.model_validate(policy.model_dump() | {"steps": steps})
    planned = policy.steps if strategy == "canary" else (policy.ab_percent,)
    kb_id = store.get_kb_id(conn, kb)
    live = routing.live_version(conn, kb_id)
    if live is None:
        raise VersionError(f"{kb!r} has no live version; a first version goes live with a refresh")
    version = candidate if candidate is not None else _newest_candidate(conn, kb_id, kb)
    row = store.version_row(conn, kb_id, version)
    if row.status != "candidate":
        raise VersionError(f"version {version} of {kb!r} is {row.status.value!r}; "
                           "only a 'candidate' that passed the gate can be rolled out")
    if not (row.verdict or {}).get("passed"):
        raise VersionError(f"version {version} of {kb!r} has no passing validation verdict; "
                           f"run `kbrefresh eval --kb {kb} --version {version}` to see why")
    state = "awaiting_approval" if policy.require_approval else "running"
    detail = (f"{strategy} of v{version} against live v{live}: steps "
              f"{', '.join(f'{s:g}%' for s in planned)}"
              + ("; waiting for approval" if state != "running" else ""))
    try:
        with conn.transaction():
            got = conn.execute(
                "INSERT INTO kb_rollouts (kb_id, candidate, control, strategy, steps, "
                "step_started_at, started_at, state, policy, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (kb_id, version, live, strategy, list(planned), now, now, state,
                 policy.model_dump_json(), reason),
            ).fetchone()
            assert got is not None
            store.set_status(conn, kb_id, version, VersionStatus.CANARY)
            r = locked_rollout(conn, kb)
            if state == "running":
                route_canary(conn, r, r.steps[0], "canary-start", flow_run_id)
            record_event(conn, r, "start", detail, now, flow_run_id=flow_run_id)
    except psycopg.errors.UniqueViolation as exc:
        active = active_rollout(conn, kb)
        which = f"#{active.id} of v{active.candidate}" if active else "another"
        raise VersionError(f"{kb!r} already has an active rollout ({which}); see "
                           f"`kbrefresh rollout status --kb {kb}`") from exc
    return Transition(r, "start", detail)


def _newest_candidate(conn: Conn, kb_id: int, kb: str) -> int:
    got = conn.execute(
        "SELECT max(version) AS v FROM kb_versions WHERE kb_id = %s AND status = 'candidate' "
        "AND (verdict->>'passed')::boolean", (kb_id,),
    ).fetchone()
    if got is None or got["v"] is None:
        raise VersionError(f"{kb!r} has no candidate that passed the gate; pass --version")
    return int(got["v"])


def golden_accuracy(verdict: Mapping[str, Any] | None, metric: str) -> float | None:
    """Return the candidate's overall ``metric`` from its stored gate verdict."""
    value = (((verdict or {}).get("evaluation") or {}).get("candidate") or {}).get(
        "overall", {}).get(metric)
    return None if value is None else float(value)


def decide(
    r: Rollout, step: an.StepAnalysis, ab: an.ABResult | None, *, now: datetime,
    arm_searches: tuple[int, int],
) -> Decision:
    """Choose what a running rollout does next (pure: every transition is unit-tested here)."""
    if r.state != "running":
        return Decision("hold", f"rollout is {r.state}; nothing moves until it runs")
    if step.outcome == an.FAILED:
        return Decision("abort", "; ".join(step.failures()))
    elapsed = (now - r.step_started_at).total_seconds()
    where = f"step {r.step_index + 1}/{len(r.steps)} at {r.percent:g}%"
    if r.strategy == "canary":
        if step.outcome == an.INCONCLUSIVE:
            thin = [f"{c.metric}: {c.detail}" for c in step.checks if c.outcome == an.INCONCLUSIVE]
            return Decision("wait", f"{where}: inconclusive ({'; '.join(thin)})")
        if elapsed < r.policy.min_step_seconds:
            return Decision("wait", f"{where}: checks pass; {elapsed:.0f} s of the "
                                    f"{r.policy.min_step_seconds:.0f} s minimum elapsed")
        if r.last_step:
            return Decision("promote", f"{where}: every check passed for "
                                       f"{elapsed:.0f} s; promoting")
        return Decision("advance", f"{where}: every check passed for {elapsed:.0f} s; "
                                   f"next {r.steps[r.step_index + 1]:g}%")
    if elapsed < r.policy.ab_seconds:
        return Decision("wait", f"A/B at {r.percent:g}%: {elapsed:.0f} s of "
                                f"{r.policy.ab_seconds:.0f} s elapsed")
    if min(arm_searches) < r.policy.ab_min_samples:
        return Decision("wait", f"A/B: {arm_searches[0]} candidate and {arm_searches[1]} control "
                                f"searches, need {r.policy.ab_min_samples} per arm")
    assert ab is not None
    return Decision(ab.decision, ab.reason)


def run_step(conn: Conn, kb: str, *, now: datetime, flow_run_id: str | None = None) -> Transition:
    """Analyse the active rollout's current window and apply the decision.

    Raises:
        VersionError: ``kb`` has no active rollout.
    """
    _check_now(now)
    r = active_rollout(conn, kb)
    if r is None:
        raise VersionError(f"{kb!r} has no active rollout; start one with "
                           f"`kbrefresh rollout start --kb {kb}`")
    if r.state != "running" or now <= r.step_started_at:
        return Transition(r, "hold", f"rollout is {r.state}; nothing to analyse yet")
    pol = r.policy
    cand = window_samples(conn, r.kb_id, r.candidate, r.step_started_at, now)
    ctrl = window_samples(conn, r.kb_id, r.control, r.started_at, now)
    verdict = store.version_row(conn, r.kb_id, r.candidate).verdict
    step = an.analyse_step(cand, ctrl, golden_accuracy(verdict, pol.golden_metric),
                           pol.golden_metric, pol.limits())
    ab = None
    if r.strategy == "ab":
        comparisons = an.compare_arms(cand, ctrl, alpha=pol.alpha, low_similarity=pol.low_similarity,
                                      min_latency_effect_ms=pol.min_latency_effect_ms)
        ab = an.decide_ab(comparisons, pol.ab_primary)
    decision = decide(r, step, ab, now=now, arm_searches=(cand.searches, ctrl.searches))
    analysis = {
        "at": now.isoformat(), "step_index": r.step_index, "percent": r.percent,
        "window": {"candidate_from": r.step_started_at.isoformat(),
                   "control_from": r.started_at.isoformat(), "to": now.isoformat()},
        "candidate": cand.summary(pol.low_similarity), "control": ctrl.summary(pol.low_similarity),
        "checks": step.to_dict(), "ab": ab.to_dict() if ab else None,
        "decision": {"action": decision.action, "detail": decision.detail},
    }
    return _apply(conn, r, decision, analysis, now=now, flow_run_id=flow_run_id)


def _apply(conn: Conn, seen: Rollout, decision: Decision, analysis: dict[str, Any], *,
           now: datetime, flow_run_id: str | None) -> Transition:
    with conn.transaction():
        r = locked_rollout(conn, seen.kb)
        if (r.id, r.step_index, r.state) != (seen.id, seen.step_index, seen.state):
            return Transition(r, "hold", "the rollout moved while it was analysed; "
                                         "the next run judges the new state")
        r = update_rollout(conn, r, last_analysis=analysis)
        if decision.action in ("wait", "hold"):
            record_event(conn, r, decision.action, decision.detail, now,
                         flow_run_id=flow_run_id, analysis=analysis)
            return Transition(r, decision.action, decision.detail, analysis)
        return _move(conn, r, decision.action, decision.detail, now=now, flow_run_id=flow_run_id,
                     analysis=analysis, actor=None)


def _move(conn: Conn, r: Rollout, action: str, detail: str, *, now: datetime,
          flow_run_id: str | None, analysis: dict[str, Any] | None,
          actor: str | None) -> Transition:
    """Apply ``action`` to the locked rollout ``r`` (inside a transaction)."""
    if action == "advance":
        route_canary(conn, r, r.steps[r.step_index + 1], "canary-step", flow_run_id)
        r = update_rollout(conn, r, step_index=r.step_index + 1, step_started_at=now)
    elif action == "promote":
        if r.percent:
            route_canary(conn, r, 0, "canary-end", flow_run_id)
        store.set_status(conn, r.kb_id, r.candidate, VersionStatus.CANDIDATE)
        routing.swap_live(conn, r.kb_id, r.kb, r.candidate, flow_run_id=flow_run_id,
                          reason=f"rollout #{r.id} promoted: {detail}"[:500])
        r = update_rollout(conn, r, state="promoted", finished_at=now)
    elif action in ("abort", "keep_live", "reject"):
        if r.percent:
            route_canary(conn, r, 0, "canary-abort" if action != "keep_live" else "canary-end",
                         flow_run_id)
        # 'rejected' (not 'retired'): the next build must undo the candidate's rows.
        store.set_status(conn, r.kb_id, r.candidate, VersionStatus.REJECTED,
                         error=f"rollout #{r.id} {action}: {detail}"[:2000])
        r = update_rollout(conn, r, state="kept_live" if action == "keep_live" else "aborted",
                           finished_at=now)
    else:
        raise ValueError(f"unknown rollout action {action!r}")
    record_event(conn, r, action, detail, now, flow_run_id=flow_run_id, analysis=analysis,
                 actor=actor)
    fault_point("rollout_moved")
    logger.info("rollout #%d of %r v%d: %s (%s)", r.id, r.kb, r.candidate, action, detail)
    return Transition(r, action, detail, analysis)


def _operator(conn: Conn, kb: str, allowed: tuple[str, ...], verb: str) -> Rollout:
    r = locked_rollout(conn, kb)
    if r.state not in allowed:
        raise VersionError(f"cannot {verb} rollout #{r.id} of {kb!r}: it is {r.state!r}; "
                           f"expected {' or '.join(map(repr, allowed))}")
    return r


def advance(conn: Conn, kb: str, *, now: datetime, reason: str, actor: str | None = None,
            flow_run_id: str | None = None) -> Transition:
    """Move a canary to its next step now, whatever the analysis says (recorded as manual)."""
    with conn.transaction():
        r = _operator(conn, kb, ("running", "paused"), "advance")
        if r.last_step:
            raise VersionError(f"rollout #{r.id} of {kb!r} is at its last step "
                               f"({r.percent:g}%); use `kbrefresh rollout promote --kb {kb}`")
        return _move(conn, r, "advance", f"manual: {reason}", now=now, flow_run_id=flow_run_id,
                     analysis=None, actor=actor)


def promote(conn: Conn, kb: str, *, now: datetime, reason: str, actor: str | None = None,
            flow_run_id: str | None = None) -> Transition:
    """Make the candidate live now and end the rollout (recorded as manual)."""
    with conn.transaction():
        r = _operator(conn, kb, ("running", "paused"), "promote")
        return _move(conn, r, "promote", f"manual: {reason}", now=now, flow_run_id=flow_run_id,
                     analysis=None, actor=actor)


def abort(conn: Conn, kb: str, *, now: datetime, reason: str, actor: str | None = None,
          flow_run_id: str | None = None) -> Transition:
    """Send every session back to live now; the candidate is rejected."""
    with conn.transaction():
        r = _operator(conn, kb, ACTIVE, "abort")
        return _move(conn, r, "abort", f"manual: {reason}", now=now, flow_run_id=flow_run_id,
                     analysis=None, actor=actor)


def pause(conn: Conn, kb: str, *, now: datetime, reason: str, actor: str | None = None,
          flow_run_id: str | None = None) -> Transition:
    """Hold the canary at its current share; analysis stops moving it until resumed."""
    with conn.transaction():
        r = update_rollout(conn, _operator(conn, kb, ("running",), "pause"), state="paused")
        record_event(conn, r, "pause", reason, now, flow_run_id=flow_run_id, actor=actor)
    return Transition(r, "pause", reason)


def resume(conn: Conn, kb: str, *, now: datetime, reason: str, actor: str | None = None,
           flow_run_id: str | None = None) -> Transition:
    """Let analysis move a paused rollout again (its step keeps its start time)."""
    with conn.transaction():
        r = update_rollout(conn, _operator(conn, kb, ("paused",), "resume"), state="running")
        record_event(conn, r, "resume", reason, now, flow_run_id=flow_run_id, actor=actor)
    return Transition(r, "resume", reason)


def wait_for_approval(conn: Conn, kb: str, *, now: datetime, flow_run_id: str) -> Rollout:
    """Note which paused flow run waits for the approval, so ``kbrefresh rollout approve`` resumes it."""
    with conn.transaction():
        r = _operator(conn, kb, ("awaiting_approval",), "wait for approval of")
        r = update_rollout(conn, r, approval={"flow_run_id": flow_run_id, "requested_at": now})
        record_event(conn, r, "approval-requested", "paused for a human decision", now,
                     flow_run_id=flow_run_id)
    return r


def approve(conn: Conn, kb: str, *, approved: bool, comment: str, by: str | None, now: datetime,
            flow_run_id: str | None = None) -> Transition:
    """Record the approval decision: approved starts the first step, rejected aborts."""
    with conn.transaction():
        r = _operator(conn, kb, ("awaiting_approval",), "approve")
        decision = {"approved": approved, "comment": comment, "by": by, "at": now,
                    "flow_run_id": (r.approval or {}).get("flow_run_id")}
        r = update_rollout(conn, r, approval=decision)
        verb = "approved" if approved else "rejected"
        detail = f"{verb} by {by or 'an operator'}: {comment}"
        if not approved:
            return _move(conn, r, "reject", detail, now=now, flow_run_id=flow_run_id,
                         analysis=None, actor=by)
        r = update_rollout(conn, r, state="running", step_started_at=now)
        route_canary(conn, r, r.steps[0], "canary-start", flow_run_id)
        record_event(conn, r, "approve", detail, now, flow_run_id=flow_run_id, actor=by)
    return Transition(r, "approve", detail)
