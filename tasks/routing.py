"""Tasks of the rollback: route a KB back, move the registry aliases along, report it."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kbrefresh import store
from kbrefresh._text import escape_markdown
from kbrefresh.db import connect
from kbrefresh.refresh import steps
from kbrefresh.serving import routing
from kbrefresh.serving.routing import RouteChange
from tasks._common import ROUTING_TASK_OPTIONS, TASK_OPTIONS, artifact_key
from tasks._settings import flow_settings
from tasks.refresh_artifacts import table


@task(**ROUTING_TASK_OPTIONS)
def rollback_live_version(
    kb: str, to_version: int | None, reason: str, flow_run_id: str | None
) -> RouteChange:
    """Route ``kb`` back to the previous live version (or ``to_version``).

    Raises:
        VersionError: unknown KB, no live version, or no kept version to go back to.
    """
    with connect(flow_settings(), autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        change = routing.rollback(
            conn, kb_id, kb, to_version=to_version, reason=reason, flow_run_id=flow_run_id
        )
    get_run_logger().warning(
        "%r rolled back: live v%s -> v%d (%s)", kb, change.from_version, change.to_version, reason
    )
    return change


# Tracking never fails a run (failures come back as warnings), so retries buy nothing.
@task(**TASK_OPTIONS | {"retries": 0}, name="sync_aliases")
def sync_registry_aliases(kb: str) -> str | None:
    """Point the champion/challenger aliases at the live/canary versions; return a warning."""
    warning = steps.sync_aliases(flow_settings(), kb)
    if warning:
        get_run_logger().warning("%s", warning)
    return warning


@task(**TASK_OPTIONS)
def report_rollback(kb: str, change: RouteChange, reason: str) -> dict[str, Any]:
    """Publish the rollback as the artifact ``kbrefresh-rollback-<kb>``; return it as a dict."""
    summary = f"{kb!r}: live v{change.from_version} -> v{change.to_version} ({reason})"
    create_markdown_artifact(
        f"# {escape_markdown(repr(kb))} rolled back to v{change.to_version}\n\n"
        + table(("", ""), [
            ("Live", f"v{change.from_version} → v{change.to_version}"),
            ("Rolled back", f"v{change.from_version}"),
            ("Reason", escape_markdown(reason)),
        ]),
        key=artifact_key("rollback", kb),
        description=summary,
    )
    return {"kb": kb, "from_version": change.from_version, "to_version": change.to_version,
            "reason": reason}
