"""Building one version: start or resume, stage chunks, reuse, embed, finalize.

Every function takes an open connection and plain values. Bulk data stays in
Postgres: chunks are staged with COPY, unchanged vectors are reused with
server-side SQL, and only chunks whose text hash is unknown to the table are
streamed to the embedder in bounded batches.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from kbrefresh.embedders.base import Embedder
from kbrefresh.errors import EmbeddingError
from kbrefresh.models import Chunk, Document
from kbrefresh.store import Conn, FingerprintTable, in_version, revert_version_rows

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


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
        "WHERE kb_id = %s AND status IN ('building', 'candidate') ORDER BY version DESC",
        (kb_id,),
    ).fetchall()
    resumed: int | None = None
    for row in stale:
        if resumed is None and row["status"] == "building" and row["fingerprint_id"] == fp.id:
            resumed = int(row["version"])
            continue
        conn.execute(
            "UPDATE kb_versions SET status = 'failed', error = %s, finished_at = now() "
            "WHERE kb_id = %s AND version = %s",
            (f"abandoned while {row['status']}: a later refresh started", kb_id, row["version"]),
        )
    _revert_abandoned(conn, kb_id, fp)
    if resumed is not None:
        # Redo the build from the base; vectors it already wrote stay reusable by hash.
        revert_version_rows(conn, fp.table, resumed)
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
        "flow_run_id) VALUES (%s, %s, %s, 'building', %s, %s, %s)",
        (kb_id, version, fp.id, tag, source, flow_run_id),
    )
    return version, False


def _revert_abandoned(conn: Conn, kb_id: int, fp: FingerprintTable) -> None:
    rows = conn.execute(
        "SELECT version FROM kb_versions WHERE kb_id = %s AND fingerprint_id = %s "
        "AND status IN ('rejected', 'failed', 'rolled_back') AND reverted_at IS NULL "
        "ORDER BY version DESC",
        (kb_id, fp.id),
    ).fetchall()
    for row in rows:
        emptied, reopened = revert_version_rows(conn, fp.table, int(row["version"]))
        conn.execute(
            "UPDATE kb_versions SET reverted_at = now() WHERE kb_id = %s AND version = %s",
            (kb_id, row["version"]),
        )
        logger.info(
            "undid abandoned version %s: %d rows emptied, %d reopened", row["version"], emptied, reopened
        )


@dataclass(frozen=True)
class DocumentChanges:
    new: int
    changed: int
    unchanged: int
    deleted: int


def record_documents(
    conn: Conn, kb_id: int, version: int, docs: Sequence[Document]
) -> DocumentChanges:
    """Update the document catalog and store the version's manifest (doc ids + hashes)."""
    previous = {
        r["doc_id"]: r["content_hash"]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM kb_documents WHERE kb_id = %s AND deleted_at IS NULL",
            (kb_id,),
        ).fetchall()
    }
    current = {d.doc_id: d.content_hash for d in docs}
    changes = DocumentChanges(
        new=sum(1 for d in current if d not in previous),
        changed=sum(1 for d, h in current.items() if d in previous and previous[d] != h),
        unchanged=sum(1 for d, h in current.items() if previous.get(d) == h),
        deleted=sum(1 for d in previous if d not in current),
    )
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_docs (LIKE kb_documents INCLUDING DEFAULTS) ON COMMIT DROP")
    with conn.cursor().copy(
        "COPY tmp_docs (kb_id, doc_id, uri, title, category, metadata, content_hash, modified_at) "
        "FROM STDIN"
    ) as copy:
        for d in docs:
            copy.write_row(
                (kb_id, d.doc_id, d.uri, d.title, d.category, json.dumps(dict(d.metadata), default=str),
                 d.content_hash, d.modified_at)
            )
    conn.execute(
        "INSERT INTO kb_documents (kb_id, doc_id, uri, title, category, metadata, content_hash, "
        "modified_at) SELECT kb_id, doc_id, uri, title, category, metadata, content_hash, "
        "modified_at FROM tmp_docs ON CONFLICT (kb_id, doc_id) DO UPDATE SET uri = EXCLUDED.uri, "
        "title = EXCLUDED.title, category = EXCLUDED.category, metadata = EXCLUDED.metadata, "
        "content_hash = EXCLUDED.content_hash, modified_at = EXCLUDED.modified_at, "
        "last_seen = now(), deleted_at = NULL"
    )
    conn.execute(
        "UPDATE kb_documents d SET deleted_at = now() WHERE d.kb_id = %s AND d.deleted_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM tmp_docs t WHERE t.doc_id = d.doc_id)",
        (kb_id,),
    )
    conn.execute(
        "DELETE FROM kb_version_documents WHERE kb_id = %s AND version = %s", (kb_id, version)
    )
    conn.execute(
        "INSERT INTO kb_version_documents (kb_id, version, doc_id, content_hash) "
        "SELECT %s, %s, doc_id, content_hash FROM tmp_docs",
        (kb_id, version),
    )
    conn.execute("DROP TABLE tmp_docs")
    return changes


