"""Nearest-neighbour search inside one version of a chunk table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from kbrefresh.store import Conn, in_version


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
    "SELECT set_config('hnsw.iterative_scan', 'strict_order', {local}),"
    " set_config('hnsw.ef_search', %s, {local}), set_config('enable_seqscan', 'off', {local})"
)
SEARCH_SESSION_SQL = _SETTINGS_SQL.format(local="false").replace("%s", f"'{SEARCH_EF_SEARCH}'")


def search_version(
    conn: Conn,
    table: str,
    version: int,
    vector: npt.NDArray[np.float32],
    k: int = 5,
    *,
    session_configured: bool = False,
) -> list[Hit]:
    """Return the ``k`` chunks of ``version`` most similar (cosine) to ``vector``.

    pgvector 0.8 iterative scans keep a filtered HNSW search from returning fewer
    than ``k`` rows when the version filter discards neighbours of other versions.
    """
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k!r}")
    query = sql.SQL(
        "SELECT c.id, c.doc_id, c.chunk_index, c.content, c.metadata,"
        " 1 - (c.embedding <=> %(q)s) AS similarity FROM {} c WHERE "
    ).format(sql.Identifier(table)) + in_version() + sql.SQL(
        " ORDER BY c.embedding <=> %(q)s LIMIT %(k)s"
    )
    params = {"q": np.asarray(vector, dtype=np.float32), "k": k, "version": version}
    if session_configured and 2 * k <= SEARCH_EF_SEARCH:
        # The caller ran SEARCH_SESSION_SQL on this connection: one round trip per search.
        return _hits(conn.execute(query, params).fetchall(), version)
    with conn.transaction():
        conn.execute(_SETTINGS_SQL.format(local="true"), (str(max(SEARCH_EF_SEARCH, 2 * k)),))
        rows = conn.execute(query, params).fetchall()
    return _hits(rows, version)


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
