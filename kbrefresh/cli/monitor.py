"""CLI commands after the swap: monitor, restore, notify test, and the monitor demo."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kbrefresh import store
from kbrefresh.cli._common import KbOpt, app, console, err, errors, read_settings
from kbrefresh.db import connect
from kbrefresh.release.archive import restore_version
from kbrefresh.release.notify import Notice, send
from kbrefresh.release.policy import ReleasePolicy, load_release_policy
from kbrefresh.release.report import chart, history, notice_for
from kbrefresh.release.watch import CheckResult, run_monitor_check
from kbrefresh.settings import Settings

PolicyOpt = Annotated[Path | None, typer.Option("--policy", help="Release policy (YAML/TOML).")]


@app.command(name="monitor")
def monitor_cmd(
    kb: KbOpt,
    policy: PolicyOpt = None,
    act: Annotated[bool, typer.Option(
        "--act/--report-only", help="Roll back or prove as the policy says.")] = True,
) -> None:
    """Run one post-deploy check of the live version now (as the scheduled flow does)."""
    settings = read_settings()
    with errors():
        rules = load_release_policy(policy) if policy else ReleasePolicy()
        result = run_monitor_check(settings, kb, policy=rules, now=datetime.now(UTC), act=act)
        print_check(settings, result)
        notice = notice_for(result)
        if notice is not None:
            for problem in send(settings, notice):
                err.print(f"[yellow]warning:[/] {escape(problem)}")


def print_check(settings: Settings, result: CheckResult) -> None:
    if result.judgement is not None:
        table = Table(title=escape(f"post-deploy check of {result.kb!r} v{result.version}"))
        for col in ("criterion", "outcome", "detail"):
            table.add_column(col, overflow="fold")
        for c in result.judgement.criteria:
            style = {"fail": "bold red", "warn": "yellow", "pass": "green"}.get(c.outcome, "dim")
            table.add_row(escape(c.name), f"[{style}]{c.outcome}[/]", escape(c.message))
        console.print(table)
        console.print(chart(history(settings, result.kb)), highlight=False)
    style = "bold red" if result.action == "rolled_back" else "bold"
    console.print(f"[{style}]{escape(result.summary())}[/]", highlight=False)


@app.command(name="restore")
def restore_cmd(
    kb: KbOpt,
    version: Annotated[int, typer.Option("--version", min=1, help="Archived version.")],
    force: Annotated[bool, typer.Option("--force", help="Publish without the gate.")] = False,
) -> None:
    """Bring an archived version back (as a new version) through the gate, or live with --force."""
    settings = read_settings()
    with errors():
        result = restore_version(settings, kb, version, force=force)
    console.print(escape(result.summary))


notify_app = typer.Typer(help="Notifications (webhook and Prefect blocks).", no_args_is_help=True)
app.add_typer(notify_app, name="notify")


@notify_app.command("test")
def notify_test(kb: KbOpt = "helpcenter") -> None:
    """Send a test notice to the configured webhook (KBREFRESH_NOTIFY_WEBHOOK_URL)."""
    settings = read_settings()
    if settings.notify_webhook_url is None and not settings.notify_blocks:
        err.print("[bold red]error:[/] nothing to notify: set KBREFRESH_NOTIFY_WEBHOOK_URL "
                  "(and KBREFRESH_NOTIFY_BLOCKS for Prefect blocks, sent by the flows)")
        raise typer.Exit(1)
    problems = send(settings, Notice("test", kb, {}, "kbrefresh notify test"))
    for problem in problems:
        err.print(f"[bold red]error:[/] {escape(problem)}")
    if problems:
        raise typer.Exit(1)
    console.print("test notice delivered")


def run_monitor_scenario(settings: Settings, kb: str = "helpcenter-monitor") -> None:
    """Demo: publish a bad version, let the scaled-down monitor catch and roll it back.

    Durations are scaled: a "2 hour" check interval is 2 seconds of a simulated clock.
    """
    from kbrefresh.cli._views import print_report, run_refresh
    from kbrefresh.cli.demo import SAMPLES, copy_tree

    policy = ReleasePolicy(first_day_interval=timedelta(seconds=2),
                           first_day=timedelta(seconds=24), daily_interval=timedelta(seconds=24),
                           validation_period=timedelta(seconds=168), min_searches=20)
    work = settings.data_dir / "demo" / kb
    with errors():
        copy_tree(SAMPLES / "base", work)
        console.rule("v1: build and serve")
        print_report(run_refresh(settings, kb=kb, source=str(work), reason="demo: first build"))
        _traffic(settings, kb, datetime.now(UTC) - timedelta(seconds=30), failures=0.0)
        (work / "general" / "billing" / "vat-tax.html").unlink(missing_ok=True)
        console.rule("v2: publish (a bad deploy, as the monitor will find)")
        print_report(run_refresh(settings, kb=kb, source=str(work), reason="demo: bad deploy"))
        published = datetime.now(UTC)
        _traffic(settings, kb, published, failures=0.08)
        console.rule("monitor check at +2 h (scaled to +2 s): 8% of searches failed")
        result = run_monitor_check(settings, kb, policy=policy, now=published + timedelta(seconds=2))
        print_check(settings, result)
        notice = notice_for(result)
        if notice is not None:
            console.print(escape(notice.text()), highlight=False)


def _traffic(settings: Settings, kb: str, start: datetime, *, failures: float) -> None:
    """Log 100 simulated chatbot searches of the live version, ``failures`` of them failed."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s",
                            (kb_id,)).fetchone()
        assert live is not None
        n_failed = round(100 * failures)
        conn.cursor().executemany(
            "INSERT INTO query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
            " top_doc_ids, top_similarity, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(uuid.uuid4(), kb_id, start + timedelta(milliseconds=10 * i), f"s{i}", f"demo {i}",
              live["live_version"], 12.0, [] if i < n_failed else ["general/billing/invoices"],
              None if i < n_failed else 0.6, "QueryCanceled" if i < n_failed else None)
             for i in range(100)])
        conn.commit()
