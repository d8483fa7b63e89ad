"""Prefect flows: one per file, orchestration only (the work is in ``tasks`` and ``kbrefresh``)."""

from __future__ import annotations

from flows.rollback import RollbackParameters, rollback_kb
from flows.scheduled_refresh import RefreshParameters, scheduled_refresh

__all__ = ["RefreshParameters", "RollbackParameters", "rollback_kb", "scheduled_refresh"]
