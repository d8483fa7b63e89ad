"""Search one version on many queries at once: what ``search_version`` returns for
each, with two statements instead of one per query.

For queries whose timings nothing compares (``gate.runs.run_alone``). The indexed
segments (main and delta HNSW indexes) are searched for every query in one statement,
a ``LATERAL`` join over the query vectors: each query's index scans are the ones its
own search runs, with the same settings. The exact tail, which a single search reads
and detoasts whole for every query, is read once (at most ``MAX_TAIL_ROWS`` rows;
a bigger tail stays in the statement) and compared in numpy. Each query's hits are
both parts merged by (distance, id), as the search statement orders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from psycopg import sql

from kbrefresh import store
from kbrefresh.serving.search import search_settings, segments_sql, tail_start
from kbrefresh.store import in_version

# A tail this big is compared in memory (6 KB a row at 1536 dimensions); the tail
# stays at most ``delta_exact_rows`` rows (1,000 by default) before a delta index.
MAX_TAIL_ROWS = 5000


@dataclass(frozen=True)
class Tail:
    """The exact tail's rows of one version: ids, doc ids, vectors (float64)."""

    ids: npt.NDArray[np.int64]
    doc_ids: list[str]
    vectors: npt.NDArray[np.float64]
    norms: npt.NDArray[np.float64]


def read_tail(conn: store.Conn, table: store.FingerprintTable, version: int) -> Tail | None:
    """Return ``version``'s tail rows, or None when it has no tail branch or the tail is
    over ``MAX_TAIL_ROWS`` rows (then it is searched in the statement)."""
    start = tail_start(table, version)
    if start is None:
        return None
    where = sql.SQL(" FROM {} c WHERE c.valid_from > {} AND ").format(
        sql.Identifier(table.table), sql.Literal(start)) + in_version()
    params = {"version": version, "limit": MAX_TAIL_ROWS + 1}
    row = conn.execute(sql.SQL("SELECT count(*) AS n FROM (SELECT 1") + where
                       + sql.SQL(" LIMIT %(limit)s) x"), params).fetchone()
    if row is None or int(row["n"]) > MAX_TAIL_ROWS:
        return None
    with conn.cursor(binary=True) as cur:  # vectors as bytes, not text to parse
        rows = cur.execute(sql.SQL("SELECT c.id, c.doc_id, c.embedding::vector AS e") + where
                           + sql.SQL(" ORDER BY c.id"), params).fetchall()
    # Cast to vector and read in binary, each comes back as pgvector's ``Vector``.
    vectors = (np.stack([r["e"].to_numpy() for r in rows]).astype(np.float64) if rows
               else np.zeros((0, table.dims)))
    return Tail(np.asarray([r["id"] for r in rows], dtype=np.int64), [r["doc_id"] for r in rows],
                vectors, np.linalg.norm(vectors, axis=1))


def search_many(
    conn: store.Conn,
    table: store.FingerprintTable,
    version: int,
    vectors: npt.NDArray[np.float32],
    k: int,
    tail: Tail | None,
) -> list[list[tuple[int, str, float]]]:
    """Return each query's top ``k`` hits of ``version`` as (chunk id, doc id, similarity).

    ``tail``: :func:`read_tail`'s rows (None: the tail, if any, is searched in the
    statement).
    """
    if not len(vectors):
        return []
    union = segments_sql(table, version, sql.SQL("q.v"), tail=tail is None)
    statement = sql.SQL(
        "SELECT q.i, x.id, x.doc_id, x.distance FROM unnest(%(i)s::int[], %(qs)s::vector[])"
        " AS q(i, v) CROSS JOIN LATERAL (SELECT s.id, s.doc_id, s.distance FROM ({}) s"
        " ORDER BY s.distance, s.id LIMIT %(k)s) x ORDER BY q.i, x.distance, x.id").format(union)
    queries = [np.asarray(v, dtype=np.float32) for v in vectors]
    with conn.transaction():
        search_settings(conn, 2 * k)
        rows = conn.execute(statement, {"i": list(range(len(queries))), "qs": queries, "k": k,
                                        "version": version}).fetchall()
    hits: list[list[tuple[float, int, str]]] = [[] for _ in queries]
    for r in rows:
        hits[r["i"]].append((float(r["distance"]), int(r["id"]), r["doc_id"]))
    if tail is not None and len(tail.ids):
        for i, q in enumerate(queries):
            hits[i] += _tail_hits(tail, _as_searched(q, table.storage), k)
    out = []
    for found in hits:
        top = sorted(found)[:k]
        out.append([(chunk, doc, 1.0 - distance) for distance, chunk, doc in top])
    return out


def _tail_hits(tail: Tail, query: npt.NDArray[np.float64], k: int
               ) -> list[tuple[float, int, str]]:
    """The tail's top ``k`` by pgvector's cosine distance (NaN for a zero vector, which
    sorts last there and is left out here)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = 1.0 - (tail.vectors @ query) / (tail.norms * np.linalg.norm(query))
    finite = np.flatnonzero(np.isfinite(distance))
    order = finite[np.lexsort((tail.ids[finite], distance[finite]))][:k]
    return [(float(distance[j]), int(tail.ids[j]), tail.doc_ids[j]) for j in order]


def _as_searched(vector: npt.NDArray[np.float32], storage: str) -> npt.NDArray[np.float64]:
    """The query as the statement compares it: cast to the column's type first."""
    if storage == "halfvec":
        vector = vector.astype(np.float16).astype(np.float32)
    return vector.astype(np.float64)


def duplicated(hits: Sequence[tuple[int, str, float]]) -> bool:
    return len({h[0] for h in hits}) != len(hits)
