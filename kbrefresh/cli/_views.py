"""How the CLI runs a refresh with a progress bar and prints reports and verdicts."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kbrefresh.build.staging import BuildPlan
from kbrefresh.cli._common import Col, console, err, listing_table, print_json, print_table
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.verdict import Verdict, interval
from kbrefresh.refresh import sequence
from kbrefresh.refresh.request import parse_request
from kbrefresh.refresh.sequence import DirectRunner, RefreshHooks, RefreshReport
from kbrefresh.settings import Settings

VERDICT_COLUMNS = (
    Col("rule", "rule", text=True),
    Col("live", "live", justify="right"),
    Col("candidate", "value", justify="right"),
    Col("Δ", "delta", justify="right"),
    Col("CI", "ci", wide=True),
    Col("n", "n", justify="right", wide=True),
    Col("threshold", "threshold", justify="right", wide=True),
    Col("result", "result", styles=(("pass", "green"), ("FAIL", "bold red"))),
    Col("reason", "reason", text=True, wide=True),
)


class _Progress(RefreshHooks):
    """Show the plan, then an embedding progress bar.

    The bar starts only once there is a plan, so a refused source prints nothing on
    stdout: its one ``error:`` line on stderr is the whole output.
    """

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def step_finished(self, step: str, result: object) -> None:
        if step != "plan_build" or not isinstance(result, BuildPlan):
            return
        plan = result
        if plan.full_build and plan.to_embed_chunks:
            console.print(
                f"full build: {plan.to_embed_chunks} chunks to embed "
                f"(~{plan.estimated_tokens:,} tokens estimated)"
            )
        else:
            console.print(
                f"plan: {plan.unchanged + plan.reusable} chunks reused, "
                f"{plan.to_embed_chunks} to embed (~{plan.estimated_tokens:,} tokens), "
                f"{plan.replaced} replaced or deleted"
            )
        self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.bar.start()
        self.task = self.bar.add_task("embedding + loading", total=plan.to_embed_texts)

    def embed_progress(self, done: int, total: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)

    def close(self, completed: int | None = None) -> None:
        if self.bar is not None and self.task is not None:
            if completed is not None:
                self.bar.update(self.task, completed=completed)
            self.bar.stop()
        self.bar = None


def run_refresh(
    settings: Settings, *, policy: AcceptancePolicy | None = None, **options: Any
) -> RefreshReport:
    """Run the refresh sequence with plain calls, a progress bar and the plan printed.

    ``options`` are the fields of a ``RefreshRequest``; ``policy`` replaces its policy file.
    """
    request = parse_request(**options)  # every bound checked before anything is created
    progress = _Progress()
    try:
        report = sequence.run_refresh(settings, request, runner=DirectRunner(), hooks=progress,
                                      policy=policy)
    finally:
        progress.close()
    return report


def print_report(report: RefreshReport) -> None:
    if report.verdict is not None:
        print_verdict(report.verdict, report.golden)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    table = Table(title=escape(f"refresh of {report.kb!r} → version {report.version} ({report.dataset_tag})"))
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("documents", report.documents), ("documents new", report.documents_new),
        ("documents changed", report.documents_changed),
        ("documents deleted", report.documents_deleted), ("chunks in version", report.chunks),
        ("chunks embedded", report.chunks_embedded), ("chunks reused", report.chunks_reused),
        ("chunks removed (changed or deleted)", report.chunks_removed),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    print_table(table)
    if report.mlflow_run_id:
        registered = f", model version {report.model_version}" if report.model_version else ""
        console.print(escape(f"MLflow run {report.mlflow_run_id}{registered} (alias champion)"))
    was = f" (was v{report.from_version})" if report.from_version else ""
    console.print(f"live version of {escape(repr(report.kb))}: [bold]v{report.live_version}[/]{was}"
                  + (f"; archived {report.archived}" if report.archived else ""))


def verdict_json(verdict: Verdict, golden: str) -> dict[str, Any]:
    """Return the verdict as JSON-able data with stable keys."""
    return {
        "passed": verdict.passed, "first_version": verdict.first_version, "golden": golden,
        "summary": verdict.summary,
        "rules": [
            {"rule": r.name, "metric": r.metric, "slice": r.slice, "value": r.value,
             "live": r.baseline, "delta": r.delta, "ci_low": r.ci_low, "ci_high": r.ci_high,
             "ci": interval(r), "n": r.n, "threshold": r.threshold, "passed": r.passed,
             "reason": r.reason}
            for r in verdict.rules
        ],
    }


def print_verdict(verdict: Verdict, golden: str, *, wide: bool = False,
                  as_json: bool = False) -> None:
    data = verdict_json(verdict, golden)
    if as_json:
        print_json(data)
        return
    rows = [dict(r, result="pass" if r["passed"] else "FAIL") for r in data["rules"]]
    title = f"validation gate: {'PASSED' if verdict.passed else 'FAILED'} ({golden})"
    print_table(listing_table(title, VERDICT_COLUMNS, rows, wide=wide), wide=wide)
    console.print(escape(verdict.summary), highlight=False)
