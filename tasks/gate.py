"""Tasks that validate a built version before it may go live."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from kbrefresh._text import escape_markdown
from kbrefresh.errors import GateFailed
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.gate.smoke import SmokeResult
from kbrefresh.refresh import steps as pipeline
from kbrefresh.refresh.steps import BuildTicket
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records
from kbrefresh.tracking.reports import comparison_markdown
from tasks._common import TASK_OPTIONS, artifact_key


@task(**TASK_OPTIONS)
def smoke_check_version(ticket: BuildTicket) -> SmokeResult:
    """Run the smoke checks on the candidate; a failure marks it rejected (live untouched).

    The checks are shown as the markdown artifact ``kbrefresh-smoke-<kb>``.
    """
    logger = get_run_logger()
    result = pipeline.smoke_validate(Settings(), ticket)
    verdict = "passed" if result.passed else "failed"
    rows = [
        f"| {'pass' if check.passed else 'FAIL'} | {escape_markdown(check.name)} "
        f"| {escape_markdown(check.detail)} |"
        for check in result.checks
    ]
    create_markdown_artifact(
        f"# Smoke checks of {escape_markdown(repr(ticket.kb))} v{ticket.version}: {verdict}\n\n"
        "| result | check | detail |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n",
        key=artifact_key("smoke", ticket.kb),
        description=f"Smoke checks of {ticket.kb!r} v{ticket.version}: {verdict}",
    )
    if result.passed:
        logger.info("v%d passed %d smoke checks", ticket.version, len(result.checks))
    else:
        logger.error("v%d failed smoke checks: %s", ticket.version, "; ".join(result.failures))
    return result


@task(**TASK_OPTIONS)
def validate_candidate_version(ticket: BuildTicket, smoke: SmokeResult) -> GateOutcome | None:
    """Judge the candidate against live on golden queries; store and show the verdict.

    Shown as the table artifact ``kbrefresh-verdict-<kb>`` (every rule) and the markdown
    artifact ``kbrefresh-gate-<kb>`` (candidate vs live per metric and slice, decision).
    Returns None when smoke checks already failed (the gate does not run).
    """
    if not smoke.passed:
        return None
    outcome = pipeline.validate_candidate(Settings(), ticket, smoke=smoke)
    passed = "passed" if outcome.verdict.passed else "failed"
    create_table_artifact(
        [asdict(rule) for rule in outcome.verdict.rules],
        key=artifact_key("verdict", ticket.kb),
        description=f"Validation rules of {ticket.kb!r} v{ticket.version}: {passed}",
    )
    create_markdown_artifact(
        comparison_markdown(ticket.kb, ticket.version, outcome, records.CHART),
        key=artifact_key("gate", ticket.kb),
        description=f"Validation gate of {ticket.kb!r} v{ticket.version}: {passed}",
    )
    get_run_logger().info("validation gate: %s", outcome.verdict.summary)
    return outcome


def raise_if_rejected(
    ticket: BuildTicket, smoke: SmokeResult, outcome: GateOutcome | None
) -> None:
    """Raise GateFailed unless the candidate passed smoke checks and the gate.

    Raises:
        GateFailed: the version is already marked rejected; the live version keeps serving.
    """
    if outcome is not None and outcome.verdict.passed:
        return
    raise GateFailed(pipeline.rejection_message(ticket, smoke, outcome),
                     verdict=outcome.as_dict() if outcome else smoke.as_dict())
