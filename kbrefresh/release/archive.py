"""Archive a version you can restore: Parquet export first, rows purged after.

An archive holds three files: ``chunks.parquet`` (doc id, chunk index, content, content
hash, metadata, the vector as a fixed-size list of float32), ``manifest.parquet`` (the
version's documents and their content hashes) and ``version.json`` (fingerprint,
dataset tag, verdict). They are logged under ``archive/`` on the version's MLflow run
when tracking is on, else written under ``<data_dir>/archives``. Restoring loads them
into a new version (rows are never re-embedded), runs the gate against live and
publishes it, or publishes it straight away with ``force``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from kbrefresh import store
from kbrefresh.build import staging as build
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError, GateFailed, VersionError
from kbrefresh.gate.evaluation import run_gate
from kbrefresh.models import Fingerprint
from kbrefresh.refresh import steps as pipeline
from kbrefresh.release import row_archive
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.store import VersionStatus

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "archive"
_FILES = ("chunks.parquet", "manifest.parquet", "version.json")
# Versions whose rows may still be in a chunk table: everything not yet archived or abandoned.
_KEPT = ("building", "candidate", "live", "canary", "proven", "retired")


@dataclass(frozen=True)
class ArchiveRecord:
    kb: str
    version: int
    location: str
    chunks: int
    documents: int
    purged_rows: int


@dataclass(frozen=True)
class RestoreResult:
    kb: str
    archived_version: int
    version: int
    live: bool
    forced: bool
    summary: str


def write_archive(conn: store.Conn, kb_id: int, version: int, target: Path) -> tuple[int, int]:
    """Write the three archive files of ``version`` into ``target``; return (chunks, documents)."""
    row = store.version_row(conn, kb_id, version)
    fp = store.fingerprint_for_version(conn, kb_id, version)
    if not store.table_exists(conn, fp.table):
        raise VersionError(f"the chunks of version {version} were already dropped; nothing to archive")
    rows = conn.execute(
        sql.SQL("SELECT c.doc_id, c.chunk_index, c.content, c.content_hash, c.metadata::text"
                " AS metadata, c.embedding FROM {} c WHERE ").format(sql.Identifier(fp.table))
        + store.in_version() + sql.SQL(" ORDER BY c.doc_id, c.chunk_index"),
        {"version": version},
    ).fetchall()
    vectors = np.asarray([r["embedding"].to_numpy() for r in rows],
                         dtype=np.float32).reshape(-1, fp.dims)
    chunks = pa.table({
        "doc_id": [r["doc_id"] for r in rows], "chunk_index": [r["chunk_index"] for r in rows],
        "content": [r["content"] for r in rows], "content_hash": [r["content_hash"] for r in rows],
        "metadata": [r["metadata"] for r in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), fp.dims),
    })
    manifest = conn.execute(
        "SELECT doc_id, content_hash FROM kb_version_documents WHERE kb_id = %s AND version = %s"
        " ORDER BY doc_id", (kb_id, version)).fetchall()
    pq.write_table(chunks, target / "chunks.parquet")
    pq.write_table(pa.Table.from_pylist(manifest, schema=pa.schema(
        [("doc_id", pa.string()), ("content_hash", pa.string())])), target / "manifest.parquet")
    described = {k: getattr(row, k) for k in ("version", "dataset_tag", "source", "counts",
                                              "verdict", "mlflow_run_id", "created_at", "live_at")}
    (target / "version.json").write_text(json.dumps(
        described | {"fingerprint": fp.spec, "dims": fp.dims}, default=str, indent=2), "utf-8")
    return len(rows), len(manifest)


def archive_version(settings: Settings, kb: str, version: int, *, now: datetime,
                    retention: timedelta | None = None) -> ArchiveRecord:
    """Export ``version``, mark it archived, then purge rows no kept version uses.

    Raises:
        VersionError: the version is live, unknown, or its rows are gone already.
    """
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        if routing.live_version(conn, kb_id) == version:
            raise VersionError(f"version {version} of {kb!r} is live; roll back or publish first")
        run_id = store.version_row(conn, kb_id, version).mlflow_run_id
        with tempfile.TemporaryDirectory(prefix="kbrefresh-archive-") as tmp:
            n_chunks, n_docs = write_archive(conn, kb_id, version, Path(tmp))
            location = _store_files(settings, kb, version, run_id, Path(tmp))
        with conn.transaction():
            conn.execute(
                "INSERT INTO kb_archives (kb_id, version, location, chunks, documents, archived_at,"
                " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (kb_id, version)"
                " DO UPDATE SET location = EXCLUDED.location, archived_at = EXCLUDED.archived_at",
                (kb_id, version, location, n_chunks, n_docs, now,
                 now + retention if retention else None))
            store.set_status(conn, kb_id, version, VersionStatus.ARCHIVED)
            purged = _purge(conn, kb_id, store.fingerprint_for_version(conn, kb_id, version).table,
                            row_archive.exporting_purge(settings, kb, kb_id))
    logger.info("archived %r v%d to %s (%d chunks); purged %d rows", kb, version, location,
                n_chunks, purged)
    return ArchiveRecord(kb, version, location, n_chunks, n_docs, purged)


def _store_files(settings: Settings, kb: str, version: int, run_id: str | None, tmp: Path) -> str:
    if settings.tracking and run_id:
        from kbrefresh.tracking._client import session

        with session(settings) as client:
            client.log_artifacts(run_id, str(tmp), ARTIFACT_DIR)
        return f"mlflow:{run_id}/{ARTIFACT_DIR}"
    from kbrefresh._text import slug

    target = settings.data_dir / "archives" / slug(kb) / f"v{version}"
    target.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        (target / name).write_bytes((tmp / name).read_bytes())
    return str(target)


def _purge(conn: store.Conn, kb_id: int, table: str, purge: row_archive.Purge) -> int:
    row = conn.execute(
        "SELECT min(v.version) AS oldest FROM kb_versions v JOIN kb_fingerprints f"
        " ON f.id = v.fingerprint_id WHERE v.kb_id = %s AND f.table_name = %s"
        " AND v.status = ANY(%s)", (kb_id, table, list(_KEPT))).fetchone()
    oldest = row["oldest"] if row else None
    # Rows a version retired by a refresh still reads are written to a row segment first.
    return purge(conn, table, int(oldest)) if oldest is not None else 0


def restore_version(settings: Settings, kb: str, version: int, *, force: bool = False,
                    reason: str | None = None, flow_run_id: str | None = None) -> RestoreResult:
    """Load archived ``version`` of ``kb`` as a new version; gate it (or not) and publish it.

    Raises:
        VersionError: no archive of that version.
        GateFailed: the restored version failed the gate (rejected; live untouched).
    """
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        found = conn.execute("SELECT location FROM kb_archives WHERE kb_id = %s AND version = %s",
                             (kb_id, version)).fetchone()
    if found is None:
        raise VersionError(f"version {version} of {kb!r} has no archive; "
                           f"see `kbrefresh versions --kb {kb}` for archived versions")
    with tempfile.TemporaryDirectory(prefix="kbrefresh-restore-") as tmp:
        if str(found["location"]).startswith(row_archive.ROWS_PREFIX):  # retired by a refresh
            with connect(settings) as conn, pipeline.refresh_lock(settings, kb):
                meta, chunks, manifest = row_archive.assemble(settings, conn, kb_id, version,
                                                              Path(tmp))
                conn.rollback()
                new = _load(settings, kb_id, version, meta, chunks, manifest)
            return _publish(settings, kb, kb_id, version, new, force=force,
                            reason=reason or f"restore of archived v{version}",
                            flow_run_id=flow_run_id)
        files = row_archive.fetch(settings, str(found["location"]), Path(tmp))
        missing = [n for n in _FILES if not (files / n).is_file()]
        if missing:
            raise ConfigError(f"archive of {kb!r} v{version} at {found['location']!r} lacks {missing}")
        meta = json.loads((files / "version.json").read_text("utf-8"))
        chunks = pq.read_table(files / "chunks.parquet")
        manifest = pq.read_table(files / "manifest.parquet").to_pylist()
        with pipeline.refresh_lock(settings, kb):
            new = _load(settings, kb_id, version, meta, chunks, manifest)
    why = reason or f"restore of archived v{version}"
    return _publish(settings, kb, kb_id, version, new, force=force, reason=why,
                    flow_run_id=flow_run_id)


def _load(settings: Settings, kb_id: int, archived: int, meta: dict[str, Any],
          chunks: pa.Table, manifest: list[dict[str, Any]]) -> int:
    spec = meta["fingerprint"]
    fingerprint = Fingerprint(spec["provider"], spec["model"], int(spec["dims"]), spec["chunker"])
    with connect(settings) as conn:
        fp = store.ensure_fingerprint(conn, kb_id, fingerprint)
        new, _ = build.start_version(conn, kb_id, fp, source=f"restore of v{archived}",
                                     flow_run_id=None)
        table = sql.Identifier(fp.table)
        # Open rows belong to the versions before ``new``; closing them at ``new`` keeps
        # them there and leaves exactly the archived rows in ``new`` (undone if rejected).
        conn.execute(sql.SQL("UPDATE {} SET valid_to = %s WHERE valid_to IS NULL"
                             " AND valid_from < %s").format(table), (new, new))
        vectors = chunks.column("embedding").combine_chunks().flatten().to_numpy()
        vectors = vectors.reshape(-1, fp.dims).astype(np.float32)
        with conn.cursor().copy(sql.SQL(
            "COPY {} (doc_id, chunk_index, content, content_hash, metadata, embedding, valid_from)"
            " FROM STDIN").format(table)) as copy:
            for i, r in enumerate(chunks.drop_columns(["embedding"]).to_pylist()):
                copy.write_row((r["doc_id"], r["chunk_index"], r["content"], r["content_hash"],
                                r["metadata"], vectors[i], new))
        conn.execute("CREATE TEMP TABLE tmp_restored_manifest (doc_id text, content_hash text)"
                     " ON COMMIT DROP")
        with conn.cursor().copy(
                "COPY tmp_restored_manifest (doc_id, content_hash) FROM STDIN") as copy:
            for m in manifest:
                copy.write_row((m["doc_id"], m["content_hash"]))
        store.write_manifest(conn, kb_id, new, sql.SQL(
            "SELECT doc_id, content_hash FROM tmp_restored_manifest"))
        store.set_status(conn, kb_id, new, VersionStatus.CANDIDATE, counts={
            "chunks": chunks.num_rows, "documents": len(manifest), "restored_from": archived})
        conn.commit()
    with connect(settings, autocommit=True) as conn:  # index builds drop old indexes concurrently
        store.place_new_rows(
            conn, store.fingerprint_for_version(conn, kb_id, new), new,
            delta_exact_rows=settings.delta_exact_rows,
            maintenance_work_mem=settings.maintenance_work_mem,
            workers=store.build_workers(conn, settings.index_build_workers))
    return new


def _publish(settings: Settings, kb: str, kb_id: int, archived: int, new: int, *, force: bool,
             reason: str, flow_run_id: str | None) -> RestoreResult:
    if force:
        verdict: dict[str, Any] = {"passed": True, "forced": True,
                                   "summary": f"restored from v{archived} with --force; gate skipped"}
    else:
        outcome = run_gate(settings, kb, new)
        verdict = outcome.as_dict()
    with connect(settings, autocommit=True) as conn:
        if not verdict.get("passed"):
            store.set_status(conn, kb_id, new, VersionStatus.REJECTED, verdict=verdict)
            store.undo_version(conn, store.fingerprint_for_version(conn, kb_id, new), new)
            raise GateFailed(f"restored v{archived} of {kb!r} (as v{new}) failed the gate: "
                             f"{verdict.get('summary')}; rerun with --force to publish anyway",
                             verdict=verdict)
        store.set_status(conn, kb_id, new, VersionStatus.CANDIDATE, verdict=verdict)
        routing.swap_live(conn, kb_id, kb, new, reason=reason, flow_run_id=flow_run_id)
    summary = f"{kb!r}: archived v{archived} restored as v{new}, now live" + (
        " (gate skipped: --force)" if force else " (gate passed)")
    return RestoreResult(kb, archived, new, True, force, summary)
