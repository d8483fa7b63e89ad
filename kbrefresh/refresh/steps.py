"""The refresh, step by step: each step opens its own connection and returns plain values.

``sequence.run_refresh`` chains these steps in order through a step runner (plain calls
for the CLI, one Prefect task per step for flows); a step's function name is its task
name and its timing key. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg

from kbrefresh import store
from kbrefresh._faults import fault_point
from kbrefresh.build import staging as build
from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.staging import BuildPlan
from kbrefresh.db import LOCK_NAMESPACE, connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import BuildLockedError
from kbrefresh.gate import smoke as smoke_checks
from kbrefresh.gate.evaluation import GateOutcome, run_gate
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.smoke import SmokeResult
from kbrefresh.models import BuildTicket, ChunkerConfig, Fingerprint
from kbrefresh.refresh.embed_steps import embed_changed
from kbrefresh.refresh.prepare import PrepareResult, prepare_data
from kbrefresh.refresh.publish_steps import (
    PublishResult,
    compact_index,
    publish_version,
    record_build,
    refuse_during_rollout,
    stage_version,
    sync_aliases,
)
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs

# The publish-side steps live in publish_steps; callers name every step as steps.<name>.
__all__ = [  # noqa: RUF022
    "PublishResult", "compact_index", "publish_version", "record_build", "stage_version",
    "sync_aliases", "embed_changed", "refuse_during_rollout", "PrepareResult", "prepare_data",
]

logger = logging.getLogger(__name__)


# Bump when chunking code changes its output: the fingerprint then forces a full rebuild.
CHUNKER_ALGORITHM = "kbrefresh-chunker-1"


def fingerprint_for(
    embedder: Embedder, chunker: ChunkerConfig, *, storage: str = "vector"
) -> Fingerprint:
    return Fingerprint(
        embedder.provider, embedder.model, embedder.dims,
        chunker.as_dict() | {"algorithm": CHUNKER_ALGORITHM}, storage,
    )


class HeldLock:
    """The KB's refresh lock, held by a session of its own; ``check`` before each step."""

    def __init__(self, conn: psycopg.Connection[Any], kb: str, kb_id: int) -> None:
        self.conn, self.kb, self.kb_id = conn, kb, kb_id

    def held(self) -> bool:
        """Whether the session still holds the lock (a restart or a dropped connection ends both)."""
        try:
            row = self.conn.execute(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
                " AND objid = %s AND pid = pg_backend_pid() AND granted",
                (LOCK_NAMESPACE, self.kb_id)).fetchone()
        except psycopg.OperationalError:
            return False
        return bool(row and row["n"])

    def check(self) -> None:
        """Refuse to go on without the lock: another refresh may own the KB now.

        Raises:
            BuildLockedError: the lock's session ended (PostgreSQL restarted, the connection dropped).
        """
        if not self.held():
            raise BuildLockedError(
                f"the refresh of knowledge base {self.kb!r} lost its lock (PostgreSQL restarted "
                "or the connection dropped); it stopped before its next step and published "
                "nothing more; run the refresh again to resume it"
            )


@contextmanager
def refresh_lock(settings: Settings, kb: str, *, wait_seconds: float = 0.0) -> Iterator[HeldLock]:
    """Hold the KB's refresh lock (a session advisory lock) while the block runs.

    Raises:
        BuildLockedError: another refresh holds it after ``wait_seconds``.
    """
    with connect(settings, autocommit=True) as conn:
        kb_id = store.ensure_kb(conn, kb)
        if wait_seconds > 0:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait_seconds * 1000)}ms",))
            try:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, kb_id))
                locked = True
            except psycopg.errors.LockNotAvailable:
                locked = False
            conn.execute("SET lock_timeout = 0")
        else:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s) AS ok", (LOCK_NAMESPACE, kb_id)
            ).fetchone()
            locked = bool(row and row["ok"])
        if not locked:
            holder = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                "AND objid = %s AND granted LIMIT 1",
                (LOCK_NAMESPACE, kb_id),
            ).fetchone()
            raise BuildLockedError(
                f"another refresh of knowledge base {kb!r} is running (PostgreSQL backend pid "
                f"{holder['pid'] if holder else 'unknown'}); wait for it to finish or pass a "
                "lock wait in seconds"
            )
        try:
            yield HeldLock(conn, kb, kb_id)
        finally:
            # A session that ended (restart, dropped connection) took its lock with it.
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, kb_id))


