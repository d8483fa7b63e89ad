"""Document manifests and the one new/changed/deleted diff between two of them.

A manifest maps doc id → content hash: the catalog's (documents not deleted) or a
version's (``kb_version_documents``, the dataset a version was built from).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from kbrefresh.store.rows import Conn


@dataclass(frozen=True)
class DocumentChanges:
    new: int
    changed: int
    unchanged: int
    deleted: int

    @property
    def new_samples(self) -> int:
        """Documents whose content the next build must embed (new or changed)."""
        return self.new + self.changed


def diff_documents(previous: Mapping[str, str], current: Mapping[str, str]) -> DocumentChanges:
    """Count new, changed, unchanged and deleted documents between two manifests."""
    return DocumentChanges(
        new=sum(1 for d in current if d not in previous),
        changed=sum(1 for d, h in current.items() if d in previous and previous[d] != h),
        unchanged=sum(1 for d, h in current.items() if previous.get(d) == h),
        deleted=sum(1 for d in previous if d not in current),
    )


def version_manifest(conn: Conn, kb_id: int, version: int | None) -> dict[str, str]:
    """Return ``{doc_id: content_hash}`` of a version, in doc id order (empty for None)."""
    if version is None:
        return {}
    return {
        r["doc_id"]: r["content_hash"]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM kb_version_documents"
            " WHERE kb_id = %s AND version = %s ORDER BY doc_id",
            (kb_id, version),
        ).fetchall()
    }


def manifest_size(conn: Conn, kb_id: int, version: int | None) -> int | None:
    """Return how many documents a version was built from (None for no version)."""
    if version is None:
        return None
    row = conn.execute(
        "SELECT count(*) AS n FROM kb_version_documents WHERE kb_id = %s AND version = %s",
        (kb_id, version),
    ).fetchone()
    return int(row["n"]) if row else None


def catalog_manifest(conn: Conn, kb_id: int) -> dict[str, str]:
    """Return ``{doc_id: content_hash}`` of the catalog's documents not deleted."""
    return {
        r["doc_id"]: r["content_hash"]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM kb_documents WHERE kb_id = %s AND deleted_at IS NULL",
            (kb_id,),
        ).fetchall()
    }


# The streamed intake of one build: every document of the source lands in tmp_intake
# (a temp table dropped at commit) batch by batch, so the diff, the duplicate checks and
# the catalog update run in SQL and memory does not grow with the source.
_INTAKE_COLUMNS = ("doc_id", "uri", "title", "category", "metadata", "content_hash",
                   "modified_at", "source_key", "mtime_dated")


