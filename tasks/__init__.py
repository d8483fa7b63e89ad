"""Prefect tasks: each opens its own resources, calls one core step and returns plain values.

Every task retries transient errors only (a dropped database connection, an
embedding request that hit 429, 5xx or a timeout) up to three times after 2, 5
and 15 seconds; bad data, bad configuration, a failed gate or a held lock fail
at once. Routing changes retry only when no connection could be opened.
"""

from __future__ import annotations

from tasks._common import Stopwatch, artifact_key, is_transient
from tasks.documents import prepare_dataset
from tasks.embeddings import embed_changed_chunks
from tasks.gate import raise_if_rejected, smoke_check_version, validate_candidate_version
from tasks.reports import report_refresh, report_rollback
from tasks.routing import rollback_live_version, swap_live_version
from tasks.store import (
    begin_version,
    finalize_version,
    hold_refresh_lock,
    mark_build_failed,
    plan_version,
    reuse_unchanged_chunks,
)
from tasks.tracking import record_build_run, sync_registry_aliases

__all__ = [
    "Stopwatch",
    "artifact_key",
    "begin_version",
    "embed_changed_chunks",
    "finalize_version",
    "hold_refresh_lock",
    "is_transient",
    "mark_build_failed",
    "plan_version",
    "prepare_dataset",
    "raise_if_rejected",
    "record_build_run",
    "report_refresh",
    "report_rollback",
    "reuse_unchanged_chunks",
    "rollback_live_version",
    "smoke_check_version",
    "swap_live_version",
    "sync_registry_aliases",
    "validate_candidate_version",
]
