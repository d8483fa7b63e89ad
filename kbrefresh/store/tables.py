"""Fingerprint chunk tables and row-versioned chunk storage.

One chunk table per (KB, embedding fingerprint) holds every version: a row belongs
to version ``v`` when ``valid_from <= v`` and ``valid_to`` is NULL or ``> v``. A
refresh inserts only new or changed chunks and closes the range of replaced ones,
so its cost follows the change, not the KB. New rows stay out of the HNSW index (a
partial index over the main segment, see ``store.segments``). Swap and rollback move
a number in ``kb_routing``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from kbrefresh.errors import VersionError
from kbrefresh.models import Fingerprint
from kbrefresh.store.rows import Conn

logger = logging.getLogger(__name__)

# pgvector's HNSW index takes `vector` columns of at most 2,000 dimensions and
# `halfvec` columns of at most 4,000.
HNSW_MAX_DIMS = 2000
HNSW_MAX_DIMS_BY_STORAGE = {"vector": HNSW_MAX_DIMS, "halfvec": 4000}
STORAGES = tuple(HNSW_MAX_DIMS_BY_STORAGE)


@dataclass(frozen=True)
class FingerprintTable:
    id: int
    key: str
    dims: int
    table: str
    spec: dict[str, Any]
    storage: str = "vector"
    # Rows with valid_from <= main_upto are in the main HNSW index (None: no index yet);
    # rows up to delta_upto in the delta HNSW index (None: none). See store.segments.
    main_upto: int | None = None
    delta_upto: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> FingerprintTable:
        return cls(
            int(row["id"]), row["fp_key"], int(row["dims"]), row["table_name"], row["spec"],
            row["storage"], row["main_upto"], row["delta_upto"],
        )


_FP_COLUMNS = "id, fp_key, dims, table_name, spec, storage, main_upto, delta_upto"


def ensure_fingerprint(conn: Conn, kb_id: int, fp: Fingerprint) -> FingerprintTable:
    """Return the chunk table for ``fp`` in this KB, creating it when new."""
    if fp.storage not in STORAGES:
        raise VersionError(f"unknown vector storage {fp.storage!r}; expected one of {STORAGES!r}")
    row = conn.execute(
        "INSERT INTO kb_fingerprints (kb_id, fp_key, spec, dims, table_name, storage) "
        "VALUES (%s, %s, %s, %s, 'kbrefresh_chunks_' || %s || '_' || %s, %s) "
        "ON CONFLICT (kb_id, fp_key) DO UPDATE SET fp_key = EXCLUDED.fp_key "
        "RETURNING " + _FP_COLUMNS,
        (kb_id, fp.key, json.dumps(fp.as_dict()), fp.dims, kb_id, fp.key, fp.storage),
    ).fetchone()
    assert row is not None
    table = FingerprintTable.from_row(row)
    if table_exists(conn, table.table):
        # No DDL on an existing table: ALTER TABLE takes an exclusive lock, which queued
        # every reader behind it and waited out autovacuum (1 s) on each refresh.
        return table
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " id bigserial PRIMARY KEY,"
            " doc_id text NOT NULL,"
            " chunk_index int NOT NULL,"
            " content text NOT NULL,"
            " content_hash text NOT NULL,"
            " metadata jsonb NOT NULL DEFAULT '{{}}',"
            " embedding {}({}) NOT NULL,"
            " valid_from int NOT NULL,"
            " valid_to int,"
            " CHECK (valid_to IS NULL OR valid_to >= valid_from))"
            # Free room on each page keeps closing a row (valid_to) a HOT update: no new
            # index entries. A full page made each closed row re-enter the HNSW index
            # (842 ms to close 100 rows of a 50k table; 8 ms as HOT updates).
            " WITH (fillfactor = 80)"
        ).format(sql.Identifier(table.table), sql.SQL(table.storage), sql.Literal(table.dims))
    )
    # Vectors do not compress: skip pglz on write and on every detoast at query time.
    conn.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE EXTERNAL").format(
            sql.Identifier(table.table)
        )
    )
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN"
            " GRANT SELECT ON {} TO kbrefresh_reader; END IF; END $$"
        ).format(sql.Identifier(table.table))
    )
    for suffix, cols in (("hash", ["content_hash"]), ("doc", ["doc_id", "chunk_index"])):
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(f"{table.table}_{suffix}"),
                sql.Identifier(table.table),
                sql.SQL(", ").join(map(sql.Identifier, cols)),
            )
        )
    return table


def fingerprint_for_version(conn: Conn, kb_id: int, version: int) -> FingerprintTable:
    row = conn.execute(
        "SELECT f.id, f.fp_key, f.dims, f.table_name, f.spec, f.storage, f.main_upto, f.delta_upto "
        "FROM kb_versions v JOIN kb_fingerprints f ON f.id = v.fingerprint_id "
        "WHERE v.kb_id = %s AND v.version = %s",
        (kb_id, version),
    ).fetchone()
    if row is None:
        raise VersionError(f"version {version} does not exist")
    return FingerprintTable.from_row(row)


def table_exists(conn: Conn, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL AS ok", (table,)).fetchone()
    return bool(row and row["ok"])


def has_vector_index(conn: Conn, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_indexes WHERE tablename = %s AND indexdef ILIKE '%%USING hnsw%%'",
        (table,),
    ).fetchone()
    return bool(row and row["n"])


def in_version(alias: str = "c") -> sql.Composable:
    """Return the SQL predicate "row belongs to version %(version)s"."""
    a = sql.Identifier(alias)
    return sql.SQL(
        "{a}.valid_from <= %(version)s AND ({a}.valid_to IS NULL OR {a}.valid_to > %(version)s)"
    ).format(a=a)


def revert_version_rows(conn: Conn, table: str, version: int) -> tuple[int, int]:
    """Undo what ``version`` did to its chunk table; return (emptied, reopened) rows.

    Rows it added get the empty range [v, v): in no version, but their vectors stay
    reusable by content hash until purged. Rows it closed are reopened.
    """
    t = sql.Identifier(table)
    emptied = conn.execute(
        sql.SQL("UPDATE {} SET valid_to = %s WHERE valid_from = %s AND valid_to IS NULL").format(t),
        (version, version),
    ).rowcount
    reopened = conn.execute(
        sql.SQL("UPDATE {} SET valid_to = NULL WHERE valid_to = %s AND valid_from < %s").format(t),
        (version, version),
    ).rowcount
    return emptied, reopened


def purge_dead_rows(conn: Conn, table: str, oldest_kept: int) -> int:
    """Delete rows that belong to no kept version (closed at or before ``oldest_kept``)."""
    return conn.execute(
        sql.SQL("DELETE FROM {} WHERE valid_to IS NOT NULL AND valid_to <= %s").format(
            sql.Identifier(table)
        ),
        (oldest_kept,),
    ).rowcount


def version_stats(conn: Conn, table: str, version: int) -> dict[str, int]:
    """Return row and document counts of ``version`` in ``table``."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) AS chunks, count(DISTINCT doc_id) AS documents FROM {} c WHERE {}"
        ).format(sql.Identifier(table), in_version()),
        {"version": version},
    ).fetchone()
    assert row is not None
    return {"chunks": int(row["chunks"]), "documents": int(row["documents"])}


def table_size_bytes(conn: Conn, table: str) -> int:
    row = conn.execute(
        "SELECT pg_total_relation_size(quote_ident(%s)::regclass) AS n", (table,)
    ).fetchone()
    return int(row["n"]) if row else 0


# Statistics are refreshed after a write of more than this share of a table's rows
# (autovacuum's own default, autovacuum_analyze_scale_factor). Planned from statistics
# that predate a large write, joins against the new rows became nested loops: 135 s for
# one anti-join over a new KB's 50,000 catalog rows, 198 s for another over a manifest.
ANALYZE_SHARE = 0.1


def analyze_if_stale(conn: Conn, table: str, written: int, *, always_below: int = 0) -> bool:
    """ANALYZE ``table`` (every column) when ``written`` rows outgrow its statistics.

    Also when it was never analyzed, or holds fewer than ``always_below`` rows. Returns
    whether it did.
    """
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = quote_ident(%s)::regclass",
                       (table,)).fetchone()
    rows = float(row["reltuples"]) if row else -1.0
    if 0 <= rows and rows >= always_below and written <= ANALYZE_SHARE * rows:
        return False
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return True
