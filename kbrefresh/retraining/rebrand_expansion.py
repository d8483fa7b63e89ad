"""Rename maps stored with versions, and the query expansion that keeps old names working.

A query naming an old name is rewritten to the names the version it runs on uses,
before it is embedded (the ``Retriever`` and the gate do this); the logged query
stays as typed. Measured on the Python manual, this kept old-name queries at the
new-name figure where alias header lines alone did not (see REBRAND_README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from kbrefresh import store
from kbrefresh.retraining.rebrand import RenameMap, parse_rename_map

__all__ = ["QueryExpander", "query_expander", "save_version_renames"]

# Versions whose renames no longer apply: they never served or were taken back.
_ABANDONED = [s.value for s in (*store.ABANDONED, store.VersionStatus.BUILDING)]


def save_version_renames(conn: store.Conn, kb_id: int, version: int, renames: RenameMap) -> None:
    """Store ``renames`` with ``version`` (replacing any stored before)."""
    conn.execute(
        "DELETE FROM kb_version_renames WHERE kb_id = %s AND version = %s", (kb_id, version)
    )
    with conn.cursor().copy(
        "COPY kb_version_renames (kb_id, version, old_name, new_name) FROM STDIN"
    ) as copy:
        for old, new in renames.pairs:
            copy.write_row((kb_id, version, old, new))


@dataclass(frozen=True)
class QueryExpander:
    """Rewrite old names in a query to the names ``version`` uses, map after map."""

    maps: tuple[RenameMap, ...] = ()

    def __call__(self, query: str) -> str:
        for renames in self.maps:
            query = renames.rewrite(query)
        return query

    def __bool__(self) -> bool:
        return bool(self.maps)


def query_expander(conn: store.Conn, kb_id: int, version: int) -> QueryExpander:
    """Return the expander of ``version``: its renames and those of earlier served versions.

    Rebrands apply in version order, so "A → B" then "B → C" expands A to C. Renames
    of versions that never served (or were rolled back) are left out, except the
    version's own.
    """
    rows = conn.execute(
        "SELECT r.version, r.old_name, r.new_name FROM kb_version_renames r"
        " JOIN kb_versions v ON v.kb_id = r.kb_id AND v.version = r.version"
        " WHERE r.kb_id = %s AND r.version <= %s"
        " AND (r.version = %s OR v.status <> ALL(%s)) ORDER BY r.version",
        (kb_id, version, version, _ABANDONED),
    ).fetchall()
    by_version: dict[int, dict[str, str]] = {}
    for row in rows:
        by_version.setdefault(int(row["version"]), {})[row["old_name"]] = row["new_name"]
    return QueryExpander(tuple(
        parse_rename_map(pairs, source=f"renames of version {v}")
        for v, pairs in sorted(by_version.items())
    ))
