"""The urgent rebrand: rebuild a KB from rebranded documents and swap it live at once."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from kbrefresh.errors import DataQualityError, GateFailed
from kbrefresh.refresh.request import KbName, Reason, RefreshRequest, SourceSpec
from kbrefresh.release.notify import Notice
from kbrefresh.retraining.rebrand_run import run_rebrand
from tasks import PrefectStepRunner
from tasks._settings import flow_settings
from tasks.monitor import schedule_monitoring
from tasks.notify import run_links, send_notice
from tasks.rebrand import report_rebrand, resolve_renames


class RebrandParameters(BaseModel):
    """Which KB to rebrand, from which rebranded documents, with which rename map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kb: KbName
    source: SourceSpec = Field(description="The rebranded documents: directory, file or URL")
    renames_file: str | None = Field(
        default=None, min_length=1,
        description="JSON/YAML old name → new name; default: the map on record for the KB")
    reason: Reason = "urgent rebrand"
    policy_file: str | None = Field(default=None, min_length=1,
                                    description="Acceptance policy for the usual golden sets")


@flow(name="urgent-rebrand")
def urgent_rebrand(params: RebrandParameters) -> dict[str, Any]:
    """Rebrand a knowledge base now: impact report, rebrand gate, immediate blue/green swap.

    Counts what the rename map touches in the live version (artifact kbrefresh-rebrand-<kb>),
    puts the map on record, derives the rebrand golden set (new names, and the old names as
    the "legacy names" slice), then runs the refresh steps with the documents naming an old
    name embedded first. The gate is the usual one plus the rebrand rules (new-name queries
    reach the floor or gain enough; old-name queries may not fall). On a pass the version is
    swapped live at once, the post-deploy monitor is scheduled and on-call gets a published
    notice with the before/after figures; on a fail live keeps serving and a skipped notice
    says why.
    """
    renames = resolve_renames(params.kb, params.renames_file)
    request = RefreshRequest(kb=params.kb, source=params.source, reason=params.reason,
                             policy_file=params.policy_file)
    try:
        report = run_rebrand(flow_settings(), request, renames, runner=PrefectStepRunner())
    except (DataQualityError, GateFailed) as exc:
        send_notice(Notice("skipped", params.kb, {}, str(exc)[:1000]))  # never raises
        raise
    report_rebrand(report)
    if report.refresh.published:
        schedule_monitoring(params.kb, report.refresh.version, params.reason)
        send_notice(report.notice(links=run_links(report.refresh.mlflow_run_id)))
    return report.as_dict()
