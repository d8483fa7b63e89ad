"""Nearest-neighbour search inside one version of a chunk table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from kbrefresh.store import Conn, FingerprintTable, in_version


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and the version that served it."""

    chunk_id: int
    doc_id: str
    chunk_index: int
    content: str
    similarity: float
    version: int
    metadata: Mapping[str, Any] = field(default_factory=dict)


# Session settings for searching; SEARCH_EF_SEARCH covers k <= SEARCH_EF_SEARCH // 2.
SEARCH_EF_SEARCH = 40
# The planner does not cost detoasting vectors, so on tables of a few thousand rows it
# picks a seq scan that reads every vector (measured 37 ms vs 3 ms with the HNSW index
# at 5k x 1536-d); with enable_seqscan off a table without an index still scans.
_SETTINGS_SQL = (
    "SELECT set_config('hnsw.iterative_scan', 'strict_order', %(local)s),"
    " set_config('hnsw.ef_search', %(ef)s, %(local)s),"
    " set_config('enable_seqscan', 'off', %(local)s)"
)


def search_version(
    conn: Conn,
    table: str | FingerprintTable,
    version: int,
    vector: npt.NDArray[np.float32],
    k: int = 5,
    *,
    session_configured: bool = False,
    session_ef_search: int = SEARCH_EF_SEARCH,
) -> list[Hit]:
    """Return the ``k`` chunks of ``version`` most similar (cosine) to ``vector``.

    One statement, one round trip: the top ``k`` of each segment the version has rows
    in (main HNSW index, delta HNSW index, exact tail; see ``store.segments``), merged
    by distance. pgvector 0.8 iterative scans keep the
    filtered index scan from returning fewer than ``k`` rows when the version filter
    discards neighbours of other versions. A bare table name searches the whole table
    in one scan (no segments known).
    """
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k!r}")
    params = {"q": np.asarray(vector, dtype=np.float32), "k": k, "version": version}
    query = search_sql(table, version)
    if session_configured and 2 * k <= session_ef_search:
        # The caller ran search_settings on this connection: one round trip per search.
        return _hits(conn.execute(query, params).fetchall(), version)
    with conn.transaction():
        search_settings(conn, 2 * k)
        rows = conn.execute(query, params).fetchall()
    return _hits(rows, version)


def search_settings(conn: Conn, ef_search: int = SEARCH_EF_SEARCH, *, local: bool = True) -> None:
    """Set the search settings for this transaction (``local``) or the session
    (``ef_search``: at least twice the ``k`` searched), so the searches that follow need
    one round trip each."""
    conn.execute(_SETTINGS_SQL, {"ef": str(max(SEARCH_EF_SEARCH, ef_search)), "local": local})


def search_sql(table: str | FingerprintTable, version: int) -> sql.Composed:
    """Return the search statement for ``version`` (parameters ``q``, ``k``, ``version``).

    One branch per segment the version has rows in (``store.segments``): the main
    HNSW index, the delta HNSW index, the exact tail; each its own top ``k``.
    """
    union = segments_sql(table, version, sql.SQL("%(q)s"),
                         sql.SQL(", c.chunk_index, c.content, c.metadata"))
    return sql.SQL(
        "SELECT s.id, s.doc_id, s.chunk_index, s.content, s.metadata, 1 - s.distance AS similarity"
        " FROM ({}) s ORDER BY s.distance, s.id LIMIT %(k)s"
    ).format(union)


def tail_start(table: str | FingerprintTable, version: int) -> int | None:
    """Return the bound past which ``version``'s rows lie in the exact tail (None: no tail
    branch; a bare table or one without a main index is one branch)."""
    if isinstance(table, str) or table.main_upto is None:
        return None
    tail_from = max(table.main_upto, table.delta_upto or 0)
    return tail_from if version > tail_from else None


def segments_sql(
    table: str | FingerprintTable,
    version: int,
    vector: sql.Composable,
    columns: sql.Composable | None = None,
    *,
    tail: bool = True,
) -> sql.Composed:
    """Return the union of the segment branches of ``version`` (each its top ``%(k)s``
    rows: ``c.id``, ``c.doc_id``, then ``columns`` (each after a comma), ``distance``
    to ``vector``); ``tail``: with the exact tail's branch (``tail_start``)."""
    if isinstance(table, str):
        name, storage, main, delta = table, "vector", None, None
    else:
        name, storage, main, delta = table.table, table.storage, table.main_upto, table.delta_upto
    distance = sql.SQL("c.embedding <=> {}::{}").format(vector, sql.SQL(storage))
    tail_from = tail_start(table, version) if tail else None

    def branch(segment: sql.Composable | None) -> sql.Composed:
        where = in_version() if segment is None else segment + sql.SQL(" AND ") + in_version()
        return sql.SQL(
            "SELECT c.id, c.doc_id{c}, {d} AS distance"
            " FROM {t} c WHERE {w} ORDER BY {d} LIMIT %(k)s"
        ).format(c=columns or sql.SQL(""), d=distance, t=sql.Identifier(name), w=where)

    # Bounds are literals, not parameters: the planner must see them to use partial indexes.
    if main is None:
        parts = [branch(None)]
    else:
        parts = [branch(sql.SQL("c.valid_from <= {}").format(sql.Literal(main)))]
        if delta is not None and delta > main and version > main:
            parts.append(branch(sql.SQL("c.valid_from > {} AND c.valid_from <= {}").format(
                sql.Literal(main), sql.Literal(delta))))
        if tail_from is not None:  # versions the indexes cover have no tail rows
            parts.append(branch(sql.SQL("c.valid_from > {}").format(sql.Literal(tail_from))))
    return sql.SQL(" UNION ALL ").join(sql.SQL("({})").format(p) for p in parts)


def _hits(rows: list[dict[str, Any]], version: int) -> list[Hit]:
    return [
        Hit(
            chunk_id=int(r["id"]),
            doc_id=r["doc_id"],
            chunk_index=int(r["chunk_index"]),
            content=r["content"],
            similarity=float(r["similarity"]),
            version=version,
            metadata=r["metadata"],
        )
        for r in rows
    ]
