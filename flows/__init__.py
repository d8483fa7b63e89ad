"""Prefect flows: one per file, orchestration only (the work is in ``tasks`` and ``kbrefresh``)."""

from __future__ import annotations

from flows.rollback import RollbackParameters, rollback_kb
from flows.rollout_step import ApprovalInput, RolloutStepParameters, rollout_step
from flows.scheduled_refresh import scheduled_refresh
from flows.urgent_rebrand import RebrandParameters, urgent_rebrand

__all__ = ["ApprovalInput", "RebrandParameters", "RollbackParameters", "RolloutStepParameters",
           "rollback_kb", "rollout_step", "scheduled_refresh", "urgent_rebrand"]