def begin_version(
    settings: Settings, kb: str, fingerprint: Fingerprint, *, source: str, flow_run_id: str | None
) -> BuildTicket:
    """Start (or resume) a version of ``kb`` for ``fingerprint``. Call under ``refresh_lock``."""
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, kb)
        fp = store.ensure_fingerprint(conn, kb_id, fingerprint)
        version, resumed = build.start_version(conn, kb_id, fp, source=source, flow_run_id=flow_run_id)
        live = routing.live_version(conn, kb_id)
        live_fp = store.fingerprint_for_version(conn, kb_id, live).key if live else None
        conn.commit()
    return BuildTicket(kb, kb_id, version, resumed, fp.table, fp.dims, fp.key, live, live_fp,
                       fp.storage)


def plan_build(settings: Settings, ticket: BuildTicket) -> BuildPlan:
    """Count what the build will reuse and embed; warn when everything is re-embedded."""
    with connect(settings) as conn:
        plan = build.count_plan(conn, ticket.kb_id, ticket.version, ticket.table)
    if ticket.fingerprint_changed:
        logger.warning(
            "embedding fingerprint changed (%s -> %s): full re-embed of %d chunks, ~%d tokens",
            ticket.live_fingerprint_key, ticket.fingerprint_key, plan.to_embed_chunks,
            plan.estimated_tokens,
        )
    return plan


def reuse_unchanged(settings: Settings, ticket: BuildTicket) -> tuple[int, int]:
    """Close replaced rows and copy reusable vectors inside Postgres; return (closed, copied)."""
    with connect(settings) as conn:
        result = build.reuse_unchanged(conn, ticket.kb_id, ticket.version, ticket.table)
        conn.commit()
    return result


def build_counts(
    prepared: PrepareResult, plan: BuildPlan, stats: EmbedStats, reuse: tuple[int, int]
) -> dict[str, int]:
    """Return what a build did, as stored on the version and logged to MLflow."""
    closed, copied = reuse
    return {
        "documents": prepared.documents, "chunks": prepared.chunks,
        "documents_new": prepared.changes.new, "documents_changed": prepared.changes.changed,
        "documents_deleted": prepared.changes.deleted, "embedded": stats.rows,
        "documents_parsed": prepared.intake.get("documents_parsed", 0),
        "documents_skipped": prepared.intake.get("documents_skipped", 0),
        "texts_embedded": stats.texts, "reused": plan.unchanged + copied, "copied": copied,
        "removed": closed,
    }


def finalize_version(
    settings: Settings, ticket: BuildTicket, counts: dict[str, Any]
) -> dict[str, Any]:
    """Place the new rows (small delta, or (re)build the index), analyze, mark a candidate."""
    with connect(settings, autocommit=True) as conn:
        fp = store.fingerprint_for_version(conn, ticket.kb_id, ticket.version)
        placed = store.place_new_rows(
            conn, fp, ticket.version, delta_exact_rows=settings.delta_exact_rows,
            maintenance_work_mem=settings.maintenance_work_mem,
            workers=_index_workers(conn, settings))
        # Every column, as plain ANALYZE does. Skipped after a small change to a large
        # table (0.46 s at 51,500 rows). (The canary demo failure once blamed on leaving
        # the vector column out recurred with it analyzed: it was not the cause.)
        analyzed = store.analyze_if_stale(conn, ticket.table, _rows_written(counts),
                                          always_below=ANALYZE_ALWAYS_BELOW)
        # The version's chunks and documents are counted by the smoke check, next.
        previous = dict(store.version_row(conn, ticket.kb_id, ticket.version).counts)
        all_counts = (previous | counts | placed.as_counts()
                      | {"hnsw_index": placed.action != "exact", "analyzed": analyzed})
        store.set_status(conn, ticket.kb_id, ticket.version, store.VersionStatus.CANDIDATE, counts=all_counts,
                         finished_at=datetime.now(UTC))
    return all_counts


# Chunk tables smaller than this are analyzed after every build (it costs little).
ANALYZE_ALWAYS_BELOW = 10_000


