"""The daily retraining check: measure the triggers, decide, and request or schedule a refresh."""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, Field

from kbrefresh.retraining.check import SCHEDULE_DELAY_DAYS
from kbrefresh.store import validate_kb_name
from tasks import triggers


class CheckParameters(BaseModel):
    """Which knowledge base to check, against which source, with which thresholds."""

    kb: Annotated[str, AfterValidator(validate_kb_name)] = Field(
        min_length=1, max_length=55, description="Knowledge base name")
    source: str | None = Field(
        default=None, min_length=1,
        description="Directory, .csv/.parquet or SQLAlchemy URL; without it volume and "
                    "quality are not checked")
    query: str | None = Field(default=None, description="SQL, when the source is a URL")
    policy_file: str | None = Field(
        default=None, min_length=1, description="YAML/TOML file with per-KB thresholds")
    dispatch: bool = Field(
        default=True, description="Request (event) or schedule the refresh the decision calls for")
    refresh_deployment: str = Field(
        default="scheduled-refresh/scheduled-refresh", pattern=r"^[^/]+/[^/]+$",
        description="Deployment ('flow/deployment') to schedule later refreshes on")


@flow(name="retraining-check")
def retraining_check(params: CheckParameters) -> dict[str, Any]:
    """Check whether a knowledge base needs retraining, and act on the playbook's decision.

    Measures time since the live version was built, user satisfaction (last 7 days vs the
    28 before), golden-query accuracy of the live version vs when it was validated, query
    drift (KL/PSI/JS over query clusters and over the categories of the top documents, plus
    coverage), and, with a source, the volume of new or changed documents and their quality.
    The decision tree picks the most urgent action and the signal that drove it.

    Events: kbrefresh.drift.detected (moderate or severe drift), kbrefresh.performance.degraded
    (warning or critical), and for retrains due now or within 24 h kbrefresh.retrain.requested,
    which triggers the scheduled-refresh deployment. Retrains due within a week or later are
    created as scheduled runs of scheduled-refresh (+6 or +20 days), unless one is already
    pending. Bad source data blocks any retrain and is logged as an error. Every decision is
    stored in retrain_decisions; the report is the artifact kbrefresh-check-<kb>. With
    dispatch off, only the observation events are sent and nothing is requested or scheduled.
    """
    run_id = flow_run.id
    check = triggers.compute_signals(params.kb, params.source, params.query, params.policy_file)
    dispatched: dict[str, Any] = {"dispatch": params.dispatch, "events": triggers.emit_check_events(
        check, params.source, params.dispatch, run_id)}
    delay = SCHEDULE_DELAY_DAYS.get(check.decision.action)
    if params.dispatch and delay is not None:
        dispatched["schedule"] = triggers.schedule_refresh(
            params.kb, params.source, check.retrain_reason, delay, params.refresh_deployment)
    recorded = triggers.record_decision(check, dispatched, run_id)
    artifact = triggers.report_check(recorded)
    decision = recorded.decision
    return {"kb": params.kb, "action": decision.action.value, "urgency": decision.urgency,
            "driver": decision.driver.name, "summary": decision.summary,
            "decision_id": recorded.decision_id, "dispatched": dispatched, "artifact": artifact}
