"""``kbrefresh demo --scenario canary|ab``: rollouts on the bundled help center, in seconds.

Traffic is simulated (``release.simulate``): sessions ask the golden questions through the
real ``Retriever`` and rate each answer by whether a relevant document came back. Policy
durations are scaled from hours and days down to seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql
from rich.markup import escape

from kbrefresh import store
from kbrefresh.cli._common import console
from kbrefresh.cli._views import run_refresh
from kbrefresh.cli.demo import SAMPLES, apply_change_set, copy_tree
from kbrefresh.cli.rollout import print_analysis
from kbrefresh.db import connect
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.release import rollout
from kbrefresh.release.candidate import chunking_fields, stage_candidate
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.release.simulate import Question, load_questions, simulate_traffic
from kbrefresh.serving.retriever import Retriever
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records

# Scaled: seconds instead of hours; samples a demo can reach in a few hundred sessions.
# At 5 % the candidate has a few dozen searches: a rate over its limit waits for more
# traffic until the binomial test is sure (`release.analysis`).
CANARY_POLICY = RolloutPolicy(steps=(5, 50, 100), min_step_seconds=2, min_samples=20,
                              min_feedback=10, min_golden_accuracy=0.5)
AB_POLICY = RolloutPolicy(ab_seconds=3, ab_min_samples=300, min_samples=20, min_feedback=10,
                          min_golden_accuracy=0.5)
# The demo's starting point is built without a baseline comparison: it is only "what was live".
BASELINE_GATE = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
ROUTING_TTL = 0.5
SESSIONS_PER_ROUND = 150


def run_canary(settings: Settings) -> None:
    """A good candidate ramped 5 → 50 → 100 and promoted; a damaged one aborted."""
    _canary(settings, "helpcenter-canary", settings.data_dir / "demo" / "helpcenter-canary",
            _questions())


def run_ab(settings: Settings) -> None:
    """Contextual headers against bare chunks, 50/50, the winner by a significance test."""
    _ab(settings, "helpcenter-ab", settings.data_dir / "demo" / "helpcenter-ab", _questions())


def _questions() -> list[Question]:
    return load_questions(sorted((SAMPLES / "golden").glob("[gst]*.jsonl")))


def _setup(settings: Settings, kb: str, work: Path, chunker: ChunkerConfig | None = None) -> None:
    copy_tree(SAMPLES / "base", work)
    console.rule(f"{kb}: live version from the bundled help center")
    report = run_refresh(settings, kb=kb, source=str(work), reason="demo: baseline",
                         policy=BASELINE_GATE, **chunking_fields(chunker))
    console.print(escape(report.summary()))
    for name in ("smoke", "technical", "general"):
        load_golden(settings, kb, SAMPLES / "golden" / f"{name}.jsonl")


def _stage(settings: Settings, kb: str, work: Path, what: str,
           chunker: ChunkerConfig | None = None) -> int:
    console.rule(f"{kb}: candidate {what}")
    staged = stage_candidate(settings, kb, str(work), chunker=chunker)
    console.print(escape(f"v{staged.version} passed the gate and is staged (not live): "
                         f"{staged.summary}"))
    with Retriever(kb, settings=settings, version=staged.version) as pinned:
        hit = pinned.search("how do I rotate my API key?", k=1, session_id="staging-smoke")
    console.print(escape(f"staging smoke test on v{staged.version}: 'how do I rotate my API "
                         f"key?' -> {hit.hits[0].doc_id if hit.hits else 'nothing'}"))
    return staged.version


def _drive(settings: Settings, kb: str, questions: list[Question], seed: int) -> rollout.Transition:
    """Send rounds of simulated sessions and analyse after each, until the rollout ends."""
    with Retriever(kb, settings=settings, routing_ttl_seconds=ROUTING_TTL) as retriever:
        for round_no in range(1, 40):
            traffic = simulate_traffic(retriever, questions, sessions=SESSIONS_PER_ROUND,
                                       seed=seed + round_no, prefix=f"{kb}-r{round_no}")
            time.sleep(ROUTING_TTL)  # demo pacing: let step timers and the routing cache move
            with connect(settings, autocommit=True) as conn:
                t = rollout.run_step(conn, kb, now=datetime.now(UTC))
            console.print(escape(f"round {round_no}: {traffic.line()}"))
            if t.analysis:
                print_analysis(t.analysis)
            console.print(escape(f"-> {t.action}: {t.detail}"), highlight=False)
            if t.action in ("advance", "promote", "abort", "keep_live") and settings.tracking:
                records.sync_aliases(settings, kb)
            if t.rollout.state not in rollout.ACTIVE:
                return t
    raise RuntimeError("the demo rollout did not finish in 40 rounds")


def _start(settings: Settings, kb: str, strategy: str, policy: RolloutPolicy) -> None:
    with connect(settings, autocommit=True) as conn:
        if rollout.active_rollout(conn, kb):  # a demo interrupted earlier
            rollout.abort(conn, kb, now=datetime.now(UTC), reason="demo restarted")
        t = rollout.start(conn, kb, strategy=strategy, policy=policy, now=datetime.now(UTC),
                          reason=f"demo {strategy}")
    console.print(escape(f"rollout #{t.rollout.id}: {t.detail}"))


def _canary(settings: Settings, kb: str, work: Path, questions: list[Question]) -> None:
    _setup(settings, kb, work)
    console.print(escape(apply_change_set(SAMPLES / "next_month", work)))
    good = _stage(settings, kb, work, "from next month's documents")
    _start(settings, kb, "canary", CANARY_POLICY)
    t = _drive(settings, kb, questions, seed=100)
    console.print(f"[bold]v{good}: {t.rollout.state}[/]")
    # Damage: a re-chunked candidate (its own chunk table) passes the gate, then the table
    # disappears under the readers, as a botched migration would: every search it serves fails.
    bad = _stage(settings, kb, work, "re-chunked (its table will be damaged after the gate)",
                 chunker=ChunkerConfig(max_chars=1000, overlap_chars=100))
    table = _table(settings, kb, bad)
    _start(settings, kb, "canary", CANARY_POLICY)
    with connect(settings, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(table), sql.Identifier(f"{table}_damaged")))
    try:
        t = _drive(settings, kb, questions, seed=200)
    finally:
        with connect(settings, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(f"{table}_damaged"), sql.Identifier(table)))
    console.print(f"[bold]v{bad}: {t.rollout.state}[/]; next: "
                  f"`kbrefresh rollout status --kb {kb}`, `kbrefresh history --kb {kb}`")


def _table(settings: Settings, kb: str, version: int) -> str:
    with connect(settings) as conn:
        return store.fingerprint_for_version(conn, store.get_kb_id(conn, kb), version).table


def _ab(settings: Settings, kb: str, work: Path, questions: list[Question]) -> None:
    # Live embeds bare chunk text; the candidate adds the contextual header (title, section),
    # as the drift scenario's profile does. Which one do users prefer?
    _setup(settings, kb, work, chunker=ChunkerConfig(header_template="{text}"))
    version = _stage(settings, kb, work, "with contextual headers")
    _start(settings, kb, "ab", AB_POLICY)
    t = _drive(settings, kb, questions, seed=300)
    console.print(f"[bold]A/B of v{version}: {t.rollout.state}[/]; next: "
                  f"`kbrefresh rollout status --kb {kb}`")
