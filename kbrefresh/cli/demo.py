"""``kbrefresh demo``: the playbook scenarios on the bundled help center, durations in seconds.

Each scenario lives next to the commands it shows; this module only names them, prepares the
bundled corpus and dispatches. Add a scenario to ``SCENARIOS`` (name → module, function).
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kbrefresh.cli._common import KbOpt, app, console, errors, read_settings
from kbrefresh.cli._views import print_report, run_refresh
from kbrefresh.cli.main import print_hits
from kbrefresh.db import describe_database
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.settings import Settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "helpcenter"

# name → (module, function(settings)), imported only when asked for.
SCENARIOS: dict[str, tuple[str, str]] = {
    "canary": ("kbrefresh.cli.rollout_demo", "run_canary"),
    "ab": ("kbrefresh.cli.rollout_demo", "run_ab"),
    "monitor": ("kbrefresh.cli.monitor", "run_monitor_scenario"),
    "drift": ("kbrefresh.cli.drift_demo", "run_drift"),
    "rebrand": ("kbrefresh.cli.rebrand_demo", "run_rebrand_scenario"),
}


@app.command()
def demo(
    kb: KbOpt = "helpcenter",
    question: Annotated[str, typer.Option(help="Sample query to run at the end.")] =
        "how do I rotate my API key?",
    scenario: Annotated[str, typer.Option(
        help="refresh (monthly blue/green), canary, ab, monitor, drift, rebrand.")] = "refresh",
) -> None:
    """Run a playbook scenario on the bundled help center, on embedded defaults."""
    settings = read_settings()
    with errors():
        if scenario == "refresh":
            refresh_scenario(settings, kb, question)
            return
        if scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {scenario!r}; expected one of "
                              f"{', '.join(['refresh', *SCENARIOS])}")
        module, name = SCENARIOS[scenario]
        run: Callable[[Settings], object] = getattr(importlib.import_module(module), name)
        run(settings)


def refresh_scenario(settings: Settings, kb: str, question: str) -> None:
    """Month 1: build; load golden sets; month 2: apply the change set and refresh."""
    work = settings.data_dir / "demo" / "helpcenter"
    console.print(escape(f"database: {describe_database(settings)}"))
    copy_tree(SAMPLES / "base", work)
    console.rule("month 1: build from the bundled help center")
    print_report(run_refresh(settings, kb=kb, source=str(work), reason="demo: first build"))
    for name in ("smoke", "technical", "general"):
        loaded = load_golden(settings, kb, SAMPLES / "golden" / f"{name}.jsonl")
        console.print(f"golden set {name!r}: {loaded.loaded} queries loaded"
                      + (f", unknown doc ids {sorted(loaded.unknown_ids)}"
                         if loaded.unknown_ids else ""))
    changes = apply_change_set(SAMPLES / "next_month", work)
    console.rule(f"month 2: {changes}")
    print_report(run_refresh(settings, kb=kb, source=str(work), reason="demo: monthly refresh"))
    print_hits(settings, kb, question, 5)
    console.print("next: `kbrefresh versions --kb helpcenter`, `kbrefresh rollback --kb helpcenter`,"
                  " `kbrefresh eval --kb helpcenter`")
    if settings.tracking:
        from kbrefresh.tracking.registry import tracking_uri

        uri = tracking_uri(settings)
        console.print(escape(f"MLflow store: {uri} (browse it with "
                             f"`pip install mlflow && mlflow ui --backend-store-uri {uri}`)"))


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def apply_change_set(change_set: Path, work: Path) -> str:
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
