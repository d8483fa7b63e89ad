"""The refresh, step by step: each step opens its own connection and returns plain values.

``sequence.run_refresh`` chains these steps in order through a step runner (plain calls
for the CLI, one Prefect task per step for flows); a step's function name is its task
name and its timing key. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from kbrefresh import store
from kbrefresh.build import staging as build
from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.quality import QualityPolicy, check_documents, require_quality
from kbrefresh.build.sources import load_source
from kbrefresh.build.staging import BuildPlan
from kbrefresh.db import LOCK_NAMESPACE, connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.errors import BuildLockedError, DataQualityError
from kbrefresh.gate import smoke as smoke_checks
from kbrefresh.gate.evaluation import GateOutcome, run_gate
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.smoke import SmokeResult
from kbrefresh.models import BuildTicket, ChunkerConfig, Fingerprint
from kbrefresh.refresh.chunk_steps import ChunkMap, chunks_of
from kbrefresh.refresh.embed_steps import embed_changed
from kbrefresh.refresh.publish_steps import (
    PublishResult,
    compact_index,
    publish_version,
    record_build,
    stage_version,
    sync_aliases,
)
from kbrefresh.retraining.profiles import KbProfiles, apply_profiles
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs

# The publish-side steps live in publish_steps; callers name every step as steps.<name>.
__all__ = [  # noqa: RUF022
    "PublishResult", "compact_index", "publish_version", "record_build", "stage_version",
    "sync_aliases", "embed_changed",
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


@contextmanager
def refresh_lock(settings: Settings, kb: str, *, wait_seconds: float = 0.0) -> Iterator[int]:
    """Hold the KB's refresh lock (a session advisory lock); yield the KB id.

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
            yield kb_id
        finally:
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


@dataclass(frozen=True)
class PrepareResult:
    dataset_tag: str
    documents: int
    chunks: int
    changes: store.DocumentChanges
    quality: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    settings: Settings,
    ticket: BuildTicket,
    source: str,
    *,
    query: str | None = None,
    chunker: ChunkerConfig | None = None,
    quality: QualityPolicy | None = None,
    profiles: KbProfiles | None = None,
    chunk_map: ChunkMap | None = None,
) -> PrepareResult:
    """Load the source, run quality checks, record the manifest and stage chunks.

    ``chunk_map`` spreads the chunking over a runner in batches (see ``chunk_steps``).

    Raises:
        DataQualityError: the data failed its checks; the version is marked failed
            with the report and nothing is published.
    """
    loaded = load_source(source, query=query)
    with connect(settings) as conn:
        previous = _live_doc_count(conn, ticket)
        report = check_documents(
            loaded, previous_doc_count=previous, policy=quality or QualityPolicy(),
            now=datetime.now(UTC),
        )
        try:
            require_quality(report)
        except DataQualityError:
            store.set_status(conn, ticket.kb_id, ticket.version, store.VersionStatus.FAILED,
                             quality=report.to_dict(), error="data quality checks failed",
                             finished_at=datetime.now(UTC))
            conn.commit()
            raise
        profiled = apply_profiles(loaded.documents, profiles, chunker or ChunkerConfig())
        documents = [p.document for p in profiled]
        changes = build.record_documents(conn, ticket.kb_id, ticket.version, documents)
        base = None if ticket.fingerprint_changed else ticket.live_version
        manifest = store.version_manifest(conn, ticket.kb_id, base)
        same = {d.doc_id for d in documents if manifest.get(d.doc_id) == d.content_hash}
        current = {d.doc_id for d in documents}
        touched = (current - same) | (manifest.keys() - current)
        build.record_touched_documents(conn, ticket.kb_id, ticket.version, ticket.table,
                                       touched, full=base is None)
        # Unchanged documents keep their rows: they are neither re-chunked nor staged.
        # Each document with its own chunker (its segment's profile); the segment first.
        staged = build.stage_chunks(conn, ticket.kb_id, ticket.version, chunks_of(
            ((p.document, p.chunker) for p in profiled if p.document.doc_id not in same),
            chunk_map=chunk_map, batch_docs=settings.chunk_batch_docs))
        total = staged + _untouched_chunks(conn, ticket, base)
        store.set_status(conn, ticket.kb_id, ticket.version, store.VersionStatus.BUILDING, quality=report.to_dict(),
                         counts={"expected_chunks": total, "staged_chunks": staged,
                                 "touched_documents": len(touched)})
        tag = store.version_row(conn, ticket.kb_id, ticket.version).dataset_tag
        conn.commit()
    return PrepareResult(tag, len(loaded.documents), total, changes, report.to_dict())


def _untouched_chunks(conn: store.Conn, ticket: BuildTicket, base: int | None) -> int:
    """Count the base version's chunks of documents this build does not touch."""
    if base is None:
        return 0
    row = conn.execute(
        sql.SQL("SELECT count(*) AS n FROM {} c WHERE ").format(sql.Identifier(ticket.table))
        + store.in_version() + sql.SQL(
            " AND c.doc_id NOT IN (SELECT doc_id FROM kb_build_docs"
            " WHERE kb_id = %(kb_id)s AND version = %(new)s)"),
        {"version": base, "kb_id": ticket.kb_id, "new": ticket.version},
    ).fetchone()
    return int(row["n"]) if row else 0


def _live_doc_count(conn: store.Conn, ticket: BuildTicket) -> int | None:
    return store.manifest_size(conn, ticket.kb_id, ticket.live_version)


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
        "texts_embedded": stats.texts, "reused": plan.unchanged + copied, "removed": closed,
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
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(ticket.table)))
        stats = store.version_stats(conn, ticket.table, ticket.version)
        previous = dict(store.version_row(conn, ticket.kb_id, ticket.version).counts)
        all_counts = (previous | counts | stats | placed.as_counts()
                      | {"hnsw_index": placed.action != "exact"})
        store.set_status(conn, ticket.kb_id, ticket.version, store.VersionStatus.CANDIDATE, counts=all_counts,
                         finished_at=datetime.now(UTC))
    return all_counts


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
