"""The steps after the gate: publish (or stage) the version, record it, compact, sync aliases.

Split from ``steps`` to keep each module small; ``steps`` re-exports them.
"""


from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from kbrefresh import store
from kbrefresh._faults import fault_point
from kbrefresh.build import staging as build
from kbrefresh.db import connect
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.models import BuildTicket
from kbrefresh.refresh.embed_steps import embed_changed  # noqa: F401  (the one-call form)
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs

logger = logging.getLogger(__name__)


def compact_index(
    settings: Settings, kb: str, *, min_share: float | None = None
) -> store.Placement:
    """Merge the live version's segments into one main HNSW index (after publish).

    Only once the rows past the main index exceed ``min_share`` (default: the
    ``compact_share`` setting) of the rows in it; 0 merges any.
    Call under the KB's refresh lock. A database error is logged, not raised: the
    version already serves, and its delta stays searchable until the next build.
    """
    try:
        return _compact(settings, kb, settings.compact_share if min_share is None else min_share)
    except psycopg.Error as exc:
        logger.warning("compacting the index of %r failed, its segments stay as they were: %s",
                       kb, exc)
        return store.Placement("failed", None, None, 0, 0.0, 0)


def _compact(settings: Settings, kb: str, min_share: float) -> store.Placement:
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        if live is None:
            return store.Placement("exact", None, None, 0, 0.0, 0)
        fp = store.fingerprint_for_version(conn, kb_id, live)
        return store.compact(
            conn, fp, live, min_share=min_share,
            maintenance_work_mem=settings.maintenance_work_mem,
            workers=store.build_workers(conn, settings.index_build_workers))


@dataclass(frozen=True)
class PublishResult:
    from_version: int | None
    to_version: int | None
    archived: list[int]


def publish_version(
    settings: Settings, ticket: BuildTicket, *, reason: str, flow_run_id: str | None,
    keep_versions: int | None = None,
) -> PublishResult:
    """Swap the candidate live, clear staging, archive versions beyond the kept ones."""
    with connect(settings, autocommit=True) as conn:
        change = routing.swap_live(conn, ticket.kb_id, ticket.kb, ticket.version,
                                   reason=reason, flow_run_id=flow_run_id)
        fault_point("swap_committed")
        build.clear_staging(conn, ticket.kb_id, ticket.version)
        from kbrefresh.release import row_archive  # release imports refresh: not at import

        archived = routing.retire_old_versions(
            conn, ticket.kb_id, keep_versions or settings.keep_versions,
            purge=row_archive.exporting_purge(settings, ticket.kb, ticket.kb_id),
            on_archived=partial(row_archive.record_retired, kb_id=ticket.kb_id))
    return PublishResult(change.from_version, change.to_version, archived)


def refuse_during_rollout(settings: Settings, kb: str) -> None:
    """Refuse a publishing refresh before any work while ``kb`` has an active rollout."""
    with connect(settings, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM kb WHERE name = %s", (kb,)).fetchone()
        if row is not None:
            store.refuse_during_rollout(conn, int(row["id"]), kb)


def stage_version(settings: Settings, ticket: BuildTicket) -> PublishResult:
    """Keep a gated candidate out of traffic (for a rollout to deliver); live is unchanged."""
    with connect(settings, autocommit=True) as conn:
        build.clear_staging(conn, ticket.kb_id, ticket.version)
        # A new fingerprint's table joins the live view now, so its promotion needs no DDL.
        routing.ensure_live_view(conn, ticket.kb_id, ticket.kb, also=ticket.version)
    return PublishResult(ticket.live_version, ticket.live_version, [])


def record_build(
    settings: Settings,
    ticket: BuildTicket,
    *,
    source: str,
    counts: dict[str, int],
    seconds: dict[str, float],
    estimated_tokens: int,
    outcome: GateOutcome | None,
    quality: dict[str, Any],
) -> runs.BuildRecord:
    """Log the build to MLflow (a version that passed is registered); never fails the refresh."""
    if not settings.tracking:
        return runs.BuildRecord(None, None)
    return runs.record_build(settings, ticket, source=source, counts=counts, seconds=seconds,
                             estimated_tokens=estimated_tokens, outcome=outcome, quality=quality)


def sync_aliases(settings: Settings, kb: str) -> str | None:
    """Point the registry's champion/challenger aliases at the routing; return a warning."""
    return runs.sync_aliases(settings, kb) if settings.tracking else None
