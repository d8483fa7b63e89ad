"""CLI commands for retraining checks and the MLflow registry (registered on ``cli.app``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    errors,
    listing_table,
    num,
    print_json,
    print_table,
    read_settings,
)
from kbrefresh.cli._views import print_report, run_refresh
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.retraining.check import (
    SCHEDULE_DELAY_DAYS,
    CheckResult,
    load_check_policy,
    record_decision,
    run_check,
)
from kbrefresh.retraining.rebrand_run import pending_rename_map
from kbrefresh.retraining.triggers import Action
from kbrefresh.settings import Settings


@app.command(name="check")
def check_cmd(
    kb: KbOpt,
    source: Annotated[str | None, typer.Option(
        help="Directory, .csv/.parquet file, or SQLAlchemy URL (volume and quality signals).")] = None,
    query: Annotated[str | None, typer.Option(help="SQL query when --source is a URL.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Trigger thresholds file (YAML/TOML).")] = None,
    run: Annotated[bool, typer.Option("--run", help="Refresh now if the decision says so.")] = False,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure the retraining triggers of a KB, decide, and record the decision."""
    settings = read_settings()
    with errors():
        if as_json and run:
            raise ConfigError("--json prints the check only; it cannot be combined with --run")
        thresholds, options = load_check_policy(policy) if policy else (None, None)
        result = run_check(settings, kb, source=source, query=query, policy=thresholds,
                           options=options, record=False)
        if as_json:
            print_json(check_json(result))
        else:
            _print_check(result, wide=wide)
            if result.rebrand_due and not run:
                console.print(escape(f"a rename map is on record: rerun with --run (or "
                                     f"`kbrefresh rebrand --kb {kb} --source PATH --renames FILE`) "
                                     "to apply it now"))
        if run and result.rebrand_due:
            _run_pending_rebrand(settings, result, source, query)
            return
        action, delay = result.decision.action, SCHEDULE_DELAY_DAYS.get(result.decision.action)
        due_now = action in (Action.RUN_NOW, Action.WITHIN_24H)
        if run and due_now and source is None:
            raise ConfigError(f"the decision is {action.value!r}: pass --source to refresh {kb!r}")
        refreshing = run and due_now
        record_decision(settings, result, dispatched={
            "mode": "cli", "run": run, "refresh": "in-process" if refreshing else None})
        if as_json:
            return
        if refreshing and source is not None:
            print_report(run_refresh(settings, kb=kb, source=source, query=query,
                                     reason=result.retrain_reason))
        elif delay is not None:
            console.print(escape(f"would schedule a refresh in {delay:g} days (the retraining-check "
                                 "flow does on Prefect); `kbrefresh refresh` runs one now"))
        elif due_now:
            console.print("a refresh is due now: rerun with --run --source PATH_OR_URL")
        elif run:
            blocked = action is Action.SKIP_BAD_DATA
            console.print("nothing to run: " + ("bad source data blocks the retrain" if blocked
                                                else "no retrain is due"))


def _run_pending_rebrand(settings: Settings, result: CheckResult, source: str | None,
                         query: str | None) -> None:
    """The check found the rebrand overdue: apply the rename map on record now."""
    from kbrefresh.cli.rebrand import announce, rebrand_now

    with connect(settings) as conn:
        pending = pending_rename_map(conn, store.get_kb_id(conn, result.kb))
    assert pending is not None  # rebrand_due says so
    source = source or pending.source
    if source is None:
        raise ConfigError(f"a rebrand of {result.kb!r} is due but its rename map has no source on "
                          "record: pass --source")
    record_decision(settings, result, dispatched={"mode": "cli", "run": True,
                                                  "rebrand": "in-process"})
    announce(settings, rebrand_now(settings, result.kb, source, pending.renames, query=query,
                                   reason=result.retrain_reason))


SIGNAL_COLUMNS = (
    Col("signal", "signal"), Col("value", "value", justify="right"),
    Col("severity", "severity"), Col("action", "action"),
    Col("reason", "reason", text=True, wide=True),
)


def check_json(result: CheckResult) -> dict[str, Any]:
    """Return the check's decision, signals and drift as JSON-able data (stable keys)."""
    d = result.decision
    return {
        "kb": result.kb, "checked_at": result.checked_at.isoformat(),
        "decision": {"action": d.action.value, "urgency": d.urgency, "driver": d.driver.name,
                     "alert": d.alert, "summary": d.summary},
        "signals": [{"signal": s.name, "value": s.value, "severity": s.severity,
                     "action": s.action.value, "reason": s.reason} for s in d.signals],
        "drift": [{"view": v.view, "kl": v.kl, "psi": v.psi, "js": v.js,
                   "severity": v.severity, "grown": [str(g) for g in v.grown]}
                  for v in result.drift.views],
    }


def _print_check(result: CheckResult, *, wide: bool) -> None:
    data, d = check_json(result), result.decision
    rows = [dict(s, signal=f"{s['signal']} ←" if s["signal"] == d.driver.name else s["signal"])
            for s in data["signals"]]
    print_table(listing_table(f"retraining check of {result.kb!r}", SIGNAL_COLUMNS, rows,
                              wide=wide), wide=wide)
    for view in result.drift.views:
        grown = ", ".join(str(g) for g in view.grown) or "no segment grew"
        console.print(escape(f"drift by {view.view}: KL {num(view.kl)}, PSI {num(view.psi)}, "
                             f"JS {num(view.js)} ({view.severity}); {grown}"), highlight=False)
    style = "bold red" if d.alert else "bold"
    console.print(f"[{style}]decision:[/] {escape(d.summary)}", highlight=False)


registry_app = typer.Typer(help="The MLflow model registry of KB versions.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("sync")
def registry_sync(
    kb: Annotated[str | None, typer.Option("--kb", help="One KB (default: all).")] = None,
) -> None:
    """Repair the registry from the routing: champion = live, challenger = canary."""
    from kbrefresh.tracking.registry import sync_registry

    settings = read_settings()
    with errors():
        changes = sync_registry(settings, kb)
    for line in changes or ["registry already matches the routing"]:
        console.print(escape(line))


@app.command(name="compact")
def compact_cmd(
    kb: KbOpt,
    min_share: Annotated[float, typer.Option(
        min=0, help="Merge only when the rows past the main index exceed this share of it.")] = 0.0,
    lock_wait: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for a running refresh of the KB.")] = 0.0,
) -> None:
    """Merge the live version's delta and tail (rows newer than the main HNSW index) into it."""
    from kbrefresh.refresh import steps

    settings = read_settings()
    with errors(), steps.refresh_lock(settings, kb, wait_seconds=lock_wait):
        placed = steps.compact_index(settings, kb, min_share=min_share)
    if placed.action == "compacted":
        console.print(f"merged {placed.delta_rows} rows of {escape(kb)!r} into the main HNSW "
                      f"index (up to version {placed.main_upto}) in {placed.index_seconds:.1f} s")
    else:
        console.print(f"nothing merged: {placed.delta_rows} rows of {escape(kb)!r} are past the "
                      "main index")
