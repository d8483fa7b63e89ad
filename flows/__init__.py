"""Prefect flows: one per file, orchestration only (the work is in ``tasks`` and ``kbrefresh``)."""

from __future__ import annotations

from flows.rollback import RollbackParameters, rollback_kb
from flows.scheduled_refresh import scheduled_refresh

__all__ = ["RollbackParameters", "rollback_kb", "scheduled_refresh"]
