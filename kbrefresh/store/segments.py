"""Segments of a chunk table: a main HNSW index, a small delta index, an exact tail.

Inserting a row into an existing HNSW index costs about 8–13 ms here, against about
1.3 ms per row for building the index after a bulk load. So no row is ever inserted
into an HNSW index one by one: every index is *partial* over a range of
``valid_from`` and built in bulk, and rows a build adds land outside all of them.

- main: ``valid_from <= main_upto`` (HNSW ``{table}_hnsw_{W}``);
- delta: ``main_upto < valid_from <= delta_upto`` (HNSW ``{table}_dhnsw_{W}_{D}``),
  only when the rows past the main index exceed ``delta_exact_rows``;
- tail: the rest (``valid_from > max(W, D)``), scanned exactly through the small
  b-tree ``{table}_tail_{X}``.

``serving.search`` searches every segment a version has rows in, in one statement.
A finished build places its rows (:func:`place_new_rows`): a small tail stays exact;
a larger one gets a delta index built over the rows past the main index (cost in
proportion to the change); when those outnumber the main index's rows, the main
index is rebuilt (what a full build costs, never more). :func:`compact` (after
publish, off the critical path) merges the delta into a new main index once it
passes ``compact_share`` of the main segment.

Searches stay exact about versions whatever bounds a reader cached: the branches
cover every row for any bounds, and an index for wider bounds still answers a
narrower predicate, so stale bounds only cost a slower plan.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from psycopg import sql

from kbrefresh._faults import fault_point
from kbrefresh.store.rows import Conn
from kbrefresh.store.tables import (
    HNSW_MAX_DIMS_BY_STORAGE,
    FingerprintTable,
    revert_version_rows,
)

logger = logging.getLogger(__name__)

_MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class Placement:
    """What a build (or a compaction) did with the rows past the main index.

    ``action``: "built" (first main index), "rebuilt" (main index rebuilt), "delta" (a
    delta index built over them), "exact" (left in the exact tail), "compacted",
    "failed" (a compaction that raised; the segments stay as they were).
    """

    action: str
    main_upto: int | None
    delta_upto: int | None
    delta_rows: int
    index_seconds: float
    workers: int

    def as_counts(self) -> dict[str, object]:
        return {"index_action": self.action, "main_upto": self.main_upto,
                "delta_upto": self.delta_upto, "delta_rows": self.delta_rows,
                "index_seconds": round(self.index_seconds, 3), "index_workers": self.workers}


def segment_indexes(conn: Conn, table: str) -> list[str]:
    """Return the HNSW indexes and the tail b-tree of ``table``."""
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = %s AND (indexdef ILIKE '%%USING hnsw%%'"
        " OR indexname LIKE %s) ORDER BY indexname",
        (table, (f"{table}_tail_").replace("_", "\\_") + "%"),
    ).fetchall()
    return [r["indexname"] for r in rows]


def hnsw_indexes(conn: Conn, table: str) -> list[str]:
    """Return the names of the HNSW indexes on ``table``."""
    return [i for i in segment_indexes(conn, table) if not i.startswith(f"{table}_tail_")]


def has_vector_index(conn: Conn, table: str) -> bool:
    return bool(hnsw_indexes(conn, table))


def build_workers(conn: Conn, requested: int | None) -> int:
    """Return the parallel workers for an index build: ``requested``, else sized to the server.

    Auto: the server's ``max_parallel_workers`` (managed services size it to the vCPUs),
    at most 8; a server on this machine (Unix socket or loopback) at most this machine's
    cores minus the leader's (PostgreSQL's default of 8 would oversubscribe 2 cores).
    """
    if requested is not None:
        return requested
    row = conn.execute(
        "SELECT least(current_setting('max_parallel_workers')::int,"
        " current_setting('max_worker_processes')::int) AS n,"
        " coalesce(host(inet_server_addr()) IN ('127.0.0.1', '::1'), true) AS local"
    ).fetchone()
    assert row is not None
    workers = min(int(row["n"]), _MAX_AUTO_WORKERS)
    if row["local"]:
        workers = min(workers, max((os.cpu_count() or 1) - 1, 0))
    return workers


def _alive(conn: Conn, fp: FingerprintTable, version: int, lower: int, upper: int) -> int:
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n FROM {} c WHERE c.valid_from > %(lower)s AND c.valid_from <= %(upper)s"
            " AND c.valid_from <= %(version)s AND (c.valid_to IS NULL OR c.valid_to > %(version)s)"
        ).format(sql.Identifier(fp.table)),
        {"lower": lower, "upper": upper, "version": version},
    ).fetchone()
    return int(row["n"]) if row else 0


def delta_rows(conn: Conn, fp: FingerprintTable, version: int) -> int:
    """Count the rows of ``version`` outside the main index (all of them when it has none)."""
    return _alive(conn, fp, version, fp.main_upto or 0, version)


def _set_indexes(conn: Conn, fp: FingerprintTable, wanted: list[tuple[str, sql.Composable]],
                 main_upto: int | None, delta_upto: int | None, maintenance_work_mem: str,
                 workers: int, keep: tuple[str, ...] = ()) -> float:
    """Create the ``wanted`` indexes, record the bounds, drop every other segment index.

    ``conn`` must be in autocommit: old indexes are dropped concurrently, so readers of
    the live version never wait. A plain CREATE INDEX takes a SHARE lock (readers go
    on); the KB's refresh lock, which callers hold, keeps every other writer out.
    """
    started = time.perf_counter()
    names = {name for name, _ in wanted} | set(keep)
    old = [i for i in segment_indexes(conn, fp.table) if i not in names]
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false),"
                 " set_config('max_parallel_maintenance_workers', %s, false)",
                 (maintenance_work_mem, str(workers)))
    for name, definition in wanted:
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ").format(
            sql.Identifier(name), sql.Identifier(fp.table)) + definition)
    fault_point("index_created")
    conn.execute("UPDATE kb_fingerprints SET main_upto = %s, delta_upto = %s WHERE id = %s",
                 (main_upto, delta_upto, fp.id))
    for index in old:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index)))
    conn.execute("RESET max_parallel_maintenance_workers")
    return time.perf_counter() - started


def _hnsw(fp: FingerprintTable, where: sql.Composable) -> sql.Composable:
    return sql.SQL("USING hnsw (embedding {}) WHERE ").format(
        sql.Identifier(f"{fp.storage}_cosine_ops")) + where


def _tail(fp: FingerprintTable, after: int) -> tuple[str, sql.Composable]:
    # The tail branch finds its rows through this small b-tree; no other branch's
    # predicate implies it, so the planner (which does not cost detoasting vectors)
    # never trades an HNSW scan for an exact one there.
    return (f"{fp.table}_tail_{after}",
            sql.SQL("(valid_from) WHERE valid_from > {}").format(sql.Literal(after)))


def build_main_index(
    conn: Conn, fp: FingerprintTable, upto: int, *, maintenance_work_mem: str, workers: int
) -> float:
    """Index every row with ``valid_from <= upto`` in one main index; drop the others."""
    main = (f"{fp.table}_hnsw_{upto}", _hnsw(fp, sql.SQL("valid_from <= {}").format(sql.Literal(upto))))
    return _set_indexes(conn, fp, [main, _tail(fp, upto)], upto, None, maintenance_work_mem, workers)


def build_delta_index(
    conn: Conn, fp: FingerprintTable, upto: int, *, maintenance_work_mem: str, workers: int
) -> float:
    """Index the rows between the main index and ``upto`` in a small delta index."""
    assert fp.main_upto is not None
    w = fp.main_upto
    delta = (f"{fp.table}_dhnsw_{w}_{upto}", _hnsw(fp, sql.SQL(
        "valid_from > {} AND valid_from <= {}").format(sql.Literal(w), sql.Literal(upto))))
    return _set_indexes(conn, fp, [delta, _tail(fp, upto)], w, upto, maintenance_work_mem,
                        workers, keep=(f"{fp.table}_hnsw_{w}",))


def purge_reused_empty_rows(conn: Conn, fp: FingerprintTable, version: int) -> int:
    """Delete rows in no version (an undone ``[v, v)``) whose vector ``version`` has copied.

    They are kept for reuse by hash; once ``version`` holds the same hash they only
    weigh down the main index about to be built over every ``valid_from <= version``.
    """
    return conn.execute(
        sql.SQL("DELETE FROM {t} e WHERE e.valid_to = e.valid_from AND e.valid_from < %(v)s"
                " AND EXISTS (SELECT 1 FROM {t} n WHERE n.content_hash = e.content_hash"
                " AND n.valid_from = %(v)s)").format(t=sql.Identifier(fp.table)),
        {"v": version},
    ).rowcount


def place_new_rows(
    conn: Conn,
    fp: FingerprintTable,
    version: int,
    *,
    delta_exact_rows: int,
    maintenance_work_mem: str,
    workers: int,
) -> Placement:
    """Decide where a finished build's rows live; see the module docstring."""
    if fp.dims > HNSW_MAX_DIMS_BY_STORAGE[fp.storage]:
        logger.warning("%d dimensions exceed HNSW's %d for %s columns: queries use exact scans",
                       fp.dims, HNSW_MAX_DIMS_BY_STORAGE[fp.storage], fp.storage)
        return Placement("exact", None, None, delta_rows(conn, fp, version), 0.0, 0)
    outside = delta_rows(conn, fp, version)
    if fp.main_upto is None or outside > _alive(conn, fp, version, 0, fp.main_upto):
        action = "built" if fp.main_upto is None else "rebuilt"
        purged = purge_reused_empty_rows(conn, fp, version)
        if purged:
            logger.info("deleted %d rows of %s in no version whose vectors version %d reused,"
                        " before indexing", purged, fp.table, version)
        seconds = build_main_index(conn, fp, version, maintenance_work_mem=maintenance_work_mem,
                                   workers=workers)
        logger.info("%s the main HNSW index of %s up to version %d (%d rows were outside it)"
                    " in %.1f s", action, fp.table, version, outside, seconds)
        return Placement(action, version, None, outside, seconds, workers)
    if outside <= delta_exact_rows:
        return Placement("exact", fp.main_upto, fp.delta_upto, outside, 0.0, 0)
    seconds = build_delta_index(conn, fp, version, maintenance_work_mem=maintenance_work_mem,
                                workers=workers)
    logger.info("built the delta HNSW index of %s over %d rows in %.1f s", fp.table, outside, seconds)
    return Placement("delta", fp.main_upto, version, outside, seconds, workers)


