"""The store owns the schema: knowledge bases, versions, manifests, chunk tables.

Modules: ``kbs`` (names, create, look up, overview), ``versions`` (typed version
rows, status), ``documents`` (manifests and the document diff), ``tables``
(fingerprint chunk tables, the version filter, index build, revert, purge, stats),
``rows`` (the typed rows and ``VersionStatus``). Everything is re-exported here:
callers write ``from kbrefresh import store`` and ``store.X``.
"""

from __future__ import annotations

from kbrefresh.store.documents import (
    DocumentChanges,
    catalog_manifest,
    diff_documents,
    manifest_size,
    version_manifest,
)
from kbrefresh.store.kbs import ensure_kb, get_kb_id, kb_overview, list_kbs, validate_kb_name
from kbrefresh.store.rows import (
    ABANDONED,
    KEPT,
    SERVABLE,
    UNFINISHED,
    Conn,
    KbOverview,
    RoutingEvent,
    VersionInfo,
    VersionStatus,
)
from kbrefresh.store.tables import (
    HNSW_MAX_DIMS,
    FingerprintTable,
    build_vector_index,
    ensure_fingerprint,
    fingerprint_for_version,
    has_vector_index,
    in_version,
    purge_dead_rows,
    revert_version_rows,
    table_exists,
    table_size_bytes,
    version_stats,
)
from kbrefresh.store.versions import list_versions, set_status, version_row

__all__ = [
    "ABANDONED",
    "HNSW_MAX_DIMS",
    "KEPT",
    "SERVABLE",
    "UNFINISHED",
    "Conn",
    "DocumentChanges",
    "FingerprintTable",
    "KbOverview",
    "RoutingEvent",
    "VersionInfo",
    "VersionStatus",
    "build_vector_index",
    "catalog_manifest",
    "diff_documents",
    "ensure_fingerprint",
    "ensure_kb",
    "fingerprint_for_version",
    "get_kb_id",
    "has_vector_index",
    "in_version",
    "kb_overview",
    "list_kbs",
    "list_versions",
    "manifest_size",
    "purge_dead_rows",
    "revert_version_rows",
    "set_status",
    "table_exists",
    "table_size_bytes",
    "validate_kb_name",
    "version_manifest",
    "version_row",
    "version_stats",
]