def known_documents(
    conn: Conn, kb_id: int, base: int | None, doc_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Return, per doc id, its catalog ``source_key``, ``content_hash``, ``mtime_dated`` and
    ``base_hash`` (its hash in ``base``); ``source_key`` is None for a deleted document.
    """
    # The base hash is a scalar subquery on the manifest's primary key: as a join, a stale
    # row estimate for a new version made the planner scan the whole manifest per id
    # (3.9 s for 1,000 ids at 50k documents, against milliseconds).
    rows = conn.execute(
        "SELECT i.doc_id, d.content_hash, d.mtime_dated, (SELECT v.content_hash"
        " FROM kb_version_documents v WHERE v.kb_id = %s AND v.version = %s"
        " AND v.doc_id = i.doc_id) AS base_hash,"
        " CASE WHEN d.deleted_at IS NULL THEN d.source_key END AS source_key"
        " FROM unnest(%s::text[]) AS i(doc_id)"
        " LEFT JOIN kb_documents d ON d.kb_id = %s AND d.doc_id = i.doc_id",
        (kb_id, base, list(doc_ids), kb_id),
    ).fetchall()
    return {r["doc_id"]: r for r in rows}


def open_intake(conn: Conn) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_intake "
                 "(LIKE kb_documents INCLUDING DEFAULTS) ON COMMIT DROP")
    # Documents whose file was not parsed: the rest of their row comes from the catalog.
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_intake_kept (doc_id text NOT NULL,"
                 " source_key text NOT NULL, modified_at timestamptz) ON COMMIT DROP")
    conn.execute("TRUNCATE tmp_intake, tmp_intake_kept")


def copy_intake(
    conn: Conn, kb_id: int, rows: Iterable[Mapping[str, Any]],
    kept: Iterable[tuple[str, str, datetime | None]] = (),
) -> None:
    """Append parsed rows (keys as ``_INTAKE_COLUMNS``) and kept ``(doc_id, source_key,
    modified_at or None for the catalog's)`` rows to the intake."""
    with conn.cursor().copy(
        sql.SQL("COPY tmp_intake (kb_id, {}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, _INTAKE_COLUMNS)))
    ) as copy:
        for row in rows:
            values = [row[c] for c in _INTAKE_COLUMNS]
            values[4] = json.dumps(dict(values[4]), default=str)
            copy.write_row([kb_id, *values])
    with conn.cursor().copy(
            "COPY tmp_intake_kept (doc_id, source_key, modified_at) FROM STDIN") as copy:
        for item in kept:
            copy.write_row(item)


def close_intake(conn: Conn, kb_id: int) -> dict[str, Any]:
    """Complete kept rows from the catalog; return ``count``, ``newest`` and ``untitled`` ids."""
    conn.execute(
        "INSERT INTO tmp_intake (kb_id, doc_id, uri, title, category, metadata, content_hash,"
        " modified_at, source_key, mtime_dated) SELECT d.kb_id, d.doc_id, d.uri, d.title,"
        " d.category, d.metadata, d.content_hash, coalesce(k.modified_at, d.modified_at),"
        " k.source_key, d.mtime_dated FROM tmp_intake_kept k JOIN kb_documents d"
        " ON d.kb_id = %s AND d.doc_id = k.doc_id", (kb_id,))
    # Two statements, not an IN (subquery) inside the aggregate's FILTER: once the kept ids
    # outgrew work_mem that subplan was not hashed and ran per row (200k x 200k: minutes).
    row = conn.execute(
        "SELECT count(*) AS count, max(modified_at) AS newest FROM tmp_intake").fetchone()
    untitled = conn.execute(
        "SELECT coalesce(array_agg(t.doc_id ORDER BY t.doc_id), '{}') AS ids FROM tmp_intake t"
        " WHERE btrim(t.title) = '' AND EXISTS (SELECT 1 FROM tmp_intake_kept k"
        " WHERE k.doc_id = t.doc_id)").fetchone()
    assert row is not None and untitled is not None
    return dict(row) | {"untitled": untitled["ids"]}


def intake_duplicates(conn: Conn) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Return ids used by several documents (with their uris) and groups of ids sharing content."""
    ids = {
        r["doc_id"]: r["uris"] for r in conn.execute(
            "SELECT doc_id, array_agg(uri ORDER BY uri) AS uris FROM tmp_intake"
            " GROUP BY doc_id HAVING count(*) > 1 ORDER BY doc_id").fetchall()
    }
    contents = [
        r["ids"] for r in conn.execute(
            "SELECT array_agg(DISTINCT doc_id ORDER BY doc_id) AS ids FROM tmp_intake"
            " GROUP BY content_hash HAVING count(DISTINCT doc_id) > 1 ORDER BY 1").fetchall()
    ]
    return ids, contents


def record_intake(conn: Conn, kb_id: int, version: int) -> DocumentChanges:
    """Diff the intake against the catalog, update the catalog, store the version's manifest."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE d.doc_id IS NULL) AS new,"
        " count(*) FILTER (WHERE d.content_hash <> t.content_hash) AS changed,"
        " count(*) FILTER (WHERE d.content_hash = t.content_hash) AS unchanged,"
        " (SELECT count(*) FROM kb_documents x WHERE x.kb_id = %(kb)s AND x.deleted_at IS NULL"
        "  AND NOT EXISTS (SELECT 1 FROM tmp_intake y WHERE y.doc_id = x.doc_id)) AS deleted"
        " FROM tmp_intake t LEFT JOIN kb_documents d ON d.kb_id = %(kb)s"
        " AND d.doc_id = t.doc_id AND d.deleted_at IS NULL",
        {"kb": kb_id},
    ).fetchone()
    assert row is not None
    columns = sql.SQL(", ").join(map(sql.Identifier, _INTAKE_COLUMNS))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in _INTAKE_COLUMNS[1:])
    # Only rows that differ are written (``last_seen``: when the row last changed); writing
    # all of them cost a new tuple per document per refresh.
    conn.execute(sql.SQL(
        "INSERT INTO kb_documents (kb_id, {c}) SELECT kb_id, {c} FROM tmp_intake"
        " ON CONFLICT (kb_id, doc_id) DO UPDATE SET {u}, last_seen = now(), deleted_at = NULL"
        " WHERE kb_documents.deleted_at IS NOT NULL OR ({old}) IS DISTINCT FROM ({new})"
    ).format(c=columns, u=updates,
             old=sql.SQL(", ").join(sql.SQL("kb_documents.{}").format(sql.Identifier(c))
                                    for c in _INTAKE_COLUMNS[1:]),
             new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c))
                                    for c in _INTAKE_COLUMNS[1:])))
    conn.execute(
        "UPDATE kb_documents d SET deleted_at = now() WHERE d.kb_id = %s AND d.deleted_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM tmp_intake t WHERE t.doc_id = d.doc_id)", (kb_id,))
    conn.execute("DELETE FROM kb_version_documents WHERE kb_id = %s AND version = %s",
                 (kb_id, version))
    conn.execute(
        "INSERT INTO kb_version_documents (kb_id, version, doc_id, content_hash)"
        " SELECT %s, %s, doc_id, content_hash FROM tmp_intake", (kb_id, version))
    # The new version's manifest is not in the statistics yet: planned as one row, the
    # anti-join against it (record_touched_intake) ran as a nested loop over 50k x 50k
    # rows for 198 s in one measured refresh. Sampling the table takes ~0.1 s.
    conn.execute("ANALYZE kb_version_documents")
    return DocumentChanges(new=int(row["new"]), changed=int(row["changed"]),
                           unchanged=int(row["unchanged"]), deleted=int(row["deleted"]))


