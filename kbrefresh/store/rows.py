"""Typed rows the store returns, and the version status enum.

Rows are frozen dataclasses built from database rows (``from_row``); callers read
attributes, and the CLI turns them into JSON with ``dataclasses.asdict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]


class VersionStatus(StrEnum):
    """Where a version is in its life: ``building → candidate → rejected | live | canary → …``.

    Values are the strings stored in ``kb_versions.status`` (checked by the schema).
    """

    BUILDING = "building"
    CANDIDATE = "candidate"
    REJECTED = "rejected"
    FAILED = "failed"
    LIVE = "live"
    CANARY = "canary"
    PROVEN = "proven"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"
    ARCHIVED = "archived"


# A build in progress: under the refresh lock, one of these belongs to a run that died.
UNFINISHED = (VersionStatus.BUILDING, VersionStatus.CANDIDATE)
# Versions a later build abandons: their row ranges are undone in the chunk table.
ABANDONED = (VersionStatus.REJECTED, VersionStatus.FAILED, VersionStatus.ROLLED_BACK)
# Versions that can serve or be routed back to.
SERVABLE = (VersionStatus.LIVE, VersionStatus.PROVEN, VersionStatus.RETIRED)
# Versions whose chunk rows must be kept.
KEPT = (*SERVABLE, VersionStatus.CANARY, *UNFINISHED)


@dataclass(frozen=True)
class VersionInfo:
    """One ``kb_versions`` row with its fingerprint table."""

    kb_id: int
    version: int
    status: VersionStatus
    dataset_tag: str
    source: str
    fingerprint_id: int
    table_name: str
    fp_key: str
    fingerprint: Mapping[str, Any]
    counts: Mapping[str, Any]
    quality: Mapping[str, Any] | None
    smoke: Mapping[str, Any] | None
    verdict: Mapping[str, Any] | None
    mlflow_run_id: str | None
    flow_run_id: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    live_at: datetime | None
    retired_at: datetime | None
    reverted_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VersionInfo:
        return cls(
            kb_id=int(row["kb_id"]), version=int(row["version"]),
            status=VersionStatus(row["status"]), dataset_tag=str(row["dataset_tag"]),
            source=str(row["source"]), fingerprint_id=int(row["fingerprint_id"]),
            table_name=str(row["table_name"]), fp_key=str(row["fp_key"]),
            fingerprint=row["fingerprint"], counts=row["counts"] or {}, quality=row["quality"],
            smoke=row["smoke"], verdict=row["verdict"], mlflow_run_id=row["mlflow_run_id"],
            flow_run_id=row["flow_run_id"], error=row["error"], created_at=row["created_at"],
            finished_at=row["finished_at"], live_at=row["live_at"], retired_at=row["retired_at"],
            reverted_at=row["reverted_at"],
        )

    @property
    def passed_gate(self) -> bool:
        return bool((self.verdict or {}).get("passed"))


@dataclass(frozen=True)
class RoutingEvent:
    """One ``kb_routing_history`` row: a swap or a rollback."""

    action: str
    from_version: int | None
    to_version: int | None
    reason: str
    flow_run_id: str | None
    changed_by: str
    changed_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RoutingEvent:
        return cls(
            action=str(row["action"]), from_version=row["from_version"],
            to_version=row["to_version"], reason=str(row["reason"]),
            flow_run_id=row["flow_run_id"], changed_by=str(row["changed_by"]),
            changed_at=row["changed_at"],
        )


@dataclass(frozen=True)
class KbOverview:
    """One knowledge base at a glance: what serves it and how many versions it has."""

    name: str
    live_version: int | None
    dataset_tag: str | None
    counts: Mapping[str, Any]
    live_at: datetime | None
    canary_version: int | None
    canary_percent: float
    versions: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> KbOverview:
        return cls(
            name=str(row["name"]), live_version=row["live_version"],
            dataset_tag=row["dataset_tag"], counts=row["counts"] or {}, live_at=row["live_at"],
            canary_version=row["canary_version"], canary_percent=float(row["canary_percent"]),
            versions=int(row["versions"]),
        )
