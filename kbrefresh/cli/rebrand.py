"""``kbrefresh rebrand``: apply a rename map now (impact, rebrand gate, immediate swap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kbrefresh import store
from kbrefresh.cli._common import KbOpt, app, console, err, errors, read_settings
from kbrefresh.cli._views import print_report
from kbrefresh.db import connect
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import parse_request
from kbrefresh.release import notify
from kbrefresh.retraining.rebrand import RenameMap, load_rename_map
from kbrefresh.retraining.rebrand_run import RebrandReport, record_rename_map, run_rebrand
from kbrefresh.settings import Settings


@app.command()
def rebrand(
    kb: KbOpt,
    source: Annotated[str, typer.Option(
        help="The rebranded documents: directory, .csv/.parquet file, or SQLAlchemy URL.")],
    renames: Annotated[Path, typer.Option(help="Rename map, old name → new name (JSON/YAML).")],
    query: Annotated[str | None, typer.Option(help="SQL query when --source is a URL.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Acceptance policy file (YAML/TOML).")] = None,
    record_only: Annotated[bool, typer.Option(
        "--record-only", help="Only put the map on record; the retraining check starts the "
        "rebrand when satisfaction drops critically.")] = False,
) -> None:
    """Rebrand a knowledge base now: impact report, rebrand gate, swap live at once."""
    settings = read_settings()
    with errors():
        renames_map = load_rename_map(renames)  # a bad map stops here, nothing touched
        if record_only:
            with connect(settings) as conn:
                record_rename_map(conn, store.get_kb_id(conn, kb), renames_map, source)
                conn.commit()
            console.print(escape(f"rename map of {len(renames_map.pairs)} names on record for "
                                 f"{kb!r} (source {source!r})"))
            return
        report = rebrand_now(settings, kb, source, renames_map, query=query,
                             policy_file=str(policy) if policy else None)
        announce(settings, report)


def rebrand_now(
    settings: Settings,
    kb: str,
    source: str,
    renames: RenameMap,
    *,
    query: str | None = None,
    policy_file: str | None = None,
    policy: AcceptancePolicy | None = None,
    reason: str = "urgent rebrand",
) -> RebrandReport:
    """Run the rebrand sequence with plain calls and print the impact and refresh reports."""
    request = parse_request(kb=kb, source=source, query=query, policy_file=policy_file,
                            reason=reason)
    report = run_rebrand(settings, request, renames, policy=policy)
    console.print(escape(report.impact.to_markdown()), highlight=False)
    console.print(escape(f"golden queries derived: {dict(report.golden)}"))
    print_report(report.refresh)
    return report


def announce(settings: Settings, report: RebrandReport) -> None:
    """Print the ``published`` notice and send it to the webhook when one is configured."""
    if not report.refresh.published:
        return
    notice = report.notice()
    console.rule("notification")
    console.print(escape(notice.text()), highlight=False)
    for problem in notify.send(settings, notice):
        err.print(f"[yellow]warning:[/] notification not delivered: {escape(problem)}")
