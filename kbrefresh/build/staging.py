"""Building one version: start or resume, record documents, stage chunks, plan, reuse.

Every function takes an open connection and plain values. Bulk data stays in
Postgres: chunks are staged with COPY, unchanged vectors are reused with
server-side SQL, and only chunks whose text hash is unknown to the table are
streamed to the embedder in bounded batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from kbrefresh._text import tokens_for_chars
from kbrefresh.models import Chunk
from kbrefresh.store import (
    ABANDONED,
    UNFINISHED,
    Conn,
    FingerprintTable,
    VersionStatus,
    undo_version,
)

logger = logging.getLogger(__name__)

def start_version(
    conn: Conn, kb_id: int, fp: FingerprintTable, *, source: str, flow_run_id: str | None
) -> tuple[int, bool]:
    """Return (version, resumed): resume a crashed build of the same fingerprint, else a new one.

    Must run under the KB's refresh lock: any version still 'building' or
    'candidate' then belongs to a run that died, and abandoned versions
    (rejected, failed, rolled back) have their row ranges undone first.
    """
    stale = conn.execute(
        "SELECT version, fingerprint_id, status FROM kb_versions "
        "WHERE kb_id = %s AND status = ANY(%s) ORDER BY version DESC",
        (kb_id, list(UNFINISHED)),
    ).fetchall()
    resumed: int | None = None
    for row in stale:
        if resumed is None and row["status"] == VersionStatus.BUILDING and row["fingerprint_id"] == fp.id:
            resumed = int(row["version"])
            continue
        conn.execute(
            "UPDATE kb_versions SET status = %s, error = %s, finished_at = now() "
            "WHERE kb_id = %s AND version = %s",
            (VersionStatus.FAILED, f"abandoned while {row['status']}: a later refresh started",
             kb_id, row["version"]),
        )
    _revert_abandoned(conn, kb_id, fp)
    # Staging rows of any other version belong to a run that died after its swap or its
    # rejection committed and before it cleared them: nothing else will ever read them.
    for table in ("kb_build_chunks", "kb_build_docs"):
        conn.execute(sql.SQL("DELETE FROM {} WHERE kb_id = %s AND version IS DISTINCT FROM %s")
                     .format(sql.Identifier(table)), (kb_id, resumed))
    if resumed is not None:
        # Redo the build from the base; vectors it already wrote stay reusable by hash.
        undo_version(conn, fp, resumed)
        conn.execute(
            "UPDATE kb_versions SET source = %s, flow_run_id = %s, error = NULL "
            "WHERE kb_id = %s AND version = %s",
            (source, flow_run_id, kb_id, resumed),
        )
        logger.info("resuming version %d left building by an earlier run", resumed)
        return resumed, True
    row = conn.execute(
        "SELECT coalesce(max(version), 0) + 1 AS v FROM kb_versions WHERE kb_id = %s", (kb_id,)
    ).fetchone()
    assert row is not None
    version = int(row["v"])
    tag = f"v{version}-{datetime.now(UTC):%Y-%m-%d}"
    conn.execute(
        "INSERT INTO kb_versions (kb_id, version, fingerprint_id, status, dataset_tag, source, "
        "flow_run_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (kb_id, version, fp.id, VersionStatus.BUILDING, tag, source, flow_run_id),
    )
    return version, False


def _revert_abandoned(conn: Conn, kb_id: int, fp: FingerprintTable) -> None:
    rows = conn.execute(
        "SELECT version FROM kb_versions WHERE kb_id = %s AND fingerprint_id = %s "
        "AND status = ANY(%s) AND reverted_at IS NULL ORDER BY version DESC",
        (kb_id, fp.id, list(ABANDONED)),
    ).fetchall()
    for row in rows:
        undo = undo_version(conn, fp, int(row["version"]))
        conn.execute(
            "UPDATE kb_versions SET reverted_at = now() WHERE kb_id = %s AND version = %s",
            (kb_id, row["version"]),
        )
        logger.info(
            "undid abandoned version %s: %d rows emptied, %d reopened, HNSW indexes dropped: %s",
            row["version"], undo.emptied, undo.reopened, ", ".join(undo.dropped) or "none",
        )


def stage_chunks(conn: Conn, kb_id: int, version: int, chunks: Iterable[Chunk]) -> int:
    """Replace the staged chunks of ``version`` with ``chunks``; return how many."""
    clear_staged_chunks(conn, kb_id, version)
    return append_chunks(conn, kb_id, version, chunks)


def clear_staged_chunks(conn: Conn, kb_id: int, version: int) -> None:
    conn.execute("DELETE FROM kb_build_chunks WHERE kb_id = %s AND version = %s", (kb_id, version))


def append_chunks(conn: Conn, kb_id: int, version: int, chunks: Iterable[Chunk]) -> int:
    """Stage ``chunks`` for ``version`` (after those already staged); return how many."""
    count = 0
    with conn.cursor().copy(
        "COPY kb_build_chunks (kb_id, version, doc_id, chunk_index, content, embed_text, "
        "content_hash, metadata) FROM STDIN"
    ) as copy:
        for c in chunks:
            copy.write_row(
                (kb_id, version, c.doc_id, c.chunk_index, c.text, c.embed_text, c.content_hash,
                 json.dumps(dict(c.metadata), default=str))
            )
            count += 1
    return count


def record_touched_documents(
    conn: Conn, kb_id: int, version: int, table: str, doc_ids: set[str], *, full: bool
) -> int:
    """Store which documents this build may change; ``full`` adds every doc with open rows."""
    conn.execute("DELETE FROM kb_build_docs WHERE kb_id = %s AND version = %s", (kb_id, version))
    with conn.cursor().copy("COPY kb_build_docs (kb_id, version, doc_id) FROM STDIN") as copy:
        for doc_id in doc_ids:
            copy.write_row((kb_id, version, doc_id))
    if full:
        conn.execute(
            sql.SQL(
                "INSERT INTO kb_build_docs (kb_id, version, doc_id) SELECT DISTINCT %s, %s, o.doc_id"
                " FROM {} o WHERE o.valid_to IS NULL ON CONFLICT DO NOTHING"
            ).format(sql.Identifier(table)),
            (kb_id, version),
        )
    row = conn.execute(
        "SELECT count(*) AS n FROM kb_build_docs WHERE kb_id = %s AND version = %s", (kb_id, version)
    ).fetchone()
    return int(row["n"]) if row else 0


def clear_staging(conn: Conn, kb_id: int, version: int) -> None:
    conn.execute("DELETE FROM kb_build_chunks WHERE kb_id = %s AND version = %s", (kb_id, version))
    conn.execute("DELETE FROM kb_build_docs WHERE kb_id = %s AND version = %s", (kb_id, version))


@dataclass(frozen=True)
class BuildPlan:
    """What a build will do, known before any embedding call."""

    version: int
    chunks_total: int
    unchanged: int
    reusable: int
    to_embed_chunks: int
    to_embed_texts: int
    to_embed_chars: int
    replaced: int
    full_build: bool

    @property
    def estimated_tokens(self) -> int:
        return tokens_for_chars(self.to_embed_chars)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"estimated_tokens": self.estimated_tokens}


STAGED = "s.kb_id = %(kb_id)s AND s.version = %(version)s"
_OPEN_MATCH = (
    "EXISTS (SELECT 1 FROM {t} o WHERE o.valid_to IS NULL AND o.doc_id = s.doc_id "
    "AND o.chunk_index = s.chunk_index AND o.content_hash = s.content_hash)"
)
HASH_KNOWN = "EXISTS (SELECT 1 FROM {t} x WHERE x.content_hash = s.content_hash)"
_TOUCHED = (
    "o.doc_id IN (SELECT d.doc_id FROM kb_build_docs d"
    " WHERE d.kb_id = %(kb_id)s AND d.version = %(version)s)"
)


def count_plan(conn: Conn, kb_id: int, version: int, table: str) -> BuildPlan:
    """Count unchanged, reusable and to-embed chunks without changing anything."""
    t = sql.Identifier(table)
    params = {"kb_id": kb_id, "version": version}
    q = sql.SQL(
        "SELECT count(*) AS total,"
        " count(*) FILTER (WHERE " + _OPEN_MATCH + ") AS unchanged,"
        " count(*) FILTER (WHERE NOT " + _OPEN_MATCH + " AND " + HASH_KNOWN + ") AS reusable,"
        " count(*) FILTER (WHERE NOT " + HASH_KNOWN + ") AS to_embed"
        " FROM kb_build_chunks s WHERE " + STAGED
    ).format(t=t)
    counts = conn.execute(q, params).fetchone()
    texts = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n, coalesce(sum(length(embed_text)), 0) AS chars FROM ("
            " SELECT DISTINCT ON (content_hash) embed_text FROM kb_build_chunks s"
            " WHERE " + STAGED + " AND NOT " + HASH_KNOWN + ") d"
        ).format(t=t),
        params,
    ).fetchone()
    open_rows = conn.execute(
        sql.SQL(
            "SELECT count(*) AS open, count(*) FILTER (WHERE NOT " + _TOUCHED + ") AS untouched,"
            " count(*) FILTER (WHERE " + _TOUCHED + " AND NOT EXISTS ("
            " SELECT 1 FROM kb_build_chunks s WHERE " + STAGED + " AND s.doc_id = o.doc_id"
            " AND s.chunk_index = o.chunk_index AND s.content_hash = o.content_hash)) AS replaced"
            " FROM {t} o WHERE o.valid_to IS NULL"
        ).format(t=t),
        params,
    ).fetchone()
    assert counts is not None and texts is not None and open_rows is not None
    untouched = int(open_rows["untouched"])
    return BuildPlan(
        version=version,
        chunks_total=int(counts["total"]) + untouched,
        unchanged=int(counts["unchanged"]) + untouched,
        reusable=int(counts["reusable"]),
        to_embed_chunks=int(counts["to_embed"]),
        to_embed_texts=int(texts["n"]),
        to_embed_chars=int(texts["chars"]),
        replaced=int(open_rows["replaced"]),
        full_build=int(open_rows["open"]) == 0,
    )


def reuse_unchanged(conn: Conn, kb_id: int, version: int, table: str) -> tuple[int, int]:
    """Close replaced rows and copy reusable vectors server-side; return (closed, copied)."""
    t = sql.Identifier(table)
    params = {"kb_id": kb_id, "version": version}
    closed = conn.execute(
        sql.SQL(
            "UPDATE {t} o SET valid_to = %(version)s WHERE o.valid_to IS NULL AND " + _TOUCHED +
            " AND NOT EXISTS ("
            " SELECT 1 FROM kb_build_chunks s WHERE " + STAGED + " AND s.doc_id = o.doc_id"
            " AND s.chunk_index = o.chunk_index AND s.content_hash = o.content_hash)"
        ).format(t=t),
        params,
    ).rowcount
    copied = conn.execute(
        sql.SQL(
            "INSERT INTO {t} (doc_id, chunk_index, content, content_hash, metadata, embedding,"
            " valid_from) SELECT s.doc_id, s.chunk_index, s.content, s.content_hash, s.metadata,"
            " e.embedding, %(version)s FROM kb_build_chunks s CROSS JOIN LATERAL ("
            " SELECT x.embedding FROM {t} x WHERE x.content_hash = s.content_hash LIMIT 1) e"
            " WHERE " + STAGED + " AND NOT " + _OPEN_MATCH
        ).format(t=t),
        params,
    ).rowcount
    return closed, copied