def record_touched_intake(
    conn: Conn, kb_id: int, version: int, base: int | None, table: str
) -> int:
    """Store the documents this build may change (new, changed or deleted since ``base``).

    Without a base (a full build) every document of the intake and every document with
    open rows in ``table`` is touched. Returns how many.
    """
    conn.execute("DELETE FROM kb_build_docs WHERE kb_id = %s AND version = %s", (kb_id, version))
    params = {"kb": kb_id, "version": version, "base": base}
    conn.execute(
        "INSERT INTO kb_build_docs (kb_id, version, doc_id) SELECT DISTINCT %(kb)s, %(version)s,"
        " t.doc_id FROM tmp_intake t WHERE NOT EXISTS (SELECT 1 FROM kb_version_documents v"
        " WHERE v.kb_id = %(kb)s AND v.version = %(base)s AND v.doc_id = t.doc_id"
        " AND v.content_hash = t.content_hash)"
        " UNION SELECT %(kb)s, %(version)s, v.doc_id FROM kb_version_documents v"
        " WHERE v.kb_id = %(kb)s AND v.version = %(base)s"
        " AND NOT EXISTS (SELECT 1 FROM tmp_intake t WHERE t.doc_id = v.doc_id)", params)
    if base is None:
        conn.execute(sql.SQL(
            "INSERT INTO kb_build_docs (kb_id, version, doc_id) SELECT DISTINCT %(kb)s,"
            " %(version)s, o.doc_id FROM {} o WHERE o.valid_to IS NULL ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(table)), params)
    row = conn.execute("SELECT count(*) AS n FROM kb_build_docs WHERE kb_id = %s AND version = %s",
                       (kb_id, version)).fetchone()
    return int(row["n"]) if row else 0
