"""``kbrefresh demo --scenario drift``: drift-biased re-embedding on the bundled help center.

A simulated query stream (the real ``Retriever``, so sketches and the query log are the
production ones) shifts technical questions from 20% to 40%, and technical askers are less
satisfied; the retraining check detects the drift and names the segment; ``run_reembed``
(what the ``drift-reembed`` flow runs) re-embeds the segment with its profile and trains
its adapter; the candidate is canaried 10 → 50 → 100 with the step time scaled to seconds.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import sql
from rich.markup import escape
from scipy.stats import binomtest

from kbrefresh import store
from kbrefresh.cli._common import console
from kbrefresh.cli._views import run_refresh
from kbrefresh.cli.demo import SAMPLES, copy_tree
from kbrefresh.cli.reembed import print_reembed
from kbrefresh.cli.rollout_demo import BASELINE_GATE, _drive, _start
from kbrefresh.db import connect
from kbrefresh.errors import GateFailed
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.gate.segment import SegmentPolicy, SegmentVerdict, rejudge, smallest_p_value
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.release.simulate import Question, load_questions
from kbrefresh.retraining.check import planned_events, run_check
from kbrefresh.retraining.reembed import run_reembed
from kbrefresh.retraining.reembed_request import SAMPLE_PROFILE
from kbrefresh.retraining.triggers import TriggerPolicy
from kbrefresh.serving.retriever import Retriever
from kbrefresh.settings import Settings

KB = "helpcenter-drift"
# The playbook's canary 10 → 50 → 100, two days per step scaled to two seconds.
DEMO_ROLLOUT = RolloutPolicy(steps=(10, 50, 100), min_step_seconds=2, min_samples=20,
                             min_feedback=10, min_golden_accuracy=0.5)
# The default segment gate cannot pass on the bundled golden set: live already finds all
# but 4 or 5 of its 82 technical queries (HNSW builds differ by a query), so the exact
# McNemar p is at least 0.5^4 = 0.0625 or 0.5^5 = 0.031 (measured and printed by the demo),
# and one or two of ~87 general queries are lost (-1.1 to -2.3 points). The demo's segment
# gate is looser and says why; the build gate is the drift-reembed default.
DEMO_SEGMENT_POLICY = SegmentPolicy(alpha=0.15, max_other_drop=0.03)
# 20% → 40% over two categories is KL ≈ 0.1, at the default moderate threshold; the demo
# alarms from 0.05 so the measured share (top documents, ~38%) is detected.
DEMO_TRIGGERS = TriggerPolicy(drift_moderate_kl=0.05)


def run_drift(settings: Settings) -> None:
    """Drift detected and named → drift-reembed → held-out hit@5 before/after → canary."""
    work = settings.data_dir / "demo" / KB
    copy_tree(SAMPLES / "base", work)
    console.rule(f"{KB}: live version (bare chunks, one chunking for every document)")
    report = run_refresh(settings, kb=KB, source=str(work), reason="demo: baseline",
                         header_template="{text}", policy=BASELINE_GATE)
    console.print(escape(report.summary()))
    for name in ("smoke", "technical", "general"):
        load_golden(settings, KB, SAMPLES / "golden" / f"{name}.jsonl")
    technical = load_questions([SAMPLES / "golden" / "technical.jsonl"])
    general = load_questions([SAMPLES / "golden" / "general.jsonl"])
    now = datetime.now(UTC)
    console.rule("simulated query stream: technical 20% (last month) → 40% (this week)")
    _stream(settings, technical, general, share=0.2, n=500, days=(7, 35), now=now, seed=1)
    _stream(settings, technical, general, share=0.4, n=250, days=(0, 7), now=now, seed=2,
            technical_rating=3)
    result = run_check(settings, KB, source=str(work), now=now, policy=DEMO_TRIGGERS)
    drift = result.drift
    kl = f"{drift.kl:.2f}" if drift.kl is not None else f"n/a ({drift.reason})"
    console.print(escape(f"drift: KL {kl} ({drift.severity}), grown segments "
                         f"{[str(g) for g in drift.grown]}; decision: {result.decision.summary}"))
    events = [e.event for e in planned_events(result, str(work), request_retrain=False)]
    console.print(escape(f"events: {events}"))
    segment = drift.segment or "technical"
    console.rule(f"drift-reembed of segment {segment!r} (profile {Path(SAMPLE_PROFILE).name})")
    try:
        reembedded = run_reembed(settings, KB, segment, profile_file=SAMPLE_PROFILE, seed=0,
                                 say=console.print, segment_policy=DEMO_SEGMENT_POLICY,
                                 trigger={"divergence": drift.kl, "urgency": drift.severity})
    except GateFailed as exc:  # a rejection is an outcome of the scenario, not a crash
        console.print(escape(f"rejected: {exc}"))
        if isinstance(exc.verdict, dict) and isinstance(exc.verdict.get("segment"), dict):
            _explain_looser_gate(SegmentVerdict.from_dict(exc.verdict["segment"]))
        console.print("[bold]no canary: the live version keeps serving[/]")
        return
    print_reembed(reembedded)
    _explain_looser_gate(reembedded.verdict)
    console.rule(f"canary of v{reembedded.version}: 10% → 50% → 100%")
    _start(settings, KB, "canary", DEMO_ROLLOUT)
    t = _drive(settings, KB, technical + general, seed=500)
    console.print(f"[bold]v{reembedded.version}: {t.rollout.state}[/]; next: "
                  f"`kbrefresh rollout status --kb {KB}`, `kbrefresh history --kb {KB}`")


def _explain_looser_gate(verdict: SegmentVerdict) -> None:
    """Say what the default segment gate makes of this candidate, and why it cannot pass here."""
    strict = rejudge(verdict, SegmentPolicy())
    t = verdict.target
    misses = round(t.n * (1 - t.hit_before))
    floor = smallest_p_value(t)
    console.print(escape(
        f"demo segment gate: alpha {DEMO_SEGMENT_POLICY.alpha}, other segments may lose "
        f"{DEMO_SEGMENT_POLICY.max_other_drop * 100:g} points (defaults 0.05 and 0); the build "
        "gate is drift-reembed's default (per-slice rules; the slice-gap rule gives way to the "
        "segment gate)"))
    console.print(escape(
        f"default segment gate: {'passed' if strict.passed else 'rejected'}"
        + ("" if strict.passed else f" ({'; '.join(strict.reasons)})")))
    alpha = SegmentPolicy().alpha
    found = (f"live finds {t.n - misses} of the {t.n} {verdict.segment!r} golden queries in "
             f"its top 5, so at most {misses} can improve")
    if floor >= alpha:
        console.print(escape(
            f"why it cannot pass on the bundled golden set: {found} and the exact McNemar p "
            f"is at least 0.5^{misses} = {floor:.4f} >= {alpha}; a bigger labelled set for the "
            "segment is what it needs"))
    elif not strict.passed:
        needed = next(w for w in range(1, misses + 1)
                      if binomtest(w, w, 0.5, alternative="greater").pvalue < alpha)
        console.print(escape(
            f"why it does not pass here: {found}; p < {alpha} needs at least {needed} of them "
            f"found with none lost (this candidate: +{t.improved}/-{t.worsened}), and every "
            "other segment must keep each query it answered"))


def _stream(
    settings: Settings, technical: list[Question], general: list[Question], *, share: float,
    n: int, days: tuple[float, float], now: datetime, seed: int, technical_rating: int = 5,
) -> None:
    """Ask ``n`` questions (``share`` technical) and rate them; backdate them into ``days``."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    with Retriever(KB, settings=settings) as retriever:
        for i in range(n):
            is_tech = i < round(n * share)
            q = rng.choice(technical if is_tech else general)
            result = retriever.search(q.query, session_id=f"{tag}-{i}")
            found = q.relevant & {h.doc_id for h in result.hits}
            rating = (technical_rating if is_tech else 5) if found else 2
            retriever.feedback(result.query_id, rating=rating, thumbs=rating >= 4)
        retriever.flush()
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, KB)
        low, high = days
        for table in ("query_log", "feedback"):
            conn.execute(sql.SQL(
                "UPDATE {} SET ts = %s - (%s + random() * %s) * interval '1 day' "
                "WHERE kb_id = %s AND ts > %s").format(sql.Identifier(table)),
                (now, low + 1e-3, high - low - 2e-3, kb_id, now - timedelta(minutes=30)))
    console.print(escape(f"{n} questions, {round(n * share)} technical "
                         f"({share:.0%}), asked {low:g}-{high:g} days ago"))
