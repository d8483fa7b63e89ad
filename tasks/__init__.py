"""Prefect tasks: each opens its own resources, calls core steps and returns plain values.

The refresh runs ``kbrefresh.refresh.sequence`` with ``PrefectStepRunner``: every step
is a task named like the step. Every task retries transient errors only (a dropped
database connection, an embedding request that hit 429, 5xx or a timeout) up to three
times after 2, 5 and 15 seconds; bad data, bad configuration, a failed gate or a held
lock fail at once. Routing changes retry only when no connection could be opened.
"""

from __future__ import annotations

from tasks._common import artifact_key, is_transient
from tasks.refresh import PrefectStepRunner
from tasks.routing import report_rollback, rollback_live_version, sync_registry_aliases

__all__ = [
    "PrefectStepRunner",
    "artifact_key",
    "is_transient",
    "report_rollback",
    "rollback_live_version",
    "sync_registry_aliases",
]
