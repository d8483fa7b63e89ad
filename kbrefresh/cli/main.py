"""The ``kbrefresh`` command line: demo, refresh, status, query, versions, rollback."""

from __future__ import annotations

from pathlib import Path
from textwrap import shorten
from typing import Annotated

import typer
from rich.markup import escape

from kbrefresh import store
from kbrefresh.cli._common import (
    Col,
    JsonOpt,
    KbOpt,
    WideOpt,
    app,
    console,
    err,
    errors,
    read_settings,
    show,
)
from kbrefresh.cli._views import print_report, print_verdict, run_refresh
from kbrefresh.db import connect, describe_database
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import load_golden, run_gate
from kbrefresh.gate.policy import load_policy
from kbrefresh.gate.pruning import prune_golden
from kbrefresh.models import ChunkerConfig
from kbrefresh.serving import routing
from kbrefresh.serving.lookup import kb_overview, search_live
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records

__all__ = ["app", "main"]



HIT_COLUMNS = (
    Col("#", "rank", justify="right"), Col("similarity", "similarity", justify="right"),
    Col("document", "doc_id"), Col("section", "section", wide=True), Col("text", "text", text=True),
)


def print_hits(settings: Settings, kb: str, text: str, k: int, *, wide: bool = False,
                as_json: bool = False) -> None:
    hits = search_live(settings, kb, text, k=k)
    rows = [
        {"rank": rank, "similarity": round(hit.similarity, 4), "doc_id": hit.doc_id,
         "version": hit.version, "section": str(hit.metadata.get("section", "")),
         "text": hit.content if as_json else shorten(hit.content, 100, placeholder=" …")}
        for rank, hit in enumerate(hits, start=1)
    ]
    title = f"{text!r} in {kb!r} v{hits[0].version if hits else '?'}"
    show(title, HIT_COLUMNS, rows, wide=wide, as_json=as_json)


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
        help="Text embedded per chunk: {title}, {section}, {category}, {version}, {text}.")] =
        ChunkerConfig().header_template,
    keep: Annotated[int | None, typer.Option(help="Versions to keep (live included).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running refresh.")] = 0.0,
    policy: Annotated[Path | None, typer.Option(help="Acceptance policy file (YAML/TOML).")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        help="Token budget of this run (plan estimate, checked before each batch).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="Time budget of this run in seconds (checked before each batch).")] = None,
) -> None:
    """Refresh a knowledge base from a source: embed what changed, validate, swap live."""
    settings = read_settings()
    with errors():
        report = run_refresh(
            settings, kb=kb, source=source, query=query, max_shrink=max_shrink,
            max_age_days=max_age_days, max_chars=max_chars, overlap_chars=overlap_chars,
            header_template=header_template, keep_versions=keep, lock_wait_seconds=wait,
            policy_file=str(policy) if policy else None, reason="refresh",
            max_tokens=max_tokens, max_seconds=max_seconds,
        )
        print_report(report)


golden_app = typer.Typer(help="Golden query sets used by the validation gate.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")


@golden_app.command("load")
def golden_load(
    kb: KbOpt,
    files: Annotated[list[Path], typer.Argument(help="JSONL, CSV or YAML files.")],
) -> None:
    """Store golden queries for a KB (each file replaces the sets it names)."""
    settings = read_settings()
    with errors():
        for path in files:
            report = load_golden(settings, kb, path)
            console.print(escape(f"{path}: {report.loaded} queries in sets {report.sets}"))
            for doc_id, rows in sorted(report.unknown_ids.items()):
                err.print("[yellow]warning:[/] " + escape(f"doc id {doc_id!r} (queries {rows}) is not in {kb!r}"))


@golden_app.command("prune")
def golden_prune(
    kb: KbOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, archive nothing.")] = False,
) -> None:
    """Archive golden queries answerable only by documents the source deleted."""
    settings = read_settings()
    with errors():
        pruned = prune_golden(settings, kb, dry_run=dry_run)
    for q in pruned:
        console.print(escape(f"{q.set_name}/{q.slice}: {q.query!r}"), highlight=False)
    verb = "would archive" if dry_run else "archived"
    console.print(escape(f"{kb!r}: {verb} {len(pruned)} golden quer{'y' if len(pruned) == 1 else 'ies'}"
                         " answerable only by deleted documents"))


