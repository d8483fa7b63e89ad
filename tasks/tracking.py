"""Tasks that record builds in MLflow and keep registry aliases on the routing."""

from __future__ import annotations

from prefect import get_run_logger, task

from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.staging import BuildPlan
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.refresh.steps import BuildTicket, PrepareResult, build_counts
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records
from tasks._common import TASK_OPTIONS

# Tracking never fails a run (failures come back as warnings), so retries buy nothing.
_OPTIONS = TASK_OPTIONS | {"retries": 0}


@task(**_OPTIONS)
def record_build_run(
    ticket: BuildTicket,
    source: str,
    prepared: PrepareResult,
    plan: BuildPlan,
    stats: EmbedStats,
    reuse: tuple[int, int],
    outcome: GateOutcome | None,
    seconds: dict[str, float],
) -> records.BuildRecord:
    """Log the build (params, counts, timings, verdict, chart, model card, manifest) to MLflow.

    A version that passed the gate is registered as a model version of the KB's model.
    """
    settings = Settings()
    if not settings.tracking:
        return records.BuildRecord(None, None)
    record = records.record_build(
        settings, ticket, source=source, counts=build_counts(prepared, plan, stats, reuse),
        seconds=seconds,
        estimated_tokens=plan.estimated_tokens, outcome=outcome, quality=prepared.quality)
    logger = get_run_logger()
    if record.warning:
        logger.warning("%s", record.warning)
    else:
        logger.info("MLflow run %s, model version %s", record.run_id, record.model_version)
    return record


@task(**_OPTIONS)
def sync_registry_aliases(kb: str) -> str | None:
    """Point the champion/challenger aliases at the live/canary versions; return a warning."""
    settings = Settings()
    if not settings.tracking:
        return None
    warning = records.sync_aliases(settings, kb)
    if warning:
        get_run_logger().warning("%s", warning)
    return warning
