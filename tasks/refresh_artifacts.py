"""Markdown that tells operators what a refresh did: quality failure, smoke checks, summary."""

from __future__ import annotations

from kbrefresh._text import escape_markdown
from kbrefresh.build.quality import QualityReport
from kbrefresh.errors import DataQualityError
from kbrefresh.gate.smoke import SmokeResult
from kbrefresh.models import BuildTicket
from kbrefresh.refresh.sequence import RefreshReport


def quality_markdown(ticket: BuildTicket, source: str, exc: DataQualityError) -> str:
    """Say which documents failed which check, and that live keeps serving."""
    report = exc.report
    body = report.to_markdown() if isinstance(report, QualityReport) else f"{exc}\n"
    return (
        f"# Refresh of {escape_markdown(repr(ticket.kb))} stopped: bad data\n\n"
        f"Version {ticket.version} from source {escape_markdown(repr(source))} was not built; "
        f"live version {ticket.live_version or 'none'} keeps serving. "
        "Fix the documents below (or relax the policy) and run the refresh again.\n\n"
        f"{body}"
    )


def smoke_markdown(ticket: BuildTicket, result: SmokeResult) -> str:
    """Every smoke check of the candidate with its result."""
    verdict = "passed" if result.passed else "failed"
    rows = [
        f"| {'pass' if check.passed else 'FAIL'} | {escape_markdown(check.name)} "
        f"| {escape_markdown(check.detail)} |"
        for check in result.checks
    ]
    return (
        f"# Smoke checks of {escape_markdown(repr(ticket.kb))} v{ticket.version}: {verdict}\n\n"
        "| result | check | detail |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


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
    # embed_only is part of embed_changed: the total counts the steps only.
    steps = {step: value for step, value in report.seconds.items() if step != "embed_only"}
    timings = [(step, f"{value:.2f}") for step, value in report.seconds.items()]
    timings.append(("total", f"{sum(steps.values()):.2f}"))
    return (
        f"# {escape_markdown(repr(report.kb))}: v{report.live_version} is live\n\n"
        + table(("", ""), rows)
        + "\n## Timings (seconds)\n\n"
        + table(("step", "seconds"), timings)
    )


def table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    """A two-column markdown table."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"
