"""Tasks of the drift-reembed flow: start the segment's canary."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.retraining.reembed import DRIFT_ROLLOUT_POLICY
from tasks._common import ROUTING_TASK_OPTIONS
from tasks._settings import flow_settings


@task(**ROUTING_TASK_OPTIONS)
def start_canary(kb: str, candidate: int, reason: str, flow_run_id: str | None) -> str:
    """Start the canary of ``candidate`` (10 → 50 → 100, 2 days per step); return its detail."""
    with connect(flow_settings(), autocommit=True) as conn:
        t = rollout.start(conn, kb, strategy="canary", policy=DRIFT_ROLLOUT_POLICY,
                          now=datetime.now(UTC), candidate=candidate, reason=reason,
                          flow_run_id=flow_run_id)
    get_run_logger().info("rollout #%d of %r: %s", t.rollout.id, kb, t.detail)
    return t.detail
