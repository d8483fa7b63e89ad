"""Tasks that start, plan, fill and close a knowledge-base version in Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task

from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.staging import BuildPlan
from kbrefresh.embedders import make_embedder
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps as pipeline
from kbrefresh.refresh.steps import BuildTicket, PrepareResult
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records
from tasks._common import TASK_OPTIONS


@contextmanager
def hold_refresh_lock(kb: str, wait_seconds: float) -> Iterator[int]:
    """Hold ``kb``'s refresh lock in the flow process around every step; yield the KB id.

    Not a task: the advisory lock lives on a session that must outlast the tasks.

    Raises:
        BuildLockedError: another refresh of ``kb`` still holds it after ``wait_seconds``.
    """
    with pipeline.refresh_lock(Settings(), kb, wait_seconds=wait_seconds) as kb_id:
        yield kb_id


@task(**TASK_OPTIONS)
def begin_version(
    kb: str, source: str, chunker: ChunkerConfig, flow_run_id: str | None
) -> BuildTicket:
    """Start a new version of ``kb`` (or resume one a crashed run left building)."""
    logger = get_run_logger()
    settings = Settings()
    fingerprint = pipeline.fingerprint_for(make_embedder(settings), chunker)
    ticket = pipeline.begin_build(settings, kb, fingerprint, source=source, flow_run_id=flow_run_id)
    logger.info(
        "%s version %d of %r (fingerprint %s, %s/%s, %d dims); live is %s",
        "resuming" if ticket.resumed else "building", ticket.version, kb, ticket.fingerprint_key,
        fingerprint.provider, fingerprint.model, fingerprint.dims,
        f"v{ticket.live_version}" if ticket.live_version else "none yet",
    )
    return ticket


@task(**TASK_OPTIONS)
def plan_version(ticket: BuildTicket) -> BuildPlan:
    """Count what the build will reuse and embed, and warn before a full re-embed."""
    logger = get_run_logger()
    plan = pipeline.plan_build(Settings(), ticket)
    logger.info(
        "plan for v%d: %d chunks, %d unchanged, %d reusable, %d to embed (%d texts, ~%d tokens), "
        "%d replaced",
        ticket.version, plan.chunks_total, plan.unchanged, plan.reusable, plan.to_embed_chunks,
        plan.to_embed_texts, plan.estimated_tokens, plan.replaced,
    )
    if ticket.fingerprint_changed:
        logger.warning(
            "embedding fingerprint changed (%s -> %s): this is a full build into a new table; "
            "%d chunks will be embedded, about %d tokens",
            ticket.live_fingerprint_key, ticket.fingerprint_key, plan.to_embed_chunks,
            plan.estimated_tokens,
        )
    return plan


@task(**TASK_OPTIONS)
def reuse_unchanged_chunks(ticket: BuildTicket) -> tuple[int, int]:
    """Close replaced rows and copy reusable vectors inside Postgres; return (closed, copied)."""
    closed, copied = pipeline.reuse_unchanged(Settings(), ticket)
    get_run_logger().info("reused in Postgres: %d rows closed, %d vectors copied", closed, copied)
    return closed, copied


@task(**TASK_OPTIONS)
def finalize_version(
    ticket: BuildTicket,
    prepared: PrepareResult,
    plan: BuildPlan,
    stats: EmbedStats,
    reuse: tuple[int, int],
) -> dict[str, Any]:
    """Build the vector index if missing, analyze, and mark the version a candidate."""
    counts = pipeline.build_counts(prepared, plan, stats, reuse)
    all_counts = pipeline.finalize_build(Settings(), ticket, counts)
    get_run_logger().info("v%d is a candidate: %s", ticket.version, all_counts)
    return all_counts


@task(**TASK_OPTIONS)
def mark_build_failed(ticket: BuildTicket, error: BaseException, source: str) -> None:
    """Mark the version failed so the next run undoes its rows; live keeps serving.

    The failed build is still recorded as an MLflow run (status failed, the error and
    any quality report as artifacts).
    """
    settings = Settings()
    pipeline.fail_build(settings, ticket, error)
    if settings.tracking and isinstance(error, Exception):
        records.record_failure(settings, ticket, source=source, error=error)
    get_run_logger().error(
        "v%d of %r failed (%s: %s); live version %s keeps serving",
        ticket.version, ticket.kb, type(error).__name__, error, ticket.live_version,
    )
