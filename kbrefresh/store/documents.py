"""Document manifests and the one new/changed/deleted diff between two of them.

A manifest maps doc id → content hash: the catalog's (documents not deleted) or a
version's (``kb_version_documents``, the dataset a version was built from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
