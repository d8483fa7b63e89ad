"""Rollout rows: load, lock, update, record decisions, move the canary share.

A rollout: a state machine in PostgreSQL that moves a candidate from 0% of sessions to live.

::

    start ─► awaiting_approval ─approve─► running ⇄ paused
                   │ reject                  │
                   ▼                         ├─ step passed, not last ─► running (next step)
                aborted ◄── any check failed ┤
                                             ├─ last step passed / A/B won ─► promoted
                                             └─ A/B lost or tied ─► kept_live

Every transition is one short transaction that locks the rollout row and, when traffic
moves, the routing row: the CLI, a scheduled flow and a second machine can all drive the
same rollout, and a crash leaves either the old or the new state, never half of both.
Sessions are split by the ``Retriever``'s stable session hash, so a session keeps its
version across steps. Times come from the caller (``now``) so tests never sleep.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from kbrefresh import store
from kbrefresh.errors import VersionError
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.serving import routing
from kbrefresh.store import Conn

logger = logging.getLogger(__name__)

ACTIVE = ("awaiting_approval", "running", "paused")
STRATEGIES = ("canary", "ab")
ABORTED_EVENT = "kbrefresh.rollout.aborted"
PROMOTED_EVENT = "kbrefresh.rollout.promoted"
KEPT_LIVE_EVENT = "kbrefresh.rollout.kept-live"
_EVENTS = {"abort": ABORTED_EVENT, "reject": ABORTED_EVENT, "promote": PROMOTED_EVENT,
           "keep_live": KEPT_LIVE_EVENT}


@dataclass(frozen=True)
class Rollout:
    """One rollout as stored."""

    id: int
    kb_id: int
    kb: str
    candidate: int
    control: int
    strategy: str
    steps: tuple[float, ...]
    step_index: int
    step_started_at: datetime
    started_at: datetime
    state: str
    policy: RolloutPolicy
    last_analysis: dict[str, Any] | None
    approval: dict[str, Any] | None
    reason: str | None

    @property
    def percent(self) -> float:
        """The candidate's current share of sessions (0 unless running or paused)."""
        return self.steps[self.step_index] if self.state in ("running", "paused") else 0.0

    @property
    def last_step(self) -> bool:
        return self.step_index == len(self.steps) - 1


@dataclass(frozen=True)
class Transition:
    """What one call did to a rollout, why, and the Prefect event it deserves (if any)."""

    rollout: Rollout
    action: str  # start, approve, reject, wait, hold, advance, promote, abort, keep_live, pause, resume
    detail: str
    analysis: dict[str, Any] | None = None

    @property
    def event(self) -> str | None:
        return _EVENTS.get(self.action)

    def payload(self) -> dict[str, Any]:
        r = self.rollout
        return {"kb": r.kb, "rollout_id": r.id, "candidate": r.candidate, "control": r.control,
                "strategy": r.strategy, "state": r.state, "action": self.action,
                "reason": self.detail}


_COLUMNS = sql.SQL(
    "id, kb_id, candidate, control, strategy, steps, step_index, step_started_at, started_at, "
    "state, policy, last_analysis, approval, reason")
_ACTIVE_SQL = sql.SQL("state IN ('awaiting_approval', 'running', 'paused')")


def load_rollout(
    conn: Conn, kb: str, *, active: bool = False, rollout_id: int | None = None, lock: bool = False
) -> Rollout | None:
    """Return the newest rollout of ``kb`` (only an active one, or the one with ``rollout_id``)."""
    kb_id = store.get_kb_id(conn, kb)
    where = [sql.SQL("kb_id = %(kb)s")]
    if active:
        where.append(_ACTIVE_SQL)
    if rollout_id is not None:
        where.append(sql.SQL("id = %(id)s"))
    row = conn.execute(
        sql.SQL("SELECT {} FROM kb_rollouts WHERE {} ORDER BY id DESC LIMIT 1{}").format(
            _COLUMNS, sql.SQL(" AND ").join(where), sql.SQL(" FOR UPDATE" if lock else "")),
        {"kb": kb_id, "id": rollout_id},
    ).fetchone()
    if row is None:
        return None
    return Rollout(
        id=int(row["id"]), kb_id=int(row["kb_id"]), kb=kb, candidate=int(row["candidate"]),
        control=int(row["control"]), strategy=row["strategy"],
        steps=tuple(float(s) for s in row["steps"]), step_index=int(row["step_index"]),
        step_started_at=row["step_started_at"], started_at=row["started_at"], state=row["state"],
        policy=RolloutPolicy.model_validate(row["policy"]), last_analysis=row["last_analysis"],
        approval=row["approval"], reason=row["reason"],
    )


def active_rollout(conn: Conn, kb: str) -> Rollout | None:
    return load_rollout(conn, kb, active=True)


def latest_rollout(conn: Conn, kb: str) -> Rollout | None:
    return load_rollout(conn, kb)


def locked_rollout(conn: Conn, kb: str) -> Rollout:
    """Lock and return the active rollout of ``kb`` (call inside a transaction)."""
    r = load_rollout(conn, kb, active=True, lock=True)
    if r is None:
        raise VersionError(f"{kb!r} has no active rollout; start one with "
                           f"`kbrefresh rollout start --kb {kb}`")
    return r


def events(conn: Conn, rollout_id: int) -> list[dict[str, Any]]:
    """Every decision about a rollout, oldest first."""
    return [dict(r) for r in conn.execute(
        "SELECT at, action, step_index, percent, detail, actor, flow_run_id, analysis "
        "FROM kb_rollout_events WHERE rollout_id = %s ORDER BY id", (rollout_id,)).fetchall()]


def record_event(conn: Conn, r: Rollout, action: str, detail: str, now: datetime, *,
                 flow_run_id: str | None, analysis: dict[str, Any] | None = None,
                 actor: str | None = None) -> None:
    """Append one decision to the rollout's history (actor: ``current_user`` unless named)."""
    conn.execute(
        "INSERT INTO kb_rollout_events (rollout_id, at, action, step_index, percent, detail, "
        "actor, flow_run_id, analysis) VALUES (%s, %s, %s, %s, %s, %s, coalesce(%s, current_user),"
        " %s, %s)",
        (r.id, now, action, r.step_index, r.steps[r.step_index], detail, actor, flow_run_id,
         None if analysis is None else json.dumps(analysis, default=str)),
    )


def route_canary(conn: Conn, r: Rollout, percent: float, action: str,
                 flow_run_id: str | None) -> None:
    """Give the candidate ``percent`` of sessions (0 removes it from the routing row)."""
    routing.set_canary(conn, r.kb_id, r.kb, r.candidate if percent else None, percent,
                       action=action, reason=f"rollout #{r.id} of v{r.candidate}",
                       flow_run_id=flow_run_id)


_FIELDS = {name: sql.Identifier(name) for name in (
    "state", "step_index", "step_started_at", "last_analysis", "approval", "finished_at")}


def update_rollout(conn: Conn, r: Rollout, **fields: Any) -> Rollout:
    """Set some of the rollout's columns and return it re-read."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown rollout fields {sorted(unknown)!r}")
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %({})s").format(_FIELDS[name], sql.SQL(name)) for name in fields)
    params = {k: json.dumps(v, default=str) if isinstance(v, dict) else v
              for k, v in fields.items()} | {"id": r.id}
    conn.execute(sql.SQL("UPDATE kb_rollouts SET {} WHERE id = %(id)s").format(assignments), params)
    fresh = load_rollout(conn, r.kb, rollout_id=r.id)
    assert fresh is not None
    return fresh
