"""The chatbot's Retriever client on a real embedded PostgreSQL + pgvector."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kbrefresh import Retriever, store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import ConfigError, DatabaseError, KBRefreshError, VersionError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

# Build mechanics only: retrieval quality on random corpora is noise here.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
UNREACHABLE = "postgresql://u:pw@127.0.0.1:1/x?connect_timeout=1"
_module_db = itertools.count(1)


def build(settings: Settings, root: Path, kb: str = "kb", *, change: int | None = None) -> list[str]:
    """Write a corpus under ``root`` (or change one doc of it) and refresh ``kb`` from it."""
    if change is None:
        ids = write_corpus(root, 12)
    else:
        rng = random.Random(change)
        (root / "general/doc-000.md").write_text(markdown_doc(f"Changed {change}", "general", rng))
        ids = []
    run_refresh(settings, RefreshRequest(kb=kb, source=str(root)),
                embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)
    return ids


def make_settings(url: str, tmp: Path) -> Settings:
    return Settings(database_url=url, data_dir=tmp / "data", embedding_dims=64,
                    maintenance_work_mem="64MB")


def fetch(settings: Settings, query: str, *params: Any) -> list[dict[str, Any]]:
    with connect(settings) as conn:
        return [dict(r) for r in conn.execute(query, params).fetchall()]


@pytest.fixture(scope="module")
def shared(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[str]]:
    """One KB (version 1 live) for the tests that only read it or append to the log."""
    name = f"retriever_{next(_module_db)}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    tmp = tmp_path_factory.mktemp("retriever")
    settings = make_settings(pg_uri.replace("/postgres?", f"/{name}?", 1), tmp)
    return settings, build(settings, tmp / "corpus")


@pytest.fixture
def retriever(shared: tuple[Settings, list[str]]) -> Iterator[Retriever]:
    with Retriever("kb", settings=shared[0]) as r:
        yield r


def test_search_returns_hits_and_logs_the_query_and_feedback(
    retriever: Retriever, shared: tuple[Settings, list[str]]
) -> None:
    settings, doc_ids = shared
    result = retriever.search("rotate api key token", k=3, session_id="user-42")
    assert result.version == 1 and len(result.hits) == 3 and result.latency_ms > 0
    assert {h.doc_id for h in result.hits} <= set(doc_ids)
    assert all(h.version == 1 for h in result.hits)
    retriever.feedback(result.query_id, rating=4, thumbs=True)
    retriever.feedback(uuid.UUID(result.query_id), thumbs=False)
    retriever.flush()

    assert (retriever.logged, retriever.log_errors, retriever.dropped) == (3, 0, 0)
    [row] = fetch(settings, "SELECT * FROM query_log WHERE query_id = %s", result.query_id)
    expected_hash = hashlib.sha256(b"kbrefresh-session\x00kb\x00user-42").hexdigest()
    assert row["session_hash"] == expected_hash != "user-42"
    assert row["query"] == "rotate api key token" and row["version"] == 1
    assert row["kb_id"] == fetch(settings, "SELECT id FROM kb WHERE name = 'kb'")[0]["id"]
    assert row["top_doc_ids"] == [h.doc_id for h in result.hits]
    assert row["top_similarity"] == pytest.approx(result.hits[0].similarity, rel=1e-6)
    assert row["latency_ms"] == pytest.approx(result.latency_ms, rel=1e-6)
    assert abs(datetime.now(UTC) - row["ts"]) < timedelta(minutes=1)
    sketch = row["query_sketch"]
    assert len(sketch) == 64 and all(math.isfinite(x) for x in sketch)
    assert math.sqrt(sum(x * x for x in sketch)) == pytest.approx(1.0, rel=1e-5)
    feedback = fetch(settings, "SELECT rating, thumbs FROM feedback WHERE query_id = %s ORDER BY id",
                     result.query_id)
    assert feedback == [{"rating": 4, "thumbs": True}, {"rating": None, "thumbs": False}]


def test_the_same_query_gets_the_same_sketch(
    retriever: Retriever, shared: tuple[Settings, list[str]]
) -> None:
    ids = [retriever.search("export report dashboard").query_id for _ in range(2)]
    retriever.flush()
    rows = fetch(shared[0], "SELECT query_sketch, session_hash FROM query_log WHERE query_id = ANY(%s)",
                 ids)
    assert rows[0]["query_sketch"] == rows[1]["query_sketch"]
    assert rows[0]["session_hash"] != rows[1]["session_hash"]  # no session id: one per query


@pytest.mark.parametrize(
    ("query_id", "kwargs", "message"),
    [
        (None, {"rating": 3}, None),
        ("nope", {"rating": 3}, "query_id 'nope' is not a UUID; expected a SearchResult.query_id"),
        (None, {}, "feedback needs a rating (1 to 5) or thumbs (True or False); got neither"),
        (None, {"rating": 0}, "rating 0 is invalid; expected an int from 1 to 5"),
        (None, {"rating": 6}, "rating 6 is invalid; expected an int from 1 to 5"),
        (None, {"rating": 4.0}, "rating 4.0 is invalid; expected an int from 1 to 5"),
        (None, {"rating": True}, "rating True is invalid; expected an int from 1 to 5"),
        (None, {"thumbs": 1}, "thumbs 1 is invalid; expected True or False"),
    ],
)
def test_feedback_arguments_are_validated(
    retriever: Retriever, query_id: str | None, kwargs: dict[str, Any], message: str | None
) -> None:
    qid = query_id or str(uuid.uuid4())
    if message is None:
        retriever.feedback(qid, **kwargs)
        return
    with pytest.raises(ConfigError) as exc:
        retriever.feedback(qid, **kwargs)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("query", "k", "session_id", "message"),
    [
        ("  ", 5, None, "query '  ' is empty; expected some words to search for"),
        ("api", 0, None, "k 0 is out of range; expected an int from 1 to 1000"),
        ("api", 2.5, None, "k 2.5 is out of range; expected an int from 1 to 1000"),
        ("api", 5, "", "session_id '' is invalid; expected text or None"),
    ],
)
def test_search_arguments_are_validated(
    retriever: Retriever, query: str, k: Any, session_id: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        retriever.search(query, k, session_id=session_id)
    assert str(exc.value) == message


def test_canary_gets_its_share_of_sessions_and_sessions_stick(
    settings: Settings, tmp_path: Path
) -> None:
    build(settings, tmp_path / "corpus")
    build(settings, tmp_path / "corpus", change=1)
    with connect(settings, autocommit=True) as conn:
        conn.execute("UPDATE kb_routing SET live_version = 1, canary_version = 2, "
                     "canary_percent = 25")
    with Retriever("kb", settings=settings) as r:
        served = [r.search("webhook retry", k=1, session_id=f"session-{i}").version
                  for i in range(2000)]
        assert set(served) == {1, 2}
        assert 0.22 <= served.count(2) / len(served) <= 0.28
        for i in range(10):
            assert {r.search("api token", k=1, session_id=f"session-{i}").version
                    for _ in range(5)} == {served[i]}
        anonymous = [r.search("api token", k=1).version for _ in range(200)]
        assert set(anonymous) == {1, 2}


def test_routing_is_cached_for_its_ttl(settings: Settings, tmp_path: Path) -> None:
    build(settings, tmp_path / "corpus")
    build(settings, tmp_path / "corpus", change=1)
    now = [1000.0]
    with Retriever("kb", settings=settings, routing_ttl_seconds=0) as fresh, Retriever(
        "kb", settings=settings, routing_ttl_seconds=60, clock=lambda: now[0]
    ) as cached:
        assert fresh.search("api").version == cached.search("api").version == 2
        with connect(settings, autocommit=True) as conn:
            routing.rollback(conn, store.get_kb_id(conn, "kb"), "kb", reason="test")
        assert fresh.search("api").version == 1
        now[0] += 59.9
        assert cached.search("api").version == 2
        now[0] += 0.1
        assert cached.search("api").version == 1


def test_a_failing_query_log_never_fails_a_search(
    shared: tuple[Settings, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with Retriever("kb", settings=shared[0], log_database_url=UNREACHABLE) as r:
        results = [r.search("invoice billing", k=2, session_id="s") for _ in range(3)]
        r.feedback(results[0].query_id, rating=1)
        r.flush()
        assert all(len(res.hits) == 2 for res in results)
        assert r.log_errors > 0 and r.logged == 0
        assert r.search("invoice").hits  # and the next flush reconnects and fails again, quietly
        r.flush()
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "kbrefresh.serving.querylog"]
    assert warnings and all("postgresql://u:***@127.0.0.1:1/x" in w for w in warnings)
    assert not any("pw" in rec.getMessage() for rec in caplog.records)


def test_reader_and_logger_roles_are_enough_and_no_more(settings: Settings, tmp_path: Path) -> None:
    build(settings, tmp_path / "corpus")
    url = settings.database_url.get_secret_value()  # type: ignore[union-attr]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN"
            " IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chatbot') THEN"
            "  CREATE ROLE chatbot LOGIN; END IF;"
            " IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chatlog') THEN"
            "  CREATE ROLE chatlog LOGIN; END IF;"
            " END $$"
        )
        conn.execute("GRANT kbrefresh_reader TO chatbot")
        conn.execute("GRANT kbrefresh_logger TO chatlog")
    assert url.startswith("postgresql://postgres:@")
    chatbot, chatlog = (url.replace("postgres:@", f"{user}:@", 1) for user in ("chatbot", "chatlog"))

    with Retriever("kb", database_url=chatbot, log_database_url=chatlog, settings=settings) as r:
        result = r.search("rotate api key", k=2, session_id="user-1")
        r.feedback(result.query_id, thumbs=True)
        r.flush()
        assert (r.logged, r.log_errors) == (2, 0)
    assert fetch(settings, "SELECT count(*) AS n FROM query_log WHERE query_id = %s",
                 result.query_id) == [{"n": 1}]

    with connect(settings) as conn:
        table = store.fingerprint_for_version(conn, store.get_kb_id(conn, "kb"), 1).table
    with psycopg.connect(chatbot, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("INSERT INTO {} (doc_id) VALUES ('x')").format(sql.Identifier(table)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE kb_routing SET live_version = 1")
    with psycopg.connect(chatlog, autocommit=True) as conn, pytest.raises(
        psycopg.errors.InsufficientPrivilege
    ):
        conn.execute("SELECT * FROM query_log")


def test_unknown_kb_and_missing_live_version_are_explained(settings: Settings) -> None:
    with connect(settings) as conn:
        store.ensure_kb(conn, "alpha")
        conn.commit()
    with pytest.raises(VersionError) as exc:
        Retriever("nope", settings=settings)
    assert str(exc.value) == "unknown knowledge base 'nope'; known: 'alpha'"
    with Retriever("alpha", settings=settings) as r, pytest.raises(VersionError) as exc:
        r.search("api")
    assert str(exc.value) == "knowledge base 'alpha' has no live version yet; run a refresh first"


def test_an_unreachable_database_is_reported_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as exc:
        Retriever("kb", database_url=UNREACHABLE, settings=Settings(data_dir=tmp_path))
    assert str(exc.value).startswith(
        "cannot connect to postgresql://u:***@127.0.0.1:1/x?connect_timeout=1: ")
    assert "pw" not in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"routing_ttl_seconds": -1},
         "routing_ttl_seconds -1 is out of range; expected a number from 0.0 to 3600.0"),
        ({"log_batch_size": 0}, "log_batch_size 0 is out of range; expected an int from 1 to 100000"),
        ({"log_flush_seconds": float("nan")},
         "log_flush_seconds nan is out of range; expected a number from 0.01 to 3600.0"),
    ],
)
def test_bad_settings_fail_before_connecting(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Retriever("kb", database_url=UNREACHABLE, **kwargs)
    assert str(exc.value) == message


def test_a_mismatched_embedder_and_a_closed_retriever_are_refused(
    shared: tuple[Settings, list[str]]
) -> None:
    with Retriever("kb", settings=shared[0], embedder=OfflineEmbedder(dims=32)) as r:
        with pytest.raises(ConfigError) as exc:
            r.search("api")
        assert "embedded with offline/" in str(exc.value) and "(32 dims)" in str(exc.value)
    with pytest.raises(KBRefreshError) as closed:
        r.search("api")
    assert str(closed.value) == "the Retriever of 'kb' is closed; create a new one"
