"""The embedding steps of the refresh: plan batches, embed one batch, or use the Batch API.

``steps`` re-exports them (a step's function name is its task name and timing key).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kbrefresh.build import batch_api, embedding
from kbrefresh.build.embedding import NO_STATS, EmbedBatch, EmbedStats, ProgressFn
from kbrefresh.build.staging import BuildPlan
from kbrefresh.db import connect
from kbrefresh.embedders import Embedder, make_embedder
from kbrefresh.embedders.throttled import ThrottledEmbedder
from kbrefresh.models import BuildTicket
from kbrefresh.settings import Settings
from kbrefresh.store.embed_jobs import embed_jobs


def embed_changed(
    settings: Settings,
    ticket: BuildTicket,
    *,
    embedder: Embedder | None = None,
    total_texts: int = 0,
    on_progress: ProgressFn | None = None,
) -> EmbedStats:
    """Embed and load only chunks whose text is new to this fingerprint's table, in order."""
    embedder = embedder or make_embedder(settings)
    with connect(settings) as reader, connect(settings) as writer:
        return embedding.embed_missing(
            reader, writer, kb_id=ticket.kb_id, version=ticket.version, table=ticket.table,
            embedder=embedder, batch_size=settings.embed_batch_size,
            max_chars=settings.embed_batch_max_chars, total_texts=total_texts,
            on_progress=on_progress,
        )


def plan_embedding(
    settings: Settings, ticket: BuildTicket, *, first_doc_ids: Sequence[str] = ()
) -> list[EmbedBatch]:
    """Cut the texts new to this fingerprint's table into request-sized batches.

    Batches holding texts of ``first_doc_ids`` (a rebrand's affected documents) come first.
    """
    with connect(settings) as conn:
        batches = embedding.plan_batches(
            conn, kb_id=ticket.kb_id, version=ticket.version, table=ticket.table,
            batch_size=settings.embed_batch_size, max_chars=settings.embed_batch_max_chars)
        if not first_doc_ids:
            return batches
        hashes = [r["content_hash"] for r in conn.execute(
            "SELECT DISTINCT content_hash FROM kb_build_chunks WHERE kb_id = %s AND version = %s"
            " AND doc_id = ANY(%s)", (ticket.kb_id, ticket.version, list(first_doc_ids)))]
    return sorted(batches, key=lambda b: not any(b.first_hash <= h <= b.last_hash for h in hashes))


def embed_batch(
    settings: Settings,
    ticket: BuildTicket,
    batch: EmbedBatch,
    *,
    embedder: Embedder | None = None,
) -> EmbedStats:
    """Embed one planned batch and load it; safe to repeat (known hashes are skipped)."""
    embedder = embedder or make_embedder(settings)
    with connect(settings) as reader, connect(settings) as writer:
        return embedding.embed_batch(
            reader, writer, kb_id=ticket.kb_id, version=ticket.version, table=ticket.table,
            batch=batch, embedder=embedder, storage=ticket.storage)


def embed_with_batch_api(
    settings: Settings,
    ticket: BuildTicket,
    plan: BuildPlan,
    *,
    embedder: Embedder | None = None,
    sleep: batch_api.SleepFn = time.sleep,
) -> EmbedStats:
    """Embed a large full build through the OpenAI Batch API (or resume polling its batch).

    Does nothing unless ``embed_batch_api`` is on, the embedder is OpenAI's, and this
    is a full build of at least ``embed_batch_api_min_texts`` texts or a resumed build
    with a recorded batch. What it leaves unembedded, the synchronous fan-out embeds.
    """
    embedder = embedder or make_embedder(settings)
    inner = embedder.inner if isinstance(embedder, ThrottledEmbedder) else embedder
    from kbrefresh.embedders.openai import OpenAIEmbedder

    if not settings.embed_batch_api or not isinstance(inner, OpenAIEmbedder):
        return NO_STATS
    with connect(settings) as conn:
        large = plan.full_build and plan.to_embed_texts >= settings.embed_batch_api_min_texts
        if not large and not embed_jobs(conn, ticket.kb_id, ticket.version):
            return NO_STATS
        return batch_api.embed_with_batch_api(conn, settings, ticket, inner, sleep=sleep)
