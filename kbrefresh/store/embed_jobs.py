"""Batch API jobs of a build (``kb_embed_jobs``): recorded before polling, read on resume."""

from __future__ import annotations

from dataclasses import dataclass

from kbrefresh.store.rows import Conn


@dataclass(frozen=True)
class EmbedJob:
    job_no: int
    provider_batch_id: str
    input_file_id: str
    requests: int
    status: str


def embed_jobs(conn: Conn, kb_id: int, version: int) -> list[EmbedJob]:
    """Return the Batch API jobs of ``version``, oldest first."""
    rows = conn.execute(
        "SELECT job_no, provider_batch_id, input_file_id, requests, status FROM kb_embed_jobs "
        "WHERE kb_id = %s AND version = %s ORDER BY job_no", (kb_id, version)).fetchall()
    return [EmbedJob(int(r["job_no"]), r["provider_batch_id"], r["input_file_id"],
                     int(r["requests"]), r["status"]) for r in rows]


def record_embed_job(
    conn: Conn, kb_id: int, version: int, job_no: int, batch_id: str, file_id: str, requests: int
) -> None:
    """Record a submitted provider batch and commit (before anyone waits on it)."""
    conn.execute(
        "INSERT INTO kb_embed_jobs (kb_id, version, job_no, provider_batch_id, input_file_id, "
        "requests) VALUES (%s, %s, %s, %s, %s, %s)",
        (kb_id, version, job_no, batch_id, file_id, requests))
    conn.commit()


def finish_embed_job(
    conn: Conn, kb_id: int, version: int, job_no: int, status: str, error: str | None = None
) -> None:
    conn.execute(
        "UPDATE kb_embed_jobs SET status = %s, error = %s, finished_at = now() "
        "WHERE kb_id = %s AND version = %s AND job_no = %s",
        (status, error, kb_id, version, job_no))
    conn.commit()
