"""Roll a knowledge base back to an earlier version."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, Field

from kbrefresh.release.notify import Notice
from kbrefresh.store import validate_kb_name
from tasks import report_rollback, rollback_live_version, sync_registry_aliases
from tasks.monitor import schedule_monitoring
from tasks.notify import send_notice


class RollbackParameters(BaseModel):
    """Which knowledge base to roll back, to which version, and why."""

    kb: Annotated[str, AfterValidator(validate_kb_name)] = Field(
        min_length=1, max_length=55, description="Knowledge base name")
    to_version: int | None = Field(
        default=None, ge=1, description="Version to serve again; empty means the previous live one."
    )
    reason: str = Field(default="manual rollback", min_length=1, max_length=500,
                        description="Why; kept in the routing history.")


@flow(name="rollback-kb")
def rollback_kb(params: RollbackParameters) -> dict[str, Any]:
    """Route a knowledge base back to its previous live version (or a chosen kept version).

    One short transaction updates the routing row, so readers never stall; the version
    that was live is marked rolled back and the next refresh undoes its rows. Only
    versions still kept (see keep_versions on scheduled-refresh) can serve again; the
    run fails, changing nothing, when there is none. The change is recorded in the
    routing history with the reason and shown as the artifact kbrefresh-rollback-<kb>.
    The version now live gets a fresh post-deploy monitor schedule (pending runs of the
    rolled-back version are cancelled) and on-call is notified.
    """
    change = rollback_live_version(params.kb, params.to_version, params.reason, flow_run.id)
    sync_registry_aliases(params.kb)  # champion follows the routing back
    schedule_monitoring(params.kb, change.to_version, f"rollback: {params.reason}")
    send_notice(Notice("rollback_manual", params.kb,
                       {"from": change.from_version, "to": change.to_version}, params.reason,
                       links={"prefect_flow_run": str(flow_run.id)} if flow_run.id else {}))
    return report_rollback(params.kb, change, params.reason)
