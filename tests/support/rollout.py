"""A live version, a staged candidate and injected query-log traffic for rollout tests."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.release.candidate import stage_candidate
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
# Scaled to a test: no minimum duration, small samples, no feedback or golden floor required.
FAST = RolloutPolicy(min_step_seconds=0, min_samples=20, min_feedback=0, ab_seconds=0,
                     ab_min_samples=50, min_golden_accuracy=None)


@dataclass(frozen=True)
class Staged:
    kb: str
    kb_id: int
    live: int
    candidate: int


def live_and_candidate(settings: Settings, tmp_path: Path, kb: str = "kb") -> Staged:
    """Build v1 live from a synthetic corpus, then stage v2 (two docs changed) as a candidate."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 8)
    embedder = OfflineEmbedder(dims=64)
    run_refresh(settings, RefreshRequest(kb=kb, source=str(corpus)), embedder=embedder,
                policy=SMOKE_ONLY)
    changed = tmp_path / "corpus2"
    shutil.copytree(corpus, changed)
    write_corpus(tmp_path / "other", 2, seed=99)
    for path in sorted((tmp_path / "other").rglob("*.md")):
        target = changed / path.relative_to(tmp_path / "other")
        target.write_text(path.read_text("utf-8") + "\nA new paragraph.\n", "utf-8")
    staged = stage_candidate(settings, kb, str(changed), embedder=embedder, policy=SMOKE_ONLY)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
    return Staged(kb, kb_id, 1, staged.version)


def inject(
    settings: Settings, kb_id: int, version: int, n: int, *, failed: int = 0, up: int = 0,
    down: int = 0, ratings: tuple[int, ...] = (), latency_ms: float = 5.0,
    similarity: float = 0.8,
) -> None:
    """Log ``n`` searches of ``version`` now (``failed`` of them failed) and feedback on them."""
    ids = [uuid.uuid4() for _ in range(n)]
    now = datetime.now(UTC)
    with connect(settings) as conn:
        for i, qid in enumerate(ids):
            bad = i < failed
            conn.execute(
                "INSERT INTO query_log (query_id, kb_id, ts, session_hash, query, version, "
                "latency_ms, top_doc_ids, top_similarity, error) VALUES "
                "(%s, %s, %s, %s, 'q', %s, %s, %s, %s, %s)",
                (qid, kb_id, now, f"h{qid.hex[:8]}", version, latency_ms,
                 [] if bad else ["doc"], None if bad else similarity,
                 "UndefinedTable" if bad else None),
            )
        answered = ids[failed:]
        feedback = [(True, None)] * up + [(False, None)] * down + [(None, r) for r in ratings]
        for qid, (thumbs, rating) in zip(answered, feedback, strict=False):
            conn.execute("INSERT INTO feedback (query_id, kb_id, ts, rating, thumbs) "
                         "VALUES (%s, %s, %s, %s, %s)", (qid, kb_id, now, rating, thumbs))
        conn.commit()
