"""Embed only what is new to a fingerprint's table and load it by binary COPY.

Staged chunks whose text hash the table does not know are streamed from a
server-side cursor in bounded batches; each batch is embedded, written by binary
COPY and committed, so a crash keeps finished batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from kbrefresh.build.staging import HASH_KNOWN, STAGED
from kbrefresh.embedders.base import Embedder
from kbrefresh.errors import EmbeddingError
from kbrefresh.store import Conn

ProgressFn = Callable[[int, int], None]


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
    first_doc_ids: Sequence[str] = (),
) -> EmbedStats:
    """Embed staged chunks whose text hash the table does not know, and COPY them in.

    Streams from a server-side cursor on ``reader`` and commits each batch on
    ``writer``, so a crash keeps finished batches (a resumed build reuses them)
    and at most one batch of vectors is in memory. Texts used by ``first_doc_ids`` come
    first (a rebrand's affected documents); rows of one hash stay together either way.
    """
    # Only a rebrand pays for the window: rows of a hash named first move up together.
    first = (" bool_or(s.doc_id = ANY(%(first)s::text[])) OVER (PARTITION BY s.content_hash)"
             " DESC," if first_doc_ids else "")
    query = sql.SQL(
        "SELECT s.content_hash, s.embed_text, s.doc_id, s.chunk_index, s.content,"
        " s.metadata::text AS metadata"
        " FROM kb_build_chunks s WHERE " + STAGED + " AND NOT " + HASH_KNOWN +
        " ORDER BY" + first + " s.content_hash, s.doc_id, s.chunk_index"
    ).format(t=sql.Identifier(table))
    texts = rows = 0
    embed_s = load_s = 0.0
    batch: list[dict[str, Any]] = []
    hashes = 0
    with reader.transaction(), reader.cursor(name="kbrefresh_embed") as cur:
        # Sorting staged rows by hash in memory instead of spilling to disk.
        reader.execute("SET LOCAL work_mem = '256MB'")
        cur.itersize = max(batch_size * 2, 512)
        cur.execute(query, {"kb_id": kb_id, "version": version, "first": list(first_doc_ids)})
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

