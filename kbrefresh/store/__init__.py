"""The store owns the schema: knowledge bases, versions, manifests, chunk tables.

Modules: ``kbs`` (names, create, look up, overview), ``versions`` (typed version
rows, status), ``documents`` (manifests and the document diff), ``tables``
(fingerprint chunk tables, the version filter, revert, purge, stats), ``segments``
(the HNSW-indexed main segment and the exact delta: build, rebuild, compact), ``rows`` (the typed rows and ``VersionStatus``). Everything is re-exported here:
callers write ``from kbrefresh import store`` and ``store.X``.
"""

from __future__ import annotations

from kbrefresh.store.documents import (
    DocumentChanges,
    catalog_manifest,
    close_intake,
    copy_intake,
    diff_documents,
    intake_duplicates,
    known_documents,
    manifest_size,
    open_intake,
    record_intake,
    record_touched_intake,
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
from kbrefresh.store.segments import (
    Placement,
    build_delta_index,
    build_main_index,
    build_workers,
    compact,
    delta_rows,
    has_vector_index,
    hnsw_indexes,
    place_new_rows,
    segment_indexes,
)
from kbrefresh.store.tables import (
    HNSW_MAX_DIMS,
    HNSW_MAX_DIMS_BY_STORAGE,
    STORAGES,
    FingerprintTable,
    ensure_fingerprint,
    fingerprint_for_version,
    in_version,
    purge_dead_rows,
    revert_version_rows,
    table_exists,
    table_size_bytes,
    version_stats,
)
from kbrefresh.store.versions import list_versions, refuse_during_rollout, set_status, version_row

__all__ = [
    "ABANDONED",
    "HNSW_MAX_DIMS",
    "HNSW_MAX_DIMS_BY_STORAGE",
    "KEPT",
    "SERVABLE",
    "STORAGES",
    "UNFINISHED",
    "Conn",
    "DocumentChanges",
    "FingerprintTable",
    "KbOverview",
    "Placement",
    "RoutingEvent",
    "VersionInfo",
    "VersionStatus",
    "build_delta_index",
    "build_main_index",
    "build_workers",
    "catalog_manifest",
    "close_intake",
    "compact",
    "copy_intake",
    "delta_rows",
    "diff_documents",
    "ensure_fingerprint",
    "ensure_kb",
    "fingerprint_for_version",
    "get_kb_id",
    "has_vector_index",
    "hnsw_indexes",
    "in_version",
    "intake_duplicates",
    "kb_overview",
    "known_documents",
    "list_kbs",
    "list_versions",
    "manifest_size",
    "open_intake",
    "place_new_rows",
    "purge_dead_rows",
    "record_intake",
    "record_touched_intake",
    "refuse_during_rollout",
    "revert_version_rows",
    "segment_indexes",
    "set_status",
    "table_exists",
    "table_size_bytes",
    "validate_kb_name",
    "version_manifest",
    "version_row",
    "version_stats",
]