def _rows_written(counts: dict[str, Any]) -> int:
    return int(counts.get("embedded", 0)) + int(counts.get("copied", 0)) + int(
        counts.get("removed", 0))


def _index_workers(conn: store.Conn, settings: Settings) -> int:
    return store.build_workers(conn, settings.index_build_workers)


def smoke_check(
    settings: Settings, ticket: BuildTicket, *, embedder: Embedder | None = None
) -> SmokeResult:
    """Run smoke checks; a failure marks the version rejected (live stays untouched)."""
    embedder = embedder or make_embedder(settings)
    with connect(settings) as conn:
        counts = store.version_row(conn, ticket.kb_id, ticket.version).counts
        fp = store.fingerprint_for_version(conn, ticket.kb_id, ticket.version)
        result = smoke_checks.smoke_check(conn, ticket.kb_id, ticket.version, fp, embedder,
                             expected_chunks=int(counts.get("expected_chunks", 0)))
        status = store.VersionStatus.CANDIDATE if result.passed else store.VersionStatus.REJECTED
        store.set_status(conn, ticket.kb_id, ticket.version, status, smoke=result.as_dict(),
                         counts=dict(counts) | result.stats,
                         error=None if result.passed else "; ".join(result.failures))
        if not result.passed:
            build.clear_staging(conn, ticket.kb_id, ticket.version)
        conn.commit()
    return result


class Judge(Protocol):
    """A gate in place of ``run_gate``: judge ``ticket``'s version, return the outcome."""

    def __call__(
        self,
        settings: Settings,
        ticket: BuildTicket,
        *,
        policy: AcceptancePolicy | None,
        build_smoke_failures: Sequence[str],
    ) -> GateOutcome: ...


def validate_candidate(
    settings: Settings,
    ticket: BuildTicket,
    *,
    smoke: SmokeResult,
    policy: AcceptancePolicy | None = None,
    sets: Sequence[str] | None = None,
    judge: Judge | None = None,
) -> GateOutcome:
    """Judge the candidate against live on golden queries; store the verdict; reject on failure.

    ``judge`` replaces the usual gate (a rebrand adds its rules to it).
    """
    if judge is not None:
        outcome = judge(settings, ticket, policy=policy, build_smoke_failures=smoke.failures)
    else:
        outcome = run_gate(settings, ticket.kb, ticket.version, policy=policy, sets=sets,
                           build_smoke_failures=smoke.failures)
    fault_point("gate_judged")
    with connect(settings) as conn:
        status = (store.VersionStatus.CANDIDATE if outcome.verdict.passed
                  else store.VersionStatus.REJECTED)
        store.set_status(conn, ticket.kb_id, ticket.version, status, verdict=outcome.as_dict(),
                         error=None if outcome.verdict.passed else outcome.verdict.summary[:2000])
        if not outcome.verdict.passed:
            build.clear_staging(conn, ticket.kb_id, ticket.version)
        conn.commit()
    return outcome


def rejection_message(
    ticket: BuildTicket, smoke: SmokeResult, outcome: GateOutcome | None
) -> str:
    """Say why a candidate was rejected and what keeps serving."""
    why = outcome.verdict.summary if outcome else (
        f"Smoke checks failed: {'; '.join(smoke.failures)}; "
        + ("the live version keeps serving." if ticket.live_version else "nothing was published."))
    return f"version {ticket.version} of {ticket.kb!r} was rejected. {why}"


def fail_build(settings: Settings, ticket: BuildTicket, error: BaseException, *, source: str) -> None:
    """Mark a build failed (after an error) so the next run undoes its rows; record it as a run.

    A version already rejected by smoke checks or the gate keeps that status.
    """
    with connect(settings) as conn:
        status = store.version_row(conn, ticket.kb_id, ticket.version).status
        if status in store.UNFINISHED:
            store.set_status(conn, ticket.kb_id, ticket.version, store.VersionStatus.FAILED,
                             error=f"{type(error).__name__}: {error}"[:2000],
                             finished_at=datetime.now(UTC))
            build.clear_staging(conn, ticket.kb_id, ticket.version)
        conn.commit()
    if settings.tracking and isinstance(error, Exception):  # every build is a run
        runs.record_failure(settings, ticket, source=source, error=error)
