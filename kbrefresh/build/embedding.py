"""Embed only what is new to a fingerprint's table and load it by binary COPY.

The work is cut into :class:`EmbedBatch` descriptors first: hash ranges over the
staged chunks whose text hash the table does not know, each small enough for one
embeddings request (``batch_size`` texts, ``max_chars`` characters). Cutting reads
only hashes and lengths. Each batch is then read, embedded, written by binary COPY
and committed on its own, in any order and in parallel: ranges are disjoint, and a
crash keeps finished batches (the next plan no longer contains them). At most one
batch of vectors per worker is in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql
from psycopg.types.json import Jsonb

from kbrefresh._faults import fault_point
from kbrefresh._text import tokens_for_chars
from kbrefresh.build.staging import HASH_KNOWN, STAGED
from kbrefresh.embedders.base import Embedder
from kbrefresh.errors import EmbeddingError
from kbrefresh.store import Conn

ProgressFn = Callable[[int, int], None]
#: Called with (requests, estimated tokens) right before a request is sent; it may block
#: (a rate limit) or raise. See ``embedders.throttled`` and the Prefect runner.
ThrottleFn = Callable[[int, int], None]


@dataclass(frozen=True)
class EmbedStats:
    texts: int
    rows: int
    embed_seconds: float
    load_seconds: float

    def __add__(self, other: EmbedStats) -> EmbedStats:
        return EmbedStats(self.texts + other.texts, self.rows + other.rows,
                          self.embed_seconds + other.embed_seconds,
                          self.load_seconds + other.load_seconds)


NO_STATS = EmbedStats(0, 0, 0.0, 0.0)


@dataclass(frozen=True)
class EmbedBatch:
    """The unknown texts of one request: staged hashes from ``first_hash`` to ``last_hash``."""

    number: int
    first_hash: str
    last_hash: str
    texts: int
    chars: int

    @property
    def estimated_tokens(self) -> int:
        return tokens_for_chars(self.chars)


_UNKNOWN = " FROM kb_build_chunks s WHERE " + STAGED + " AND NOT " + HASH_KNOWN


def plan_batches(
    reader: Conn, *, kb_id: int, version: int, table: str, batch_size: int, max_chars: int
) -> list[EmbedBatch]:
    """Cut the staged texts unknown to ``table`` into request-sized hash ranges.

    A batch closes at ``batch_size`` texts, or before a text that would pass
    ``max_chars`` characters (a longer text goes alone).
    """
    query = sql.SQL(
        "SELECT s.content_hash, max(length(s.embed_text)) AS chars" + _UNKNOWN +
        " GROUP BY s.content_hash ORDER BY s.content_hash"
    ).format(t=sql.Identifier(table))
    batches: list[EmbedBatch] = []
    first = last = ""
    texts = chars = 0
    for row in _stream(reader, query, {"kb_id": kb_id, "version": version}, "kbrefresh_plan"):
        size = int(row["chars"])
        if texts and (texts == batch_size or chars + size > max_chars):
            batches.append(EmbedBatch(len(batches), first, last, texts, chars))
            texts = chars = 0
        if not texts:
            first = row["content_hash"]
        last, texts, chars = row["content_hash"], texts + 1, chars + size
    if texts:
        batches.append(EmbedBatch(len(batches), first, last, texts, chars))
    return batches


def embed_batch(
    reader: Conn,
    writer: Conn,
    *,
    kb_id: int,
    version: int,
    table: str,
    batch: EmbedBatch,
    embedder: Embedder,
    storage: str = "vector",
) -> EmbedStats:
    """Embed the staged chunks of ``batch`` still unknown to ``table``; COPY and commit them.

    Hashes loaded meanwhile (a retry, an earlier crashed attempt) are skipped.
    """
    query = sql.SQL(
        "SELECT s.content_hash, s.embed_text, s.doc_id, s.chunk_index, s.content,"
        " s.metadata::text AS metadata" + _UNKNOWN +
        " AND s.content_hash BETWEEN %(first)s AND %(last)s"
        " ORDER BY s.content_hash, s.doc_id, s.chunk_index"
    ).format(t=sql.Identifier(table))
    params = {"kb_id": kb_id, "version": version, "first": batch.first_hash, "last": batch.last_hash}
    rows = list(_stream(reader, query, params, "kbrefresh_embed"))
    if not rows:
        return NO_STATS
    unique = {r["content_hash"]: r["embed_text"] for r in rows}
    embed_s, load_s = _flush(writer, table, version, rows, unique, embedder, storage)
    return EmbedStats(len(unique), len(rows), embed_s, load_s)


def embed_missing(
    reader: Conn,
    writer: Conn,
    *,
    kb_id: int,
    version: int,
    table: str,
    embedder: Embedder,
    batch_size: int,
    max_chars: int = 400_000,
    total_texts: int = 0,
    on_progress: ProgressFn | None = None,
    storage: str = "vector",
) -> EmbedStats:
    """Plan the batches and embed them one after the other (no fan-out)."""
    stats = NO_STATS
    for batch in plan_batches(reader, kb_id=kb_id, version=version, table=table,
                              batch_size=batch_size, max_chars=max_chars):
        stats += embed_batch(reader, writer, kb_id=kb_id, version=version, table=table,
                             batch=batch, embedder=embedder, storage=storage)
        if on_progress:
            on_progress(stats.texts, total_texts)
    return stats


def _stream(
    reader: Conn, query: sql.Composed, params: dict[str, Any], name: str
) -> Iterator[dict[str, Any]]:
    with reader.transaction(), reader.cursor(name=name) as cur:
        # Sorting staged rows by hash in memory instead of spilling to disk.
        reader.execute("SET LOCAL work_mem = '256MB'")
        cur.itersize = 2048
        cur.execute(query, params)
        yield from cur


def _flush(
    writer: Conn, table: str, version: int, rows: list[dict[str, Any]], unique: dict[str, str],
    embedder: Embedder, storage: str = "vector",
) -> tuple[float, float]:
    started = time.perf_counter()
    vectors = embedder.embed(list(unique.values()))
    embedded = time.perf_counter()
    check_vectors(embedder, vectors, len(unique))
    fault_point("embed_requested")
    load_rows(writer, table, version, rows, dict(zip(unique, vectors, strict=True)),
              storage=storage)
    fault_point("embed_loaded")
    return embedded - started, time.perf_counter() - embedded


def check_vectors(embedder: Embedder, vectors: np.ndarray[Any, Any], count: int) -> None:
    """Raise ``EmbeddingError`` unless ``vectors`` holds ``count`` finite rows of its dims."""
    if vectors.shape != (count, embedder.dims) or not np.isfinite(vectors).all():
        raise EmbeddingError(
            f"embedder {embedder.provider}/{embedder.model} returned unusable vectors "
            f"(shape {vectors.shape!r} for {count} texts, or non-finite values)"
        )


def _jsonb(value: Any) -> Jsonb:
    # Metadata read as JSON text goes back verbatim: no parse and re-dump per row.
    return Jsonb(value, dumps=_identity) if isinstance(value, str) else Jsonb(value)


def _identity(text: str) -> str:
    return text


def _identity_vector(vector: Any) -> Any:
    return vector


def load_rows(
    writer: Conn,
    table: str,
    version: int,
    rows: Sequence[dict[str, Any]],
    vectors: dict[str, np.ndarray[Any, Any]],
    *,
    storage: str = "vector",
) -> None:
    """Write chunk rows with their vectors by binary COPY and commit.

    ``storage`` is the column's type: "vector" or "halfvec" (vectors sent as float16).
    """
    wrap: Callable[[Any], Any] = HalfVector if storage == "halfvec" else _identity_vector
    with writer.cursor() as cur, cur.copy(
        sql.SQL(
            "COPY {} (doc_id, chunk_index, content, content_hash, metadata, embedding, "
            "valid_from) FROM STDIN WITH (FORMAT BINARY)"
        ).format(sql.Identifier(table))
    ) as copy:
        copy.set_types(["text", "int4", "text", "text", "jsonb", storage, "int4"])
        for r in rows:
            copy.write_row(
                (r["doc_id"], r["chunk_index"], r["content"], r["content_hash"],
                 _jsonb(r["metadata"]), wrap(vectors[r["content_hash"]]), version)
            )
    writer.commit()
