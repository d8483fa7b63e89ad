"""Archive versions retired by a refresh at the cost of the rows purged, not of the version.

A refresh that retires a version beyond ``keep_versions`` purges the rows no kept version
uses. Each purged row is written once, to a Parquet **row segment** (every column, with
its ``valid_from``/``valid_to`` range) before it is deleted, and the retired version gets
an archive entry ``rows:<table>``. Restoring it reads the version's rows that are still in
the chunk table plus, from the segments whose range covers it, those already purged; no
version is exported whole on every refresh (at 50k chunks that is ~300 MB of vectors).
A chunk table dropped because no kept version uses it is written out whole first.

Segments are logged to the retired version's MLflow run (``archive-rows/``) when tracking
is on, else written under ``<data_dir>/archives/<kb>/rows``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from kbrefresh import store
from kbrefresh._text import slug
from kbrefresh.errors import VersionError
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

ROWS_PREFIX = "rows:"
SEGMENT_DIR = "archive-rows"
Purge = Callable[[store.Conn, str, "int | None"], int]


def exporting_purge(settings: Settings, kb: str, kb_id: int) -> Purge:
    """Return a purge for ``routing.retire_old_versions`` that writes rows out before deleting.

    ``oldest_kept`` None means every row of the table (it is about to be dropped).
    """
    def purge(conn: store.Conn, table: str, oldest_kept: int | None) -> int:
        where = (sql.SQL("TRUE") if oldest_kept is None else
                 sql.SQL("valid_to IS NOT NULL AND valid_to <= {}").format(sql.Literal(oldest_kept)))
        # Binary: vectors as text cost ~15 kB and a parse each (1 s for 1,500 rows).
        rows = conn.cursor(binary=True).execute(sql.SQL(
            "SELECT id, doc_id, chunk_index, content, content_hash, metadata::text AS metadata,"
            " embedding, valid_from, valid_to FROM {} WHERE {} ORDER BY id"
        ).format(sql.Identifier(table), where)).fetchall()
        # Rows a rejected build emptied ([v, v)) are in no version: deleted, not kept.
        kept = [r for r in rows if r["valid_to"] is None or r["valid_to"] > r["valid_from"]]
        if kept:
            _write_segment(settings, conn, kb, kb_id, table, kept)
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(table)),
                     ([r["id"] for r in rows],))
        return len(rows)

    return purge


def _write_segment(settings: Settings, conn: store.Conn, kb: str, kb_id: int, table: str,
                   rows: Sequence[Any]) -> None:
    dims = len(rows[0]["embedding"].to_numpy())
    vectors = np.asarray([r["embedding"].to_numpy() for r in rows], dtype=np.float32)
    data = pa.table({
        "doc_id": [r["doc_id"] for r in rows], "chunk_index": [r["chunk_index"] for r in rows],
        "content": [r["content"] for r in rows], "content_hash": [r["content_hash"] for r in rows],
        "metadata": [r["metadata"] for r in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
        "valid_from": pa.array([r["valid_from"] for r in rows], pa.int32()),
        "valid_to": pa.array([r["valid_to"] for r in rows], pa.int32()),
    })
    first = min(int(r["valid_from"]) for r in rows)
    ends = [r["valid_to"] for r in rows]
    last = None if any(e is None for e in ends) else max(int(e) for e in ends)
    name = f"{table}-{uuid4().hex[:12]}.parquet"
    run = conn.execute(
        "SELECT mlflow_run_id FROM kb_versions WHERE kb_id = %s AND version < %s"
        " AND mlflow_run_id IS NOT NULL ORDER BY version DESC LIMIT 1",
        (kb_id, last if last is not None else 2**31 - 1)).fetchone()
    with tempfile.TemporaryDirectory(prefix="kbrefresh-rows-") as tmp:
        # Vectors do not compress: compressing them only costs time.
        pq.write_table(data, Path(tmp) / name, compression={
            c: "none" if c == "embedding" else "snappy" for c in data.column_names})
        location = _store(settings, kb, run["mlflow_run_id"] if run else None, Path(tmp) / name)
    conn.execute(
        "INSERT INTO kb_row_segments (kb_id, table_name, location, rows, first_version,"
        " last_version) VALUES (%s, %s, %s, %s, %s, %s)",
        (kb_id, table, location, len(rows), first, last))
    logger.info("wrote %d purged rows of %s (versions %d..%s) to %s", len(rows), table, first,
                last if last is not None else "open", location)


def _store(settings: Settings, kb: str, run_id: str | None, file: Path) -> str:
    if settings.tracking and run_id:
        from kbrefresh.tracking._client import session

        with session(settings) as client:
            client.log_artifact(run_id, str(file), SEGMENT_DIR)
        return f"mlflow:{run_id}/{SEGMENT_DIR}/{file.name}"
    target = settings.data_dir / "archives" / slug(kb) / "rows"
    target.mkdir(parents=True, exist_ok=True)
    (target / file.name).write_bytes(file.read_bytes())
    return str(target / file.name)


def record_retired(conn: store.Conn, versions: Sequence[int], *, kb_id: int) -> None:
    """Give each version a refresh retired an archive entry read from its rows and segments."""
    for version in versions:
        row = store.version_row(conn, kb_id, version)
        table = store.fingerprint_for_version(conn, kb_id, version).table
        counts = dict(row.counts or {})
        conn.execute(
            "INSERT INTO kb_archives (kb_id, version, location, chunks, documents, archived_at)"
            " VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (kb_id, version) DO NOTHING",
            (kb_id, version, ROWS_PREFIX + table, int(counts.get("chunks", 0)),
             int(counts.get("documents", 0))))


def assemble(settings: Settings, conn: store.Conn, kb_id: int, version: int,
             tmp: Path) -> tuple[dict[str, Any], pa.Table, list[dict[str, Any]]]:
    """Return (version.json's fields, chunks, manifest) of a version archived as ``rows:``.

    Raises:
        VersionError: rows of the version are missing (a segment lost or deleted).
    """
    fp = store.fingerprint_for_version(conn, kb_id, version)
    parts: list[pa.Table] = []
    if store.table_exists(conn, fp.table):
        rows = conn.execute(
            sql.SQL("SELECT c.doc_id, c.chunk_index, c.content, c.content_hash, c.metadata::text"
                    " AS metadata, c.embedding FROM {} c WHERE ").format(sql.Identifier(fp.table))
            + store.in_version(), {"version": version}).fetchall()
        if rows:
            vectors = np.asarray([r["embedding"].to_numpy() for r in rows], dtype=np.float32)
            parts.append(pa.table({
                **{k: [r[k] for r in rows] for k in
                   ("doc_id", "chunk_index", "content", "content_hash", "metadata")},
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), fp.dims),
            }))
    for seg in conn.execute(
            "SELECT location FROM kb_row_segments WHERE kb_id = %s AND table_name = %s"
            " AND first_version <= %s AND (last_version IS NULL OR last_version > %s) ORDER BY id",
            (kb_id, fp.table, version, version)).fetchall():
        try:
            data = pq.read_table(fetch(settings, str(seg["location"]), tmp))
        except (OSError, pa.ArrowException) as exc:
            raise VersionError(f"row segment {seg['location']!r} of version {version} cannot be "
                               f"read ({type(exc).__name__}); the version is missing rows") from exc
        # Kleene logic: "open (NULL) or ends after" is true for an open row, not NULL.
        alive = pc.and_kleene(pc.less_equal(data["valid_from"], version), pc.or_kleene(
            pc.is_null(data["valid_to"]), pc.greater(data["valid_to"], version)))
        parts.append(data.filter(alive).drop_columns(["valid_from", "valid_to"]))
    if not parts:
        raise VersionError(f"no rows of version {version} are left in the database or its "
                           "row segments; it cannot be restored")
    chunks = pa.concat_tables([p.cast(parts[0].schema) for p in parts]).sort_by(
        [("doc_id", "ascending"), ("chunk_index", "ascending")])
    row = store.version_row(conn, kb_id, version)
    expected = int((row.counts or {}).get("chunks", chunks.num_rows))
    if chunks.num_rows != expected:
        raise VersionError(f"version {version} had {expected} chunks but {chunks.num_rows} were "
                           "found in its chunk table and row segments; a segment is missing")
    manifest = [dict(r) for r in conn.execute(
        "SELECT doc_id, content_hash FROM kb_version_documents WHERE kb_id = %s AND version = %s"
        " ORDER BY doc_id", (kb_id, version)).fetchall()]
    meta = json.loads(json.dumps({"version": version, "dataset_tag": row.dataset_tag,
                                  "fingerprint": fp.spec, "dims": fp.dims}, default=str))
    return meta, chunks, manifest


def fetch(settings: Settings, location: str, tmp: Path) -> Path:
    """Return a local path for an archive location (``mlflow:<run>/<path>`` or a path)."""
    if location.startswith("mlflow:"):
        from kbrefresh.tracking._client import session

        run_id, _, path = location.removeprefix("mlflow:").partition("/")
        with session(settings) as client:
            return Path(client.download_artifacts(run_id, path, str(tmp)))
    return Path(location)
