"""Failed searches are logged, and a version's window samples read back what users saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from psycopg import sql

from kbrefresh import Retriever, store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import ConfigError, DatabaseError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.release.traffic import window_samples
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def test_window_samples_count_failures_feedback_and_latency(
    settings: Settings, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "corpus", 8)
    run_refresh(
        settings,
        RefreshRequest(kb="kb", source=str(tmp_path / "corpus")),
        embedder=OfflineEmbedder(dims=64),
        policy=SMOKE_ONLY,
    )
    start = datetime.now(UTC) - timedelta(seconds=1)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        table = store.fingerprint_for_version(conn, kb_id, 1).table
    with Retriever("kb", settings=settings) as kb:
        ok = [kb.search(f"rotate api key {i}", session_id=f"s{i}") for i in range(6)]
        kb.feedback(ok[0].query_id, rating=4)
        kb.feedback(ok[1].query_id, rating=2)
        kb.feedback(ok[2].query_id, thumbs=False)
        with connect(settings) as conn:  # the table disappears under the reader: a real failure
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO gone").format(sql.Identifier(table)))
            conn.commit()
        with pytest.raises(DatabaseError, match="reading 'kb' from"):
            kb.search("rotate api key", session_id="s-fail")
        with connect(settings) as conn:
            conn.execute(sql.SQL("ALTER TABLE gone RENAME TO {}").format(sql.Identifier(table)))
            conn.commit()
        kb.flush()
    with connect(settings) as conn:
        samples = window_samples(conn, kb_id, 1, start, datetime.now(UTC) + timedelta(seconds=1))
        other = window_samples(conn, kb_id, 2, start, datetime.now(UTC) + timedelta(seconds=1))
        errors = [
            r["error"]
            for r in conn.execute(
                "SELECT error FROM query_log WHERE kb_id = %s ORDER BY ts", (kb_id,)
            ).fetchall()
        ]
    assert errors == [None] * 6 + ["UndefinedTable"]
    assert samples.searches == 7
    assert samples.error_rate == pytest.approx(1 / 7)
    assert samples.empty_rate == 0.0
    assert samples.satisfaction == pytest.approx((4 + 2 + 1) / 3)
    assert samples.feedback_count == 3
    assert samples.p95_latency_ms is not None and samples.p95_latency_ms > 0
    assert samples.summary()["searches"] == 7.0
    assert other.searches == 0 and other.error_rate is None and other.satisfaction is None


def test_window_bounds_are_checked(settings: Settings) -> None:
    now = datetime.now(UTC)
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, "kb")
        with pytest.raises(ConfigError, match="is not after its start"):
            window_samples(conn, kb_id, 1, now, now)
        with pytest.raises(ConfigError, match="timezone-aware"):
            window_samples(conn, kb_id, 1, datetime(2026, 1, 1), now)
