"""Full re-embeds through the OpenAI Batch API: half the price, done within 24 hours.

The planned batches (``embedding.plan_batches``) become the lines of a JSONL file,
one embeddings request each; the file is uploaded, a provider batch created, and its
id recorded with the version in ``kb_embed_jobs`` *before* anyone waits on it. Then
the flow polls. A build that crashes and resumes finds the recorded batch and polls
it again instead of paying twice. Results are matched back by hashing each input
text (a chunk's ``content_hash`` is the sha256 of its ``embed_text``) and loaded by
binary COPY. Whatever the Batch API does not deliver (the endpoint is missing, the
batch fails, expires or passes ``embed_batch_api_max_hours``, some lines error) is
left unknown to the table, so the synchronous fan-out that follows embeds it.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import openai
from psycopg import sql

from kbrefresh.build.embedding import NO_STATS, EmbedStats, load_rows, plan_batches
from kbrefresh.build.staging import HASH_KNOWN, STAGED
from kbrefresh.embedders.openai import OpenAIEmbedder
from kbrefresh.models import BuildTicket, sha256_text
from kbrefresh.settings import Settings
from kbrefresh.store import Conn
from kbrefresh.store.embed_jobs import EmbedJob, embed_jobs, finish_embed_job, record_embed_job

logger = logging.getLogger(__name__)

#: The Batch API's limit on requests per input file.
MAX_REQUESTS_PER_JOB = 50_000
_DONE = {"completed", "failed", "expired", "cancelled"}
SleepFn = Callable[[float], None]


def embed_with_batch_api(
    conn: Conn, settings: Settings, ticket: BuildTicket, embedder: OpenAIEmbedder,
    *, sleep: SleepFn = time.sleep,
) -> EmbedStats:
    """Submit (or find) this version's provider batches, poll them, load what they return."""
    jobs = embed_jobs(conn, ticket.kb_id, ticket.version)
    if not jobs:
        jobs = _submit(conn, settings, ticket, embedder)
    stats = NO_STATS
    for job in jobs:
        if job.status == "submitted":
            stats += _finish(conn, settings, ticket, embedder, job, sleep)
    return stats


def _submit(
    conn: Conn, settings: Settings, ticket: BuildTicket, embedder: OpenAIEmbedder
) -> list[EmbedJob]:
    batches = plan_batches(conn, kb_id=ticket.kb_id, version=ticket.version, table=ticket.table,
                           batch_size=settings.embed_batch_size,
                           max_chars=settings.embed_batch_max_chars)
    conn.commit()
    jobs = []
    for job_no, start in enumerate(range(0, len(batches), MAX_REQUESTS_PER_JOB)):
        lines = io.BytesIO()
        for batch in batches[start:start + MAX_REQUESTS_PER_JOB]:
            texts = _texts(conn, ticket, batch.first_hash, batch.last_hash)
            line = {"custom_id": f"b{batch.number}", "method": "POST", "url": "/v1/embeddings",
                    "body": embedder.request_body(texts)}
            lines.write(json.dumps(line).encode("utf-8") + b"\n")
        count = min(MAX_REQUESTS_PER_JOB, len(batches) - start)
        try:
            uploaded = embedder.client.files.create(
                file=(f"kbrefresh-v{ticket.version}-{job_no}.jsonl", lines.getvalue()),
                purpose="batch")
            created = embedder.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h",
                metadata={"kb": ticket.kb, "version": str(ticket.version)})
        except openai.APIError as exc:
            logger.warning("the Batch API refused the job (%s); embedding synchronously", exc)
            break
        record_embed_job(conn, ticket.kb_id, ticket.version, job_no, created.id, uploaded.id, count)
        logger.info("submitted provider batch %s: %d requests", created.id, count)
        jobs.append(EmbedJob(job_no, created.id, uploaded.id, count, "submitted"))
    return jobs


def _texts(conn: Conn, ticket: BuildTicket, first: str, last: str) -> list[str]:
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT ON (s.content_hash) s.embed_text FROM kb_build_chunks s WHERE "
                + STAGED + " AND NOT " + HASH_KNOWN +
                " AND s.content_hash BETWEEN %(first)s AND %(last)s ORDER BY s.content_hash"
                ).format(t=sql.Identifier(ticket.table)),
        {"kb_id": ticket.kb_id, "version": ticket.version, "first": first, "last": last},
    ).fetchall()
    return [r["embed_text"] for r in rows]


def _finish(
    conn: Conn, settings: Settings, ticket: BuildTicket, embedder: OpenAIEmbedder,
    job: EmbedJob, sleep: SleepFn,
) -> EmbedStats:
    client = embedder.client
    deadline = time.monotonic() + settings.embed_batch_api_max_hours * 3600
    batch = client.batches.retrieve(job.provider_batch_id)
    while batch.status not in _DONE:
        if time.monotonic() > deadline:
            client.batches.cancel(job.provider_batch_id)
            return _give_up(conn, ticket, job, "still unfinished after embed_batch_api_max_hours")
        sleep(settings.embed_batch_api_poll_seconds)
        batch = client.batches.retrieve(job.provider_batch_id)
    if batch.status != "completed" or not batch.output_file_id:
        return _give_up(conn, ticket, job, f"provider batch ended {batch.status!r}")
    inputs = _by_custom_id(client.files.content(job.input_file_id).content)
    stats = NO_STATS
    for raw in client.files.content(batch.output_file_id).content.splitlines():
        if raw.strip():
            stats += _load_line(conn, ticket, embedder, json.loads(raw), inputs)
    finish_embed_job(conn, ticket.kb_id, ticket.version, job.job_no, "loaded")
    return stats


def _give_up(conn: Conn, ticket: BuildTicket, job: EmbedJob, why: str) -> EmbedStats:
    logger.warning("provider batch %s: %s; embedding synchronously", job.provider_batch_id, why)
    finish_embed_job(conn, ticket.kb_id, ticket.version, job.job_no, "failed", why)
    return NO_STATS


def _by_custom_id(content: bytes) -> dict[str, list[str]]:
    lines = (json.loads(raw) for raw in content.splitlines() if raw.strip())
    return {line["custom_id"]: list(line["body"]["input"]) for line in lines}


def _load_line(
    conn: Conn, ticket: BuildTicket, embedder: OpenAIEmbedder, line: dict[str, Any],
    inputs: dict[str, list[str]],
) -> EmbedStats:
    response = line.get("response") or {}
    texts = inputs.get(line.get("custom_id", ""), [])
    if response.get("status_code") != 200 or not texts:
        logger.warning("batch line %s failed: %s", line.get("custom_id"), line.get("error"))
        return NO_STATS
    started = time.perf_counter()
    vectors = embedder.vectors_from_body(response["body"], len(texts))
    by_hash = {sha256_text(text): vector for text, vector in zip(texts, vectors, strict=True)}
    rows = conn.execute(
        sql.SQL("SELECT s.content_hash, s.doc_id, s.chunk_index, s.content,"
                " s.metadata::text AS metadata FROM kb_build_chunks s WHERE " + STAGED +
                " AND NOT " + HASH_KNOWN + " AND s.content_hash = ANY(%(hashes)s)"
                ).format(t=sql.Identifier(ticket.table)),
        {"kb_id": ticket.kb_id, "version": ticket.version, "hashes": list(by_hash)},
    ).fetchall()
    load_rows(conn, ticket.table, ticket.version, rows, by_hash, storage=ticket.storage)
    loaded = {r["content_hash"] for r in rows}
    return EmbedStats(len(loaded), len(rows), 0.0, time.perf_counter() - started)