def compact(
    conn: Conn,
    fp: FingerprintTable,
    version: int,
    *,
    min_share: float,
    maintenance_work_mem: str,
    workers: int,
) -> Placement:
    """Merge every segment of ``version`` (the live one) into one main index.

    Does nothing unless the rows past the main index exceed ``min_share`` of those in
    it (0: any row). Call under the KB's refresh lock, after publish.
    """
    outside = delta_rows(conn, fp, version)
    if fp.main_upto is None or fp.main_upto >= version or outside == 0 or (
            outside <= min_share * _alive(conn, fp, version, 0, fp.main_upto)):
        return Placement("exact" if fp.delta_upto is None else "delta", fp.main_upto,
                         fp.delta_upto, outside, 0.0, 0)
    seconds = build_main_index(conn, fp, version, maintenance_work_mem=maintenance_work_mem,
                               workers=workers)
    logger.info("compacted %s: %d rows merged into the main HNSW index in %.1f s",
                fp.table, outside, seconds)
    return Placement("compacted", version, None, outside, seconds, workers)


# Undoing more rows than this one by one through an HNSW index costs more than
# rebuilding the index once (8–13 ms per row against ~1.3 ms per row in bulk).
UNDO_DROP_INDEX_ROWS = 2000


@dataclass(frozen=True)
class Undo:
    """What undoing a version did: rows emptied and reopened, HNSW indexes dropped first."""

    version: int
    emptied: int
    reopened: int
    dropped: tuple[str, ...]


