"""Tasks that change which version serves: swap a candidate live, roll back."""

from __future__ import annotations

from prefect import get_run_logger, task

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.refresh import steps as pipeline
from kbrefresh.refresh.steps import BuildTicket, PublishResult
from kbrefresh.serving import routing
from kbrefresh.serving.routing import RouteChange
from kbrefresh.settings import Settings
from tasks._common import ROUTING_TASK_OPTIONS


@task(**ROUTING_TASK_OPTIONS)
def swap_live_version(
    ticket: BuildTicket, reason: str, flow_run_id: str | None, keep_versions: int
) -> PublishResult:
    """Make the candidate live (blue/green), then archive versions beyond ``keep_versions``."""
    published = pipeline.publish(
        Settings(), ticket, reason=reason, flow_run_id=flow_run_id, keep_versions=keep_versions
    )
    get_run_logger().info(
        "%r: live v%s -> v%d (%s); archived %s",
        ticket.kb, published.from_version, published.to_version, reason,
        published.archived or "nothing",
    )
    return published


@task(**ROUTING_TASK_OPTIONS)
def rollback_live_version(
    kb: str, to_version: int | None, reason: str, flow_run_id: str | None
) -> RouteChange:
    """Route ``kb`` back to the previous live version (or ``to_version``).

    Raises:
        VersionError: unknown KB, no live version, or no kept version to go back to.
    """
    with connect(Settings(), autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        change = routing.rollback(
            conn, kb_id, kb, to_version=to_version, reason=reason, flow_run_id=flow_run_id
        )
    get_run_logger().warning(
        "%r rolled back: live v%s -> v%d (%s)", kb, change.from_version, change.to_version, reason
    )
    return change
