"""Tasks that load a source, check its quality and stage its chunks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kbrefresh._text import escape_markdown
from kbrefresh.build.quality import QualityPolicy, QualityReport
from kbrefresh.errors import DataQualityError
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps as pipeline
from kbrefresh.refresh.steps import BuildTicket, PrepareResult
from kbrefresh.settings import Settings
from tasks._common import TASK_OPTIONS, artifact_key


@task(**TASK_OPTIONS)
def prepare_dataset(
    ticket: BuildTicket,
    source: str,
    query: str | None,
    chunker: ChunkerConfig,
    quality: QualityPolicy,
) -> PrepareResult:
    """Load ``source``, check its quality, record the manifest and stage chunks.

    Raises:
        DataQualityError: the data failed its checks; the version is marked failed and
            a markdown artifact lists which documents failed and why.
    """
    logger = get_run_logger()
    try:
        prepared = pipeline.prepare_data(
            Settings(), ticket, source, query=query, chunker=chunker, quality=quality
        )
    except DataQualityError as exc:
        _report_quality_failure(ticket, source, exc)
        raise
    changes = prepared.changes
    logger.info(
        "prepared %s: %d documents (%d new, %d changed, %d unchanged, %d deleted), %d chunks",
        prepared.dataset_tag, prepared.documents, changes.new, changes.changed,
        changes.unchanged, changes.deleted, prepared.chunks,
    )
    for issue in prepared.quality.get("issues", []):
        logger.warning("data quality %s: %s", issue["check"], issue["message"])
    return prepared


def _report_quality_failure(ticket: BuildTicket, source: str, exc: DataQualityError) -> None:
    report = exc.report
    body = report.to_markdown() if isinstance(report, QualityReport) else f"{exc}\n"
    markdown = (
        f"# Refresh of {escape_markdown(repr(ticket.kb))} stopped: bad data\n\n"
        f"Version {ticket.version} from source {escape_markdown(repr(source))} was not built; "
        f"live version {ticket.live_version or 'none'} keeps serving. "
        "Fix the documents below (or relax the policy) and run the refresh again.\n\n"
        f"{body}"
    )
    create_markdown_artifact(
        markdown,
        key=artifact_key("quality", ticket.kb),
        description=f"Data-quality failure of {ticket.kb!r} v{ticket.version}",
    )
    get_run_logger().error("%s", exc)
