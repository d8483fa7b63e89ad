"""``kbrefresh rollout``: start, watch and steer canary and A/B rollouts."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kbrefresh.cli._common import KbOpt, app, console, err, errors, read_settings
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.release import rollout
from kbrefresh.release.rollout import Transition
from kbrefresh.release.rollout_policy import RolloutPolicy, load_rollout_policy
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records

rollout_app = typer.Typer(help="Canary and A/B rollouts of a candidate version.",
                          no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
ReasonOpt = Annotated[str, typer.Option(help="Why; kept in the rollout's history.")]


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--steps {text!r} is invalid; expected percents like 5,50,100") from exc


@rollout_app.command("start")
def start_cmd(
    kb: KbOpt,
    version: Annotated[int | None, typer.Option(help="Candidate (default: newest passing).")] = None,
    strategy: Annotated[str, typer.Option(help="canary or ab.")] = "canary",
    steps: Annotated[str | None, typer.Option(help="Canary percents, e.g. 5,50,100.")] = None,
    policy: Annotated[Path | None, typer.Option(help="Rollout policy file (YAML).")] = None,
    reason: ReasonOpt = "manual rollout",
) -> None:
    """Start a canary or A/B of a candidate that passed the gate against live."""
    settings = read_settings()
    with errors():
        rules = load_rollout_policy(policy) if policy else RolloutPolicy()
        with connect(settings, autocommit=True) as conn:
            t = rollout.start(conn, kb, strategy=strategy, policy=rules, candidate=version,
                              steps=parse_steps(steps) if steps else None, reason=reason,
                              now=datetime.now(UTC))
        _after(settings, t)


def _move(kb: str, name: str, reason: str) -> None:
    settings = read_settings()
    moves = {"advance": rollout.advance, "pause": rollout.pause, "resume": rollout.resume,
             "abort": rollout.abort, "promote": rollout.promote}
    with errors():
        with connect(settings, autocommit=True) as conn:
            t = moves[name](conn, kb, now=datetime.now(UTC), reason=reason)
        _after(settings, t)


@rollout_app.command("advance")
def advance_cmd(kb: KbOpt, reason: ReasonOpt = "manual advance") -> None:
    """Move the canary to its next step now, whatever the analysis says."""
    _move(kb, "advance", reason)


@rollout_app.command("pause")
def pause_cmd(kb: KbOpt, reason: ReasonOpt = "manual pause") -> None:
    """Hold the canary at its current share until resumed."""
    _move(kb, "pause", reason)


@rollout_app.command("resume")
def resume_cmd(kb: KbOpt, reason: ReasonOpt = "manual resume") -> None:
    """Let the analysis move a paused rollout again."""
    _move(kb, "resume", reason)


@rollout_app.command("abort")
def abort_cmd(kb: KbOpt, reason: ReasonOpt = "manual abort") -> None:
    """Send every session back to live now and reject the candidate."""
    _move(kb, "abort", reason)


@rollout_app.command("promote")
def promote_cmd(kb: KbOpt, reason: ReasonOpt = "manual promotion") -> None:
    """Make the candidate live now and end the rollout."""
    _move(kb, "promote", reason)


@rollout_app.command("approve")
def approve_cmd(
    kb: KbOpt,
    comment: Annotated[str, typer.Option(help="Why; kept in the history.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    by: Annotated[str | None, typer.Option(help="Who decides (default: $USER).")] = None,
) -> None:
    """Approve (or --reject) a rollout waiting for approval; resumes the paused flow run."""
    settings = read_settings()
    who = by or os.environ.get("USER") or "operator"
    with errors():
        with connect(settings, autocommit=True) as conn:
            t = rollout.approve(conn, kb, approved=not reject, comment=comment, by=who,
                                now=datetime.now(UTC))
        _after(settings, t)
        run_id = (t.rollout.approval or {}).get("flow_run_id")
        if run_id:
            _resume_paused_run(str(run_id), not reject, comment, who)


def _resume_paused_run(run_id: str, approved: bool, comment: str, by: str) -> None:
    try:
        from kbrefresh.cli._prefect import resume_approval  # Prefect only when a run waits

        resume_approval(run_id, approved, comment, by)
        console.print(escape(f"resumed flow run {run_id}"))
    except Exception as exc:  # noqa: BLE001  (Prefect raises several kinds; the decision stands)
        err.print("[yellow]warning:[/] " + escape(
            f"decision recorded, but flow run {run_id} was not resumed ({type(exc).__name__}: "
            f"{exc}); it will see the decision when resumed or rerun"))


def _after(settings: Settings, t: Transition) -> None:
    """Print what happened; move the registry aliases and send the event if traffic moved."""
    r = t.rollout
    console.print(escape(f"rollout #{r.id} of {r.kb!r} v{r.candidate}: {t.action} -> {r.state}, "
                         f"candidate at {r.percent:g}%"))
    console.print(escape(t.detail), highlight=False)
    if settings.tracking and (warning := records.sync_aliases(settings, r.kb)):
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    if t.event and os.environ.get("PREFECT_API_URL"):
        from kbrefresh.cli._prefect import emit_kb_event

        if emit_kb_event(t.event, r.kb, t.payload()):
            console.print(escape(f"event {t.event} sent"))


@rollout_app.command("status")
def status_cmd(kb: KbOpt, events: Annotated[int, typer.Option(min=0)] = 10) -> None:
    """Show the rollout of a KB: state, steps, the last analysis and recent decisions."""
    settings = read_settings()
    with errors(), connect(settings) as conn:
        r = rollout.latest_rollout(conn, kb)
        if r is None:
            raise VersionError(f"{kb!r} has never had a rollout; start one with "
                               f"`kbrefresh rollout start --kb {kb}`")
        history = rollout.events(conn, r.id)[-events:] if events else []
    console.print(escape(
        f"rollout #{r.id} of {kb!r}: {r.strategy} of v{r.candidate} against v{r.control}; "
        f"state {r.state}; steps {', '.join(f'{s:g}%' for s in r.steps)}; "
        f"step {r.step_index + 1} since {r.step_started_at:%Y-%m-%d %H:%M:%S}; "
        f"candidate at {r.percent:g}%"))
    if r.last_analysis:
        print_analysis(r.last_analysis)
    table = Table(title="decisions")
    for col in ("when", "action", "step", "%", "by", "detail"):
        table.add_column(col, overflow="fold")
    for e in history:
        table.add_row(f"{e['at']:%H:%M:%S}", e["action"], str(e["step_index"] + 1),
                      f"{float(e['percent']):g}", escape(e["actor"]), escape(e["detail"]))
    console.print(table)


def print_analysis(analysis: dict[str, Any]) -> None:
    """Print one analysis: each check's outcome and, for an A/B, each test."""
    table = Table(title=escape(f"analysis at {analysis['percent']:g}%: "
                               f"{analysis['decision']['action']}"))
    for col in ("metric", "outcome", "candidate", "control", "limit", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"successful": "green", "inconclusive": "yellow", "failed": "bold red"}
    for c in analysis["checks"]["checks"]:
        table.add_row(escape(c["metric"]), f"[{colour[c['outcome']]}]{c['outcome']}[/]",
                      _n(c["candidate"]), _n(c["control"]), _n(c["limit"]), escape(c["detail"]))
    console.print(table)
    ab = analysis.get("ab")
    if ab:
        tests = Table(title=escape(f"A/B: {ab['decision']} ({ab['reason']})"))
        for col in ("metric", "test", "candidate", "control", "effect", "95% CI", "p", "sig."):
            tests.add_column(col, overflow="fold")
        for c in ab["comparisons"]:
            tests.add_row(c["metric"], escape(c["test"]), _n(c["candidate"]), _n(c["control"]),
                          _n(c["effect"]), f"[{_n(c['ci_low'])}, {_n(c['ci_high'])}]",
                          _n(c["p_value"]), "yes" if c["significant"] else "no")
        console.print(tests)


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