def undo_version(
    conn: Conn, fp: FingerprintTable, version: int, *, drop_above: int | None = None
) -> Undo:
    """Undo what ``version`` did to ``fp``'s rows (:func:`revert_version_rows`), set-based.

    When more than ``drop_above`` (default :data:`UNDO_DROP_INDEX_ROWS`) of the rows
    to change lie under an HNSW index, every HNSW index of the table is dropped first
    (in this transaction: readers of the table wait until it commits) and the bounds are
    cleared, so no row is re-inserted into an index one by one; the build's index step
    then builds one main index. Until it does, searches of any version in this table
    (live's too, when it shares it) are exact scans: correct, slower.
    """
    limit = UNDO_DROP_INDEX_ROWS if drop_above is None else drop_above
    indexes = hnsw_indexes(conn, fp.table)
    dropped: tuple[str, ...] = ()
    if indexes:
        covered = max(fp.main_upto or 0, fp.delta_upto or 0)
        row = conn.execute(
            sql.SQL("SELECT count(*) AS n FROM {} WHERE valid_from <= %(covered)s AND"
                    " ((valid_from = %(v)s AND valid_to IS NULL) OR (valid_to = %(v)s AND"
                    " valid_from < %(v)s))").format(sql.Identifier(fp.table)),
            {"covered": covered, "v": version},
        ).fetchone()
        touched = int(row["n"]) if row else 0
        if touched > limit:
            for index in indexes:
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
            conn.execute("UPDATE kb_fingerprints SET main_upto = NULL, delta_upto = NULL"
                         " WHERE id = %s", (fp.id,))
            dropped = tuple(indexes)
            logger.warning("index dropped for undo: %d rows of %s under HNSW indexes %s to undo"
                           " for version %d (more than %d); searches of this table are exact"
                           " until the next build's index step", touched, fp.table,
                           ", ".join(dropped), version, limit)
    emptied, reopened = revert_version_rows(conn, fp.table, version)
    return Undo(version, emptied, reopened, dropped)
