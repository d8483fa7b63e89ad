"""Two segments per chunk table: a main segment in an HNSW index and a small delta.

Inserting a row into an existing HNSW index costs about 8–13 ms here, against about
1.3 ms per row for building the index after a bulk load. So the index is *partial*:
``WHERE valid_from <= main_upto``. Rows a later build adds (``valid_from >
main_upto``) never enter it; they form the delta segment, which searches scan
exactly (``serving.search``) in the same statement as the index scan. The delta is
merged by building a new partial index with a higher ``main_upto`` and dropping the
old one: at finalize when one build adds more than ``delta_max_rows`` (a rebuild, so
a large change costs what a full build costs and never more), or after publish by
:func:`compact` (off the critical path: the new version already serves).

Searches stay exact about versions whatever ``main_upto`` a reader cached: the two
branches ``valid_from <= W`` and ``valid_from > W`` cover every row for any W, and
an index built for a higher W still answers a query with a lower W (its predicate is
implied), so a stale W only costs a larger exact branch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from psycopg import sql

from kbrefresh.store.rows import Conn
from kbrefresh.store.tables import HNSW_MAX_DIMS_BY_STORAGE, FingerprintTable

logger = logging.getLogger(__name__)

# The leader process builds too, so one core is left to it.
_MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class Placement:
    """What finalize did with a build's new rows.

    ``action``: "built" (first index), "rebuilt" (delta too large, merged now), "delta"
    (new rows stay in the delta segment) or "exact" (too many dimensions for HNSW).
    """

    action: str
    main_upto: int | None
    delta_rows: int
    index_seconds: float
    workers: int

    def as_counts(self) -> dict[str, object]:
        return {"index_action": self.action, "main_upto": self.main_upto,
                "delta_rows": self.delta_rows, "index_seconds": round(self.index_seconds, 3),
                "index_workers": self.workers}


def hnsw_indexes(conn: Conn, table: str) -> list[str]:
    """Return the names of the HNSW indexes on ``table``."""
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef ILIKE '%%USING hnsw%%'"
        " ORDER BY indexname",
        (table,),
    ).fetchall()
    return [r["indexname"] for r in rows]


def segment_indexes(conn: Conn, table: str) -> list[str]:
    """Return the HNSW indexes and the delta b-trees on ``table``."""
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND (indexdef ILIKE '%%USING hnsw%%'"
        " OR indexname LIKE %s) ORDER BY indexname",
        (table, (f"{table}_delta_").replace("_", "\\_") + "%"),
    ).fetchall()
    return [r["indexname"] for r in rows]


def has_vector_index(conn: Conn, table: str) -> bool:
    return bool(hnsw_indexes(conn, table))


def build_workers(conn: Conn, requested: int | None, *, local_server: bool) -> int:
    """Return the parallel workers for an index build: ``requested``, else sized to the server.

    Auto: the server's ``max_parallel_workers`` (managed services size it to the vCPUs),
    at most 8, and on a server of this machine at most its cores minus the leader's.
    """
    if requested is not None:
        return requested
    row = conn.execute(
        "SELECT least(current_setting('max_parallel_workers')::int,"
        " current_setting('max_worker_processes')::int) AS n"
    ).fetchone()
    workers = min(int(row["n"]) if row else 0, _MAX_AUTO_WORKERS)
    if local_server:
        workers = min(workers, max((os.cpu_count() or 1) - 1, 0))
    return workers


def delta_rows(conn: Conn, fp: FingerprintTable, version: int) -> int:
    """Count the rows of ``version`` outside the HNSW index (all of them when it has none)."""
    upto = fp.main_upto if fp.main_upto is not None else 0
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n FROM {} c WHERE c.valid_from > %(upto)s"
            " AND c.valid_from <= %(version)s AND (c.valid_to IS NULL OR c.valid_to > %(version)s)"
        ).format(sql.Identifier(fp.table)),
        {"upto": upto, "version": version},
    ).fetchone()
    return int(row["n"]) if row else 0


def build_main_index(
    conn: Conn, fp: FingerprintTable, upto: int, *, maintenance_work_mem: str, workers: int
) -> float:
    """Index every row with ``valid_from <= upto``, then drop the table's older HNSW indexes.

    ``conn`` must be in autocommit (old indexes are dropped concurrently, so readers of
    the live version never wait). Call under the KB's refresh lock. Returns seconds.
    """
    started = time.perf_counter()
    name, delta = f"{fp.table}_hnsw_{upto}", f"{fp.table}_delta_{upto}"
    old = [i for i in segment_indexes(conn, fp.table) if i not in (name, delta)]
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false),"
                 " set_config('max_parallel_maintenance_workers', %s, false)",
                 (maintenance_work_mem, str(workers)))
    # A plain CREATE INDEX takes a SHARE lock: readers go on, and the refresh lock
    # keeps every other writer of this table out.
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})"
                " WHERE valid_from <= {}").format(
            sql.Identifier(name), sql.Identifier(fp.table),
            sql.SQL(f"{fp.storage}_cosine_ops"), sql.Literal(upto)),
    )
    # The delta branch finds its rows through this (empty when built) partial b-tree; the
    # main branch cannot use it (its predicate is not implied), so the planner, which does
    # not cost detoasting vectors, never trades the HNSW scan for an exact one there.
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (valid_from) WHERE valid_from > {}").format(
            sql.Identifier(delta), sql.Identifier(fp.table), sql.Literal(upto)),
    )
    conn.execute("UPDATE kb_fingerprints SET main_upto = %s WHERE id = %s", (upto, fp.id))
    for index in old:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index)))
    conn.execute("RESET max_parallel_maintenance_workers")
    return time.perf_counter() - started


def place_new_rows(
    conn: Conn,
    fp: FingerprintTable,
    version: int,
    *,
    delta_max_rows: int,
    maintenance_work_mem: str,
    workers: int,
) -> Placement:
    """Decide where a finished build's rows live: keep a small delta, or (re)build the index.

    First build (no partial index yet, or only a pre-segment full index): build it.
    More than ``delta_max_rows`` rows of ``version`` outside the index: rebuild.
    """
    if fp.dims > HNSW_MAX_DIMS_BY_STORAGE[fp.storage]:
        logger.warning("%d dimensions exceed HNSW's %d for %s columns: queries use exact scans",
                       fp.dims, HNSW_MAX_DIMS_BY_STORAGE[fp.storage], fp.storage)
        return Placement("exact", None, delta_rows(conn, fp, version), 0.0, 0)
    delta = delta_rows(conn, fp, version)
    if fp.main_upto is not None and delta <= delta_max_rows:
        return Placement("delta", fp.main_upto, delta, 0.0, 0)
    action = "built" if fp.main_upto is None else "rebuilt"
    seconds = build_main_index(conn, fp, version, maintenance_work_mem=maintenance_work_mem,
                               workers=workers)
    logger.info("%s the HNSW index of %s up to version %d (%d rows were outside it) in %.1f s",
                action, fp.table, version, delta, seconds)
    return Placement(action, version, delta, seconds, workers)


def compact(
    conn: Conn,
    fp: FingerprintTable,
    version: int,
    *,
    min_rows: int,
    maintenance_work_mem: str,
    workers: int,
) -> Placement:
    """Merge the delta segment of ``version`` (the live one) into the HNSW index.

    Does nothing when the delta holds at most ``min_rows`` rows or the index already
    covers ``version``. Call under the KB's refresh lock, after publish.
    """
    delta = delta_rows(conn, fp, version)
    if fp.main_upto is None or fp.main_upto >= version or delta <= min_rows:
        return Placement("delta" if fp.main_upto is not None else "exact", fp.main_upto, delta,
                         0.0, 0)
    seconds = build_main_index(conn, fp, version, maintenance_work_mem=maintenance_work_mem,
                               workers=workers)
    logger.info("compacted %s: %d delta rows merged into the HNSW index in %.1f s",
                fp.table, delta, seconds)
    return Placement("compacted", version, delta, seconds, workers)
