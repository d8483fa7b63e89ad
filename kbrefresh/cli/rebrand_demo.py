"""``kbrefresh demo --scenario rebrand``: the urgent rebrand on the bundled help center.

Durations are real seconds. Satisfaction is simulated: each search is rated through the
``Retriever`` (2 when a user who typed the new name is answered with the old one, else 5), so it drops when users switch to the new name and recovers after the swap.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from rich.markup import escape

from kbrefresh import store
from kbrefresh.cli._common import console, errors
from kbrefresh.cli._views import print_report, run_refresh
from kbrefresh.cli.demo import SAMPLES, copy_tree
from kbrefresh.cli.rebrand import announce, rebrand_now
from kbrefresh.db import connect, describe_database
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.retraining.check import CheckOptions, planned_events, run_check
from kbrefresh.retraining.rebrand import (
    RenameMap,
    load_rename_map,
    parse_rename_map,
    write_rebranded_copy,
)
from kbrefresh.retraining.rebrand_run import record_rename_map
from kbrefresh.serving.retriever import Retriever
from kbrefresh.settings import Settings

GOLDEN = SAMPLES / "golden"
ROUNDS = 2  # each of the 21 bundled rebrand queries asked twice per phase: 42 ratings


def run_rebrand_scenario(settings: Settings, kb: str = "helpcenter-rebrand") -> None:
    """Build, rename (satisfaction drops), check says now, rebrand, satisfaction recovers."""
    started = time.perf_counter()
    work = settings.data_dir / "demo" / kb
    renames = load_rename_map(GOLDEN / "rename_map.json")
    new_queries = [json.loads(line)["query"] for line in
                   (GOLDEN / "rebrand.jsonl").read_text("utf-8").splitlines() if line.strip()]
    inverse = parse_rename_map({new: old for old, new in renames.pairs})
    old_queries = [inverse.rewrite(q) for q in new_queries]
    console.print(escape(f"database: {describe_database(settings)}"))
    with errors():
        copy_tree(SAMPLES / "base", work / "docs")
        console.rule("v1: the help center as it is (product name: Nimbus Desk)")
        print_report(run_refresh(settings, kb=kb, source=str(work / "docs"),
                                 reason="demo: first build"))
        for name in ("smoke", "technical", "general", "rebrand"):
            load_golden(settings, kb, GOLDEN / f"{name}.jsonl")
        t0 = datetime.now(UTC)
        before = _ask(settings, kb, old_queries, renames)
        split = datetime.now(UTC)
        console.rule("marketing renames the product: users now ask for Stratus Desk")
        renamed = _ask(settings, kb, new_queries, renames)
        _checkpoint(settings, kb, renames, t0, split, before, renamed)
        console.rule("urgent rebrand: impact, rebrand gate, swap")
        write_rebranded_copy(work / "docs", work / "rebranded", renames)
        swap_started = time.perf_counter()
        report = rebrand_now(settings, kb, str(work / "rebranded"), renames,
                             reason="demo: urgent rebrand")
        console.print(f"rebrand took {time.perf_counter() - swap_started:.1f} s: "
                      f"{escape(report.headline())}")
        announce(settings, report)
        console.rule("after the swap: the same users, new and old names")
        after = _ask(settings, kb, new_queries + old_queries, renames)
    console.print(escape(
        f"simulated satisfaction (1-5): {before:.2f} before the rename → {renamed:.2f} after it"
        f" → {after:.2f} after the rebrand; scenario took {time.perf_counter() - started:.1f} s"),
        highlight=False)


def _checkpoint(settings: Settings, kb: str, renames: RenameMap, t0: datetime, split: datetime,
                before: float, renamed: float) -> None:
    """Record the map, run the retraining check over the two phases, show its decision."""
    with connect(settings) as conn:
        record_rename_map(conn, store.get_kb_id(conn, kb), renames, None)
        conn.commit()
    now = datetime.now(UTC)
    window, baseline = (now - split).total_seconds(), (split - t0).total_seconds() + 1
    console.print(f"satisfaction {before:.2f} → {renamed:.2f}; retraining check over the last "
                  f"{window:.1f} s against the {baseline:.1f} s before")
    options = CheckOptions(satisfaction_window_days=window / 86400,
                           satisfaction_baseline_days=baseline / 86400, golden=False)
    check = run_check(settings, kb, source=None, options=options, now=now)
    console.print(escape(f"decision: {check.decision.summary}"), highlight=False)
    events = [e.event for e in planned_events(check, None, request_retrain=True)]
    console.print(escape(f"rename map on record: {check.rename_pending}; rebrand due: "
                         f"{check.rebrand_due}; events the check sends: {', '.join(events)}"))


def _ask(settings: Settings, kb: str, queries: list[str], renames: RenameMap) -> float:
    """Search every query ROUNDS times and rate it; return the mean rating."""
    ratings = []
    with Retriever(kb, settings=settings) as retriever:
        for round_ in range(ROUNDS):
            for i, query in enumerate(queries):
                result = retriever.search(query, session_id=f"user-{round_}-{i}")
                top = result.hits[0].content if result.hits else ""
                # Asked with the new name, answered with the old one: a confused user.
                confused = not renames.mentions(query) and bool(renames.mentions(top))
                rating = 2 if confused else 5
                retriever.feedback(result.query_id, rating=rating)
                ratings.append(rating)
        retriever.flush()
    return sum(ratings) / len(ratings)


__all__ = ["run_rebrand_scenario"]
