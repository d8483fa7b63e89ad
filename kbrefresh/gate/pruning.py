"""Archive golden queries that no version can answer any more (stale labels).

A golden query is stale when every document it names was deleted at the source
(``kb_documents.deleted_at`` set by a refresh). The gate already leaves such queries
out of its comparison and lists them; pruning archives them so they stop being
listed. Archived rows stay in ``golden_queries`` (``archived_at``) for the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.settings import Settings

STALE_REASON = "answerable only by documents deleted at the source"


@dataclass(frozen=True)
class PrunedQuery:
    set_name: str
    slice: str
    query: str


def prune_golden(settings: Settings, kb: str, *, dry_run: bool = False) -> list[PrunedQuery]:
    """Archive ``kb``'s golden queries whose relevant documents were all deleted; return them.

    With ``dry_run`` nothing changes and the queries that would be archived are returned.
    """
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        rows = conn.execute(
            "SELECT g.id, g.set_name, g.slice, g.query FROM golden_queries g"
            " WHERE g.kb_id = %s AND g.archived_at IS NULL AND NOT EXISTS ("
            "  SELECT 1 FROM unnest(g.relevant) AS r(doc_id) WHERE NOT EXISTS ("
            "   SELECT 1 FROM kb_documents d WHERE d.kb_id = g.kb_id AND d.doc_id = r.doc_id"
            "   AND d.deleted_at IS NOT NULL))"
            " ORDER BY g.set_name, g.id",
            (kb_id,),
        ).fetchall()
        if not dry_run and rows:
            conn.execute(
                "UPDATE golden_queries SET archived_at = now(), archived_reason = %s"
                " WHERE id = ANY(%s)",
                (STALE_REASON, [r["id"] for r in rows]),
            )
            conn.commit()
    return [PrunedQuery(r["set_name"], r["slice"], r["query"]) for r in rows]
