"""Tasks that tell operators what a run did, as Prefect markdown artifacts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kbrefresh._text import escape_markdown
from kbrefresh.build.embedding import EmbedStats
from kbrefresh.build.staging import BuildPlan
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.refresh.sequence import RefreshReport, make_report
from kbrefresh.refresh.steps import BuildTicket, PrepareResult, PublishResult
from kbrefresh.serving.routing import RouteChange
from kbrefresh.tracking.runs import BuildRecord
from tasks._common import TASK_OPTIONS, artifact_key


@task(**TASK_OPTIONS)
def report_refresh(
    ticket: BuildTicket,
    prepared: PrepareResult,
    plan: BuildPlan,
    stats: EmbedStats,
    reuse: tuple[int, int],
    published: PublishResult,
    seconds: dict[str, float],
    outcome: GateOutcome | None,
    record: BuildRecord,
    registry_warning: str | None,
) -> dict[str, Any]:
    """Publish the summary as the artifact ``kbrefresh-refresh-<kb>``; return it as a dict."""
    report = make_report(ticket, prepared, plan, stats, reuse, published, seconds,
                         outcome=outcome, record=record, registry_warning=registry_warning)
    create_markdown_artifact(
        refresh_markdown(report),
        key=artifact_key("refresh", ticket.kb),
        description=report.summary(),
    )
    get_run_logger().info("%s", report.summary())
    summary = asdict(report)
    summary["verdict"] = report.verdict.to_dict() if report.verdict else None
    return summary


def refresh_markdown(report: RefreshReport) -> str:
    """Render a refresh report for operators: what changed, what it cost, what serves now."""
    previous = f"v{report.from_version}" if report.from_version else "none"
    build = "full (first build or new fingerprint)" if report.full_build else "incremental"
    rows = [
        ("Version", f"v{report.version}{' (resumed)' if report.resumed else ''}"),
        ("Dataset tag", escape_markdown(report.dataset_tag)),
        ("Live", f"{previous} → v{report.live_version}"),
        ("Documents", (f"{report.documents} total: {report.documents_new} new, "
                       f"{report.documents_changed} changed, {report.documents_deleted} deleted")),
        ("Chunks", (f"{report.chunks} total: {report.chunks_embedded} embedded, "
                    f"{report.chunks_reused} reused, {report.chunks_removed} removed")),
        ("Texts embedded", str(report.texts_embedded)),
        ("Estimated tokens", f"{report.estimated_tokens:,}"),
        ("Build", build),
        ("Archived versions", ", ".join(f"v{v}" for v in report.archived) or "none"),
        ("Validation", escape_markdown(report.verdict.summary) if report.verdict else "not run"),
        ("MLflow run", escape_markdown(report.mlflow_run_id or "not recorded")),
        ("Registered model version", escape_markdown(report.model_version or "none")),
    ]
    rows += [("Warning", escape_markdown(w)) for w in report.warnings]
    timings = [(step, f"{value:.2f}") for step, value in report.seconds.items()]
    timings.append(("total", f"{sum(report.seconds.values()):.2f}"))
    return (
        f"# {escape_markdown(repr(report.kb))}: v{report.live_version} is live\n\n"
        + _table(("", ""), rows)
        + "\n## Timings (seconds)\n\n"
        + _table(("step", "seconds"), timings)
    )


@task(**TASK_OPTIONS)
def report_rollback(kb: str, change: RouteChange, reason: str) -> dict[str, Any]:
    """Publish the rollback as the artifact ``kbrefresh-rollback-<kb>``; return it as a dict."""
    summary = f"{kb!r}: live v{change.from_version} -> v{change.to_version} ({reason})"
    create_markdown_artifact(
        f"# {escape_markdown(repr(kb))} rolled back to v{change.to_version}\n\n"
        + _table(("", ""), [
            ("Live", f"v{change.from_version} → v{change.to_version}"),
            ("Rolled back", f"v{change.from_version}"),
            ("Reason", escape_markdown(reason)),
        ]),
        key=artifact_key("rollback", kb),
        description=summary,
    )
    return {"kb": kb, "from_version": change.from_version, "to_version": change.to_version,
            "reason": reason}


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"