def stage_chunks(conn: Conn, kb_id: int, version: int, chunks: Iterable[Chunk]) -> int:
    """Replace the staged chunks of ``version`` with ``chunks``; return how many."""
    conn.execute("DELETE FROM kb_build_chunks WHERE kb_id = %s AND version = %s", (kb_id, version))
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


def version_manifest(conn: Conn, kb_id: int, version: int | None) -> dict[str, str]:
    """Return ``{doc_id: content_hash}`` of a version's manifest (empty for None)."""
    if version is None:
        return {}
    return {
        r["doc_id"]: r["content_hash"]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM kb_version_documents WHERE kb_id = %s AND version = %s",
            (kb_id, version),
        ).fetchall()
    }


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
        return -(-self.to_embed_chars // 4)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"estimated_tokens": self.estimated_tokens}


_STAGED = "s.kb_id = %(kb_id)s AND s.version = %(version)s"
_OPEN_MATCH = (
    "EXISTS (SELECT 1 FROM {t} o WHERE o.valid_to IS NULL AND o.doc_id = s.doc_id "
    "AND o.chunk_index = s.chunk_index AND o.content_hash = s.content_hash)"
)
_HASH_KNOWN = "EXISTS (SELECT 1 FROM {t} x WHERE x.content_hash = s.content_hash)"
_TOUCHED = (
    "o.doc_id IN (SELECT d.doc_id FROM kb_build_docs d"
    " WHERE d.kb_id = %(kb_id)s AND d.version = %(version)s)"
)


def plan_build(conn: Conn, kb_id: int, version: int, table: str) -> BuildPlan:
    """Count unchanged, reusable and to-embed chunks without changing anything."""
    t = sql.Identifier(table)
    params = {"kb_id": kb_id, "version": version}
    q = sql.SQL(
        "SELECT count(*) AS total,"
        " count(*) FILTER (WHERE " + _OPEN_MATCH + ") AS unchanged,"
        " count(*) FILTER (WHERE NOT " + _OPEN_MATCH + " AND " + _HASH_KNOWN + ") AS reusable,"
        " count(*) FILTER (WHERE NOT " + _HASH_KNOWN + ") AS to_embed"
        " FROM kb_build_chunks s WHERE " + _STAGED
    ).format(t=t)
    counts = conn.execute(q, params).fetchone()
    texts = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n, coalesce(sum(length(embed_text)), 0) AS chars FROM ("
            " SELECT DISTINCT ON (content_hash) embed_text FROM kb_build_chunks s"
            " WHERE " + _STAGED + " AND NOT " + _HASH_KNOWN + ") d"
        ).format(t=t),
        params,
    ).fetchone()
    open_rows = conn.execute(
        sql.SQL(
            "SELECT count(*) AS open, count(*) FILTER (WHERE NOT " + _TOUCHED + ") AS untouched,"
            " count(*) FILTER (WHERE " + _TOUCHED + " AND NOT EXISTS ("
            " SELECT 1 FROM kb_build_chunks s WHERE " + _STAGED + " AND s.doc_id = o.doc_id"
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


def apply_reuse(conn: Conn, kb_id: int, version: int, table: str) -> tuple[int, int]:
    """Close replaced rows and copy reusable vectors server-side; return (closed, copied)."""
    t = sql.Identifier(table)
    params = {"kb_id": kb_id, "version": version}
    closed = conn.execute(
        sql.SQL(
            "UPDATE {t} o SET valid_to = %(version)s WHERE o.valid_to IS NULL AND " + _TOUCHED +
            " AND NOT EXISTS ("
            " SELECT 1 FROM kb_build_chunks s WHERE " + _STAGED + " AND s.doc_id = o.doc_id"
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
            " WHERE " + _STAGED + " AND NOT " + _OPEN_MATCH
        ).format(t=t),
        params,
    ).rowcount
    return closed, copied


@dataclass(frozen=True)
class EmbedStats:
    texts: int
    rows: int
    embed_seconds: float
    load_seconds: float


def embed_missing(
    reader: Conn,
    writer: Conn,
    *,
    kb_id: int,
    version: int,
    table: str,
    embedder: Embedder,
    batch_size: int,
    total_texts: int = 0,
    on_progress: ProgressFn | None = None,
) -> EmbedStats:
    """Embed staged chunks whose text hash the table does not know, and COPY them in.

    Streams from a server-side cursor on ``reader`` and commits each batch on
    ``writer``, so a crash keeps finished batches (a resumed build reuses them)
    and at most one batch of vectors is in memory.
    """
    query = sql.SQL(
        "SELECT s.content_hash, s.embed_text, s.doc_id, s.chunk_index, s.content,"
        " s.metadata::text AS metadata"
        " FROM kb_build_chunks s WHERE " + _STAGED + " AND NOT " + _HASH_KNOWN +
        " ORDER BY s.content_hash, s.doc_id, s.chunk_index"
    ).format(t=sql.Identifier(table))
    texts = rows = 0
    embed_s = load_s = 0.0
    batch: list[dict[str, Any]] = []
    hashes = 0
    with reader.transaction(), reader.cursor(name="kbrefresh_embed") as cur:
        # Sorting staged rows by hash in memory instead of spilling to disk.
        reader.execute("SET LOCAL work_mem = '256MB'")
        cur.itersize = max(batch_size * 2, 512)
        cur.execute(query, {"kb_id": kb_id, "version": version})
        for row in cur:
            new_hash = not batch or batch[-1]["content_hash"] != row["content_hash"]
            if new_hash and hashes >= batch_size:
                e, lo = _flush(writer, table, version, batch, embedder)
                texts, rows, embed_s, load_s = texts + hashes, rows + len(batch), embed_s + e, load_s + lo
                if on_progress:
                    on_progress(texts, total_texts)
                batch, hashes = [], 0
            hashes += new_hash
            batch.append(row)
        if batch:
            e, lo = _flush(writer, table, version, batch, embedder)
            texts, rows, embed_s, load_s = texts + hashes, rows + len(batch), embed_s + e, load_s + lo
            if on_progress:
                on_progress(texts, total_texts)
    return EmbedStats(texts, rows, embed_s, load_s)


def _flush(
    writer: Conn, table: str, version: int, batch: list[dict[str, Any]], embedder: Embedder
) -> tuple[float, float]:
    unique: dict[str, str] = {}
    for row in batch:
        unique.setdefault(row["content_hash"], row["embed_text"])
    started = time.perf_counter()
    vectors = embedder.embed(list(unique.values()))
    embedded = time.perf_counter()
    if vectors.shape != (len(unique), vectors.shape[1]) or not np.isfinite(vectors).all():
        raise EmbeddingError(
            f"embedder {embedder.provider}/{embedder.model} returned unusable vectors "
            f"(shape {vectors.shape!r} for {len(unique)} texts, or non-finite values)"
        )
    by_hash = dict(zip(unique, vectors, strict=True))
    load_rows(writer, table, version, batch, by_hash)
    return embedded - started, time.perf_counter() - embedded


def _jsonb(value: Any) -> Jsonb:
    # Metadata read as JSON text goes back verbatim: no parse and re-dump per row.
    return Jsonb(value, dumps=_identity) if isinstance(value, str) else Jsonb(value)


def _identity(text: str) -> str:
    return text


def load_rows(
    writer: Conn,
    table: str,
    version: int,
    rows: Sequence[dict[str, Any]],
    vectors: dict[str, np.ndarray[Any, Any]],
) -> None:
    """Write chunk rows with their vectors by binary COPY and commit."""
    with writer.cursor() as cur, cur.copy(
        sql.SQL(
            "COPY {} (doc_id, chunk_index, content, content_hash, metadata, embedding, "
            "valid_from) FROM STDIN WITH (FORMAT BINARY)"
        ).format(sql.Identifier(table))
    ) as copy:
        copy.set_types(["text", "int4", "text", "text", "jsonb", "vector", "int4"])
        for r in rows:
            copy.write_row(
                (r["doc_id"], r["chunk_index"], r["content"], r["content_hash"],
                 _jsonb(r["metadata"]), vectors[r["content_hash"]], version)
            )
    writer.commit()