@app.command(name="eval")
def eval_cmd(
    kb: KbOpt,
    version: Annotated[int | None, typer.Option(help="Version to judge (default: live).")] = None,
    against: Annotated[str, typer.Option(help="'live', 'none' or a version number.")] = "live",
    policy: Annotated[Path | None, typer.Option(help="Acceptance policy file (YAML/TOML).")] = None,
    golden_set: Annotated[list[str] | None, typer.Option("--set", help="Golden set(s) to use.")] = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a version against live (or another version) and print the gate's verdict."""
    settings = read_settings()
    with errors():
        baseline: int | str | None = _against(against)
        acceptance = load_policy(policy) if policy else None
        target = version
        if target is None:
            with connect(settings) as conn:
                target = routing.live_version(conn, store.get_kb_id(conn, kb))
            if target is None:
                raise ConfigError(f"{kb!r} has no live version; pass --version")
        outcome = run_gate(settings, kb, target, against=baseline, sets=golden_set,
                           policy=acceptance)
    print_verdict(outcome.verdict, outcome.evaluation.golden, wide=wide, as_json=as_json)
    if not outcome.verdict.passed:
        raise typer.Exit(1)


def _against(value: str) -> int | str | None:
    if value in ("live", "none"):
        return None if value == "none" else "live"
    if value.isdigit():
        return int(value)
    raise ConfigError(f"--against {value!r} is not 'live', 'none' or a version number")


STATUS_COLUMNS = (
    Col("kb", "kb"), Col("live", "live_version", justify="right"), Col("dataset", "dataset_tag"),
    Col("chunks", "chunks", justify="right"), Col("documents", "documents", justify="right"),
    Col("live since", "live_at", wide=True), Col("canary", "canary_version", wide=True),
    Col("canary %", "canary_percent", wide=True, justify="right"),
    Col("versions", "versions", justify="right"),
)


@app.command()
def status(wide: WideOpt = False, as_json: JsonOpt = False) -> None:
    """Show every knowledge base, its live version and counts."""
    settings = read_settings()
    with errors():
        overview = kb_overview(settings)
    rows = [{"kb": r.name, "live_version": r.live_version, "dataset_tag": r.dataset_tag,
             "chunks": r.counts.get("chunks"), "documents": r.counts.get("documents"),
             "live_at": r.live_at, "canary_version": r.canary_version,
             "canary_percent": r.canary_percent, "versions": r.versions} for r in overview]
    if not as_json:
        console.print(escape(f"database: {describe_database(settings)}"))
    show(None, STATUS_COLUMNS, rows, wide=wide, as_json=as_json)


@app.command(name="query")
def query_cmd(
    text: Annotated[str, typer.Argument(help="What to search for.")],
    kb: Annotated[str | None, typer.Option("--kb", help="Knowledge base (default: the only one).")] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100)] = 5,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search the live version of a knowledge base."""
    settings = read_settings()
    with errors():
        name = kb or _only_kb(settings)
        print_hits(settings, name, text, k, wide=wide, as_json=as_json)


def _only_kb(settings: Settings) -> str:
    with connect(settings) as conn:
        names = store.list_kbs(conn)
    if len(names) != 1:
        raise ConfigError(f"pass --kb: there are {len(names)} knowledge bases {names!r}")
    return names[0]


VERSION_COLUMNS = (
    Col("version", "version", justify="right"), Col("status", "status"),
    Col("dataset", "dataset_tag"), Col("embedder", "embedder", wide=True),
    Col("chunks", "chunks", justify="right"), Col("embedded", "embedded", justify="right", wide=True),
    Col("reused", "reused", justify="right", wide=True),
    Col("removed", "removed", justify="right", wide=True),
    Col("created", "created_at", wide=True), Col("note", "error", text=True),
)


@app.command()
def versions(kb: KbOpt, wide: WideOpt = False, as_json: JsonOpt = False) -> None:
    """List the versions of a knowledge base with status and counts."""
    settings = read_settings()
    with errors(), connect(settings) as conn:
        found = store.list_versions(conn, store.get_kb_id(conn, kb))
    rows = []
    for r in found:
        c, fp = r.counts, r.fingerprint
        rows.append({"version": r.version, "status": r.status.value,
                     "dataset_tag": r.dataset_tag,
                     "embedder": f"{fp['provider']}:{fp['model']}:{fp['dims']}",
                     **{key: c.get(key) for key in ("chunks", "embedded", "reused", "removed")},
                     "created_at": r.created_at, "error": r.error})
    show(f"versions of {kb!r}", VERSION_COLUMNS, rows, wide=wide, as_json=as_json)


HISTORY_COLUMNS = (
    Col("when", "changed_at"), Col("action", "action"),
    Col("from", "from_version", justify="right"), Col("to", "to_version", justify="right"),
    Col("reason", "reason", text=True), Col("by", "changed_by", wide=True),
    Col("flow run", "flow_run_id", wide=True),
)


@app.command()
def history(kb: KbOpt, limit: Annotated[int, typer.Option(min=1)] = 20,
            wide: WideOpt = False, as_json: JsonOpt = False) -> None:
    """Show the routing history (swaps and rollbacks) of a knowledge base."""
    settings = read_settings()
    with errors(), connect(settings) as conn:
        found = routing.history(conn, store.get_kb_id(conn, kb), limit)
    rows = [{key: getattr(r, key) for key in ("changed_at", "action", "from_version", "to_version",
                                              "reason", "changed_by", "flow_run_id")} for r in found]
    show(f"routing history of {kb!r}", HISTORY_COLUMNS, rows, wide=wide, as_json=as_json)


@app.command(name="rollback")
def rollback_cmd(
    kb: KbOpt,
    to: Annotated[int | None, typer.Option("--to", help="Version to go back to.")] = None,
    reason: Annotated[str, typer.Option()] = "manual rollback",
) -> None:
    """Route a knowledge base back to its previous (or a given) kept version."""
    settings = read_settings()
    with errors(), connect(settings, autocommit=True) as conn:
        change = routing.rollback(conn, store.get_kb_id(conn, kb), kb, to_version=to, reason=reason)
    console.print(f"{escape(repr(kb))}: live version {change.from_version} → [bold]{change.to_version}[/]")
    if settings.tracking and (warning := records.sync_aliases(settings, kb)):
        err.print(f"[yellow]warning:[/] {escape(warning)}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


