"""Document manifests and the one new/changed/deleted diff between two of them.

A manifest maps doc id → content hash: the catalog's (documents not deleted) or a
version's (``kb_version_documents``, the dataset a version was built from).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from kbrefresh.store.rows import Conn
from kbrefresh.store.tables import analyze_if_stale


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


# The streamed intake of one build: every document of the source is listed in tmp_scan
# (doc id, path, uri, stat signature); the documents parsed land in tmp_intake and those
# read but unchanged in tmp_intake_kept, batch by batch. Documents listed but in neither
# kept their catalog row unread. The diff, the checks and the catalog update run in SQL
# (temp tables dropped at commit), so memory does not grow with the source.
_INTAKE_COLUMNS = ("doc_id", "uri", "title", "category", "metadata", "content_hash",
                   "modified_at", "source_key", "mtime_dated", "stat_sig")


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
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_intake_kept (doc_id text NOT NULL,"
                 " source_key text NOT NULL, modified_at timestamptz, stat_sig text)"
                 " ON COMMIT DROP")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_scan (n serial, doc_id text NOT NULL,"
                 " rel text, uri text NOT NULL, link boolean NOT NULL, sig text) ON COMMIT DROP")
    conn.execute("TRUNCATE tmp_intake, tmp_intake_kept, tmp_scan")


def copy_scan(conn: Conn, entries: Iterable[tuple[str, str | None, str, bool, str | None]]) -> int:
    """List documents of the source: (doc id, rel path, uri, is a link, stat signature)."""
    n = 0
    with conn.cursor().copy("COPY tmp_scan (doc_id, rel, uri, link, sig) FROM STDIN") as copy:
        for entry in entries:
            copy.write_row(entry)
            n += 1
    return n


def intake_reads(
    conn: Conn, kb_id: int, base: int | None, batch_size: int, *, everything: bool
) -> Iterator[list[dict[str, Any]]]:
    """Yield, in scan order, listed files whose signature or uri differs from the catalog's,
    with the catalog columns ``known_documents`` gives (all files with ``everything``).

    A document whose catalog hash is not its hash in ``base`` (a rejected build changed
    the catalog) is read again, and so is one without a signature. Read by a server-side
    cursor: memory holds one batch.
    """
    conn.execute("ANALYZE tmp_scan (doc_id)")  # the row count and the join column
    with conn.cursor(name="kbrefresh_intake_reads") as cursor:
        cursor.execute(
            "SELECT s.doc_id, s.rel, s.uri, s.link, d.content_hash, d.mtime_dated,"
            " v.content_hash AS base_hash,"
            " CASE WHEN d.deleted_at IS NULL THEN d.source_key END AS source_key"
            " FROM tmp_scan s LEFT JOIN kb_documents d ON d.kb_id = %(kb)s AND d.doc_id = s.doc_id"
            " LEFT JOIN kb_version_documents v ON v.kb_id = %(kb)s AND v.version = %(base)s"
            " AND v.doc_id = s.doc_id"
            " WHERE %(all)s OR d.doc_id IS NULL OR d.deleted_at IS NOT NULL"
            " OR d.stat_sig IS NULL OR d.stat_sig <> s.sig OR s.sig IS NULL OR d.uri <> s.uri"
            " OR v.content_hash IS DISTINCT FROM d.content_hash ORDER BY s.n",
            {"kb": kb_id, "base": base, "all": everything})
        while rows := cursor.fetchmany(batch_size):
            yield rows


def copy_intake(
    conn: Conn, kb_id: int, rows: Iterable[Mapping[str, Any]],
    kept: Iterable[tuple[str, str, datetime | None, str | None]] = (),
    failed: Sequence[str] = (),
) -> None:
    """Append parsed rows (keys as ``_INTAKE_COLUMNS``) and kept ``(doc_id, source_key,
    modified_at or None for the catalog's, stat signature)`` rows to the intake; listed
    files that ``failed`` (rel paths) are not documents of the source."""
    with conn.cursor().copy(
        sql.SQL("COPY tmp_intake (kb_id, {}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, _INTAKE_COLUMNS)))
    ) as copy:
        for row in rows:
            values = [row[c] for c in _INTAKE_COLUMNS]
            values[4] = json.dumps(dict(values[4]), default=str)
            copy.write_row([kb_id, *values])
    with conn.cursor().copy("COPY tmp_intake_kept (doc_id, source_key, modified_at, stat_sig)"
                            " FROM STDIN") as copy:
        for item in kept:
            copy.write_row(item)
    if failed:
        conn.execute("DELETE FROM tmp_scan WHERE rel = ANY(%s)", (list(failed),))


# The documents of the source not parsed, with their catalog rows.
_UNPARSED = (" FROM tmp_scan s JOIN kb_documents d ON d.kb_id = %(kb)s AND d.doc_id = s.doc_id"
             " WHERE NOT EXISTS (SELECT 1 FROM tmp_intake t WHERE t.doc_id = s.doc_id)")


def close_intake(conn: Conn, kb_id: int) -> dict[str, Any]:
    """Return ``count``, ``newest`` and ``untitled`` (documents not parsed, without a title)."""
    kb = {"kb": kb_id}
    row = conn.execute(
        "SELECT (SELECT count(*) FROM tmp_scan) AS count, greatest("
        " (SELECT max(modified_at) FROM tmp_intake),"
        " (SELECT max(coalesce(k.modified_at, d.modified_at)) FROM tmp_intake_kept k"
        "  JOIN kb_documents d ON d.kb_id = %(kb)s AND d.doc_id = k.doc_id),"
        " (SELECT max(d.modified_at)" + _UNPARSED + " AND NOT EXISTS"
        "  (SELECT 1 FROM tmp_intake_kept k WHERE k.doc_id = s.doc_id))) AS newest", kb).fetchone()
    untitled = conn.execute(
        "SELECT coalesce(array_agg(s.doc_id ORDER BY s.doc_id), '{}') AS ids"
        + _UNPARSED + " AND btrim(d.title) = ''", kb).fetchone()
    assert row is not None and untitled is not None
    return dict(row) | {"untitled": untitled["ids"]}


def intake_duplicates(conn: Conn, kb_id: int) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Return ids used by several documents (with their uris) and groups of ids sharing content."""
    ids = {
        r["doc_id"]: r["uris"] for r in conn.execute(
            "SELECT doc_id, array_agg(uri ORDER BY uri) AS uris FROM tmp_scan"
            " GROUP BY doc_id HAVING count(*) > 1 ORDER BY doc_id").fetchall()
    }
    contents = [
        r["ids"] for r in conn.execute(
            "SELECT array_agg(DISTINCT doc_id ORDER BY doc_id) AS ids FROM ("
            " SELECT doc_id, content_hash FROM tmp_intake UNION ALL"
            " SELECT s.doc_id, d.content_hash" + _UNPARSED + ") x"
            " GROUP BY content_hash HAVING count(DISTINCT doc_id) > 1 ORDER BY 1",
            {"kb": kb_id}).fetchall()
    ]
    return ids, contents


def record_intake(conn: Conn, kb_id: int, version: int) -> DocumentChanges:
    """Diff the intake against the catalog, update the catalog, store the version's manifest."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE d.doc_id IS NULL) AS new,"
        " count(*) FILTER (WHERE d.content_hash <> t.content_hash) AS changed,"
        " (SELECT count(*) FROM tmp_scan) AS listed,"
        " (SELECT count(*) FROM kb_documents x WHERE x.kb_id = %(kb)s AND x.deleted_at IS NULL"
        "  AND NOT EXISTS (SELECT 1 FROM tmp_scan y WHERE y.doc_id = x.doc_id)) AS deleted"
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
    upserted = conn.execute(sql.SQL(
        "INSERT INTO kb_documents (kb_id, {c}) SELECT kb_id, {c} FROM tmp_intake"
        " ON CONFLICT (kb_id, doc_id) DO UPDATE SET {u}, last_seen = now(), deleted_at = NULL"
        " WHERE kb_documents.deleted_at IS NOT NULL OR ({old}) IS DISTINCT FROM ({new})"
    ).format(c=columns, u=updates,
             old=sql.SQL(", ").join(sql.SQL("kb_documents.{}").format(sql.Identifier(c))
                                    for c in _INTAKE_COLUMNS[1:]),
             new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c))
                                    for c in _INTAKE_COLUMNS[1:]))).rowcount
    analyze_if_stale(conn, "kb_documents", upserted)  # a new KB's rows: all of them
    conn.execute(
        "UPDATE kb_documents d SET source_key = k.source_key, stat_sig = k.stat_sig,"
        " modified_at = coalesce(k.modified_at, d.modified_at), last_seen = now()"
        " FROM tmp_intake_kept k WHERE d.kb_id = %s AND d.doc_id = k.doc_id"
        " AND (d.source_key, d.stat_sig, d.modified_at) IS DISTINCT FROM"
        " (k.source_key, k.stat_sig, coalesce(k.modified_at, d.modified_at))", (kb_id,))
    conn.execute(
        "UPDATE kb_documents d SET deleted_at = now() WHERE d.kb_id = %s AND d.deleted_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM tmp_scan t WHERE t.doc_id = d.doc_id)", (kb_id,))
    write_manifest(conn, kb_id, version, sql.SQL(
        "SELECT d.doc_id, d.content_hash FROM tmp_scan s JOIN kb_documents d"
        " ON d.kb_id = %(kb)s AND d.doc_id = s.doc_id"))
    new, changed = int(row["new"]), int(row["changed"])
    return DocumentChanges(new=new, changed=changed, unchanged=int(row["listed"]) - new - changed,
                           deleted=int(row["deleted"]))


def write_manifest(conn: Conn, kb_id: int, version: int, rows: sql.Composable) -> None:
    """Make ``version``'s manifest exactly the (doc_id, content_hash) rows ``rows`` selects.

    ``rows`` may use ``%(kb)s``. ``version`` must be the KB's newest: what it wrote before
    is undone, open ranges it does not keep are closed at it and the rest open at it, so
    the writes follow the change while the comparison reads the manifest once.
    """
    params = {"kb": kb_id, "v": version}
    analyze_if_stale(conn, "kb_document_ranges", 0)  # never analyzed: see migration 0020
    conn.execute("DELETE FROM kb_document_ranges WHERE kb_id = %(kb)s AND valid_from = %(v)s",
                 params)
    conn.execute("UPDATE kb_document_ranges SET valid_to = NULL WHERE kb_id = %(kb)s"
                 " AND valid_to = %(v)s", params)
    conn.execute(sql.SQL(
        "UPDATE kb_document_ranges r SET valid_to = %(v)s WHERE r.kb_id = %(kb)s"
        " AND r.valid_to IS NULL AND NOT EXISTS (SELECT 1 FROM ({rows}) m"
        " WHERE m.doc_id = r.doc_id AND m.content_hash = r.content_hash)").format(rows=rows),
        params)
    # Found first, inserted second: an INSERT whose NOT EXISTS reads the table it writes
    # was planned (for an empty table) as a nested loop rescanning the growing heap per
    # row, 18.9 s for a first build of 50,000 documents.
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS tmp_manifest_opened (doc_id text NOT NULL,"
                 " content_hash text NOT NULL) ON COMMIT DROP")
    conn.execute("TRUNCATE tmp_manifest_opened")
    conn.execute(sql.SQL(
        "INSERT INTO tmp_manifest_opened SELECT m.doc_id, m.content_hash FROM ({rows}) m"
        " WHERE NOT EXISTS (SELECT 1 FROM kb_document_ranges r WHERE r.kb_id = %(kb)s"
        " AND r.valid_to IS NULL AND r.doc_id = m.doc_id)").format(rows=rows), params)
    written = conn.execute(
        "INSERT INTO kb_document_ranges (kb_id, doc_id, content_hash, valid_from)"
        " SELECT %(kb)s, doc_id, content_hash, %(v)s FROM tmp_manifest_opened", params).rowcount
    analyze_if_stale(conn, "kb_document_ranges", written)


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
        " AND NOT EXISTS (SELECT 1 FROM tmp_scan s WHERE s.doc_id = v.doc_id)", params)
    if base is None:
        conn.execute(sql.SQL(
            "INSERT INTO kb_build_docs (kb_id, version, doc_id) SELECT DISTINCT %(kb)s,"
            " %(version)s, o.doc_id FROM {} o WHERE o.valid_to IS NULL ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(table)), params)
    # Fresh statistics: taken for the one row they were when the table was last
    # analyzed, 1,000 touched ids made later anti-joins nested loops (2.2 s at 50k).
    conn.execute("ANALYZE kb_build_docs")
    row = conn.execute("SELECT count(*) AS n FROM kb_build_docs WHERE kb_id = %s AND version = %s",
                       (kb_id, version)).fetchone()
    return int(row["n"]) if row else 0
