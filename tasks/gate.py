"""Tasks that validate a built version before it may go live."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kbrefresh import pipeline
from kbrefresh.errors import GateFailed
from kbrefresh.gate import Verdict
from kbrefresh.pipeline import BuildTicket
from kbrefresh.settings import Settings
from kbrefresh.smoke import SmokeResult
from tasks._common import TASK_OPTIONS, artifact_key, escape_markdown


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
def validate_candidate_version(ticket: BuildTicket, smoke: SmokeResult) -> Verdict:
    """Judge the candidate against live on golden queries; store and show the verdict.

    The verdict is shown as the markdown artifact ``kbrefresh-gate-<kb>``.

    Raises:
        GateFailed: smoke checks or the gate failed; the version is marked rejected and
            the live version keeps serving.
    """
    logger = get_run_logger()
    outcome = None
    if smoke.passed:
        outcome = pipeline.validate_candidate(Settings(), ticket, smoke=smoke)
        create_markdown_artifact(
            f"# Validation of {escape_markdown(repr(ticket.kb))} v{ticket.version}\n\n"
            + outcome.verdict.to_markdown() + "\n",
            key=artifact_key("gate", ticket.kb),
            description=f"Validation gate of {ticket.kb!r} v{ticket.version}: "
            f"{'passed' if outcome.verdict.passed else 'failed'}",
        )
        logger.info("validation gate: %s", outcome.verdict.summary)
    if outcome is not None and outcome.verdict.passed:
        return outcome.verdict
    why = (outcome.verdict.summary if outcome
           else f"smoke checks failed: {'; '.join(smoke.failures)}")
    serving = (f"live version {ticket.live_version} keeps serving" if ticket.live_version
               else "no version is live yet")
    raise GateFailed(
        f"version {ticket.version} of {ticket.kb!r} was rejected: {why.rstrip('.')}; {serving}",
        verdict=outcome.as_dict() if outcome else smoke.as_dict(),
    )
