"""The scheduled refresh on a real embedded PostgreSQL + pgvector."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.build.chunking import chunk_documents
from kbrefresh.build.sources import load_source
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import BuildLockedError, DataQualityError, EmbeddingError, VersionError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshHooks, RefreshReport, run_refresh
from kbrefresh.serving import routing
from kbrefresh.serving.lookup import search_live
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

# These tests are about build mechanics on random synthetic corpora, where retrieval
# quality and millisecond latencies are noise; the gate has its own tests.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


class PlanHook(RefreshHooks):
    def __init__(self, on_plan: Any) -> None:
        self.on_plan = on_plan

    def step_finished(self, step: str, result: object) -> None:
        if step == "plan_build":
            self.on_plan(result)


def run(
    settings: Settings, kb: str, source: Path | str, *, embedder: Any = None,
    policy: AcceptancePolicy = SMOKE_ONLY, on_plan: Any = None, **request: Any,
) -> RefreshReport:
    return run_refresh(settings, RefreshRequest(kb=kb, source=str(source), **request),
                       embedder=embedder or OfflineEmbedder(dims=64), policy=policy,
                       hooks=PlanHook(on_plan) if on_plan else None)


def chunk_hashes(source: Path) -> set[tuple[str, int, str]]:
    docs = load_source(str(source)).documents
    return {(c.doc_id, c.chunk_index, c.content_hash) for c in chunk_documents(docs, ChunkerConfig())}


def version_rows(settings: Settings, kb: str, version: int) -> set[tuple[str, int, str]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        table = store.fingerprint_for_version(conn, kb_id, version).table
        rows = conn.execute(
            sql.SQL("SELECT doc_id, chunk_index, content_hash FROM {} c WHERE ").format(
                sql.Identifier(table)
            ) + store.in_version(),
            {"version": version},
        ).fetchall()
    return {(r["doc_id"], r["chunk_index"], r["content_hash"]) for r in rows}


def live(settings: Settings, kb: str) -> int | None:
    with connect(settings) as conn:
        return routing.live_version(conn, store.get_kb_id(conn, kb))


def statuses(settings: Settings, kb: str) -> dict[int, str]:
    with connect(settings) as conn:
        return {r.version: r.status.value for r in store.list_versions(conn, store.get_kb_id(conn, kb))}


class FailingEmbedder(OfflineEmbedder):
    """Offline embedder that fails on call number ``fail_on`` (1-based)."""

    def __init__(self, dims: int, fail_on: int) -> None:
        super().__init__(dims=dims)
        self.fail_on = fail_on

    def embed(self, texts: Any) -> Any:
        if self.calls + 1 == self.fail_on:
            self.calls += 1
            raise EmbeddingError("injected failure")
        return super().embed(texts)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_corpus(root, 12)
    return root


def test_first_build_goes_live_with_every_chunk(settings: Settings, corpus: Path) -> None:
    embedder = OfflineEmbedder(dims=64)
    report = run_refresh(settings, RefreshRequest(kb="kb1", source=str(corpus)), embedder=embedder)
    expected = chunk_hashes(corpus)
    assert report.version == 1 and report.live_version == 1 and report.from_version is None
    assert report.full_build and report.chunks == len(expected)
    assert report.chunks_embedded == len(expected) and report.chunks_reused == 0
    assert version_rows(settings, "kb1", 1) == expected
    assert report.dataset_tag.startswith("v1-")
    with connect(settings) as conn:
        n = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(
            sql.Identifier("kb_kb1_live"))).fetchone()
        assert n is not None and n["n"] == len(expected)
        assert store.has_vector_index(conn, store.fingerprint_for_version(conn, 1, 1).table)
    hits = search_live(settings, "kb1", "rotate api key token", k=3, embedder=embedder)
    assert len(hits) == 3 and all(h.version == 1 for h in hits)


def test_incremental_refresh_embeds_exactly_the_changed_chunks(
    settings: Settings, corpus: Path
) -> None:
    run(settings, "kb", corpus)
    before = chunk_hashes(corpus)
    rng = __import__("random").Random(99)
    (corpus / "general/doc-000.md").write_text(markdown_doc("Topic 0 changed", "general", rng), "utf-8")
    (corpus / "technical/new-doc.md").write_text(markdown_doc("Brand new", "technical", rng), "utf-8")
    (corpus / "general/doc-002.md").unlink()
    after = chunk_hashes(corpus)
    new_hashes = {h for _, _, h in after} - {h for _, _, h in before}

    embedder = OfflineEmbedder(dims=64)
    report = run(settings, "kb", corpus, embedder=embedder)

    assert report.version == 2 and report.live_version == 2 and report.from_version == 1
    assert report.texts_embedded == len(new_hashes) > 0
    smoke_queries = embedder.texts_embedded - report.texts_embedded
    assert 0 < smoke_queries <= 5  # the rest of the embedder's work was smoke sample queries
    assert report.chunks_reused == len(after & before)
    assert report.documents_new == 1 and report.documents_changed == 1
    assert report.documents_deleted == 1
    assert version_rows(settings, "kb", 2) == after
    assert not any(d == "general/doc-002" for d, _, _ in version_rows(settings, "kb", 2))
    assert version_rows(settings, "kb", 1) == before  # the rollback target is intact


def test_unchanged_source_embeds_nothing(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    report = run(settings, "kb", corpus)
    assert report.texts_embedded == 0 and report.chunks_removed == 0
    assert report.chunks_reused == report.chunks


def test_rollback_then_refresh_rebuilds_from_the_rolled_back_state(
    settings: Settings, corpus: Path
) -> None:
    run(settings, "kb", corpus)
    v1 = chunk_hashes(corpus)
    (corpus / "technical/doc-001.md").unlink()
    run(settings, "kb", corpus)
    with connect(settings, autocommit=True) as conn:
        change = routing.rollback(conn, store.get_kb_id(conn, "kb"), "kb", reason="test")
        assert (change.from_version, change.to_version) == (2, 1)
        history = routing.history(conn, store.get_kb_id(conn, "kb"))
        view_docs = {r["doc_id"] for r in conn.execute('SELECT doc_id FROM "kb_kb_live"').fetchall()}
    assert live(settings, "kb") == 1
    assert statuses(settings, "kb") == {1: "live", 2: "rolled_back"}
    assert [(h.action, h.from_version, h.to_version) for h in history[:2]] == [
        ("rollback", 2, 1), ("swap", 1, 2)]
    assert "technical/doc-001" in view_docs
    assert version_rows(settings, "kb", 1) == v1

    (corpus / "technical/doc-003.md").unlink()
    report = run(settings, "kb", corpus)
    assert report.version == 3 and report.from_version == 1
    assert version_rows(settings, "kb", 3) == chunk_hashes(corpus)
    assert report.texts_embedded == 0  # nothing new: only deletions since v1


def test_rollback_without_an_earlier_version_is_refused(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    with connect(settings, autocommit=True) as conn, pytest.raises(VersionError) as exc:
        routing.rollback(conn, store.get_kb_id(conn, "kb"), "kb")
    assert str(exc.value) == (
        "knowledge base 'kb' has no earlier version kept to roll back to (live is 1); "
        "see `kbrefresh versions --kb kb`"
    )


def test_mass_deletion_breaker_refuses_a_shrunken_source(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    for path in sorted(corpus.rglob("*.md"))[:4]:  # 12 -> 8 documents: -33%
        path.unlink()
    with pytest.raises(DataQualityError) as exc:
        run(settings, "kb", corpus)
    assert "shrank from 12 to 8 documents" in str(exc.value)
    assert live(settings, "kb") == 1
    assert statuses(settings, "kb") == {1: "live", 2: "failed"}
    ok = run(settings, "kb", corpus, max_shrink=0.5)
    assert ok.live_version == 3 and ok.documents == 8


def test_empty_source_is_refused(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataQualityError) as exc:
        run(settings, "kb", tmp_path / "empty")
    assert "no documents" in str(exc.value)
    with connect(settings) as conn:
        assert routing.live_version(conn, store.get_kb_id(conn, "kb")) is None


def test_failure_mid_build_leaves_live_serving_and_next_run_reuses_work(
    settings: Settings, corpus: Path
) -> None:
    run(settings, "kb", corpus)
    hits_before = search_live(settings, "kb", "billing invoice", embedder=OfflineEmbedder(dims=64))
    write_corpus(corpus, 12, seed=8)  # every document changes
    settings_small = settings.model_copy(update={"embed_batch_size": 4})
    with pytest.raises(EmbeddingError, match="injected failure"):
        run(settings_small, "kb", corpus, embedder=FailingEmbedder(64, fail_on=3))
    assert live(settings, "kb") == 1
    assert statuses(settings, "kb") == {1: "live", 2: "failed"}
    assert search_live(settings, "kb", "billing invoice", embedder=OfflineEmbedder(dims=64)) == hits_before

    total_new = len({h for _, _, h in chunk_hashes(corpus)})
    report = run(settings_small, "kb", corpus)
    assert report.live_version == 3
    assert report.texts_embedded == total_new - 8  # two batches of 4 survived the failure
    assert version_rows(settings, "kb", 3) == chunk_hashes(corpus)


def test_crash_before_swap_is_resumed_by_the_next_run(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    write_corpus(corpus, 12, seed=9)
    embedder = OfflineEmbedder(dims=64)
    fp = steps.fingerprint_for(embedder, ChunkerConfig())
    # A run that dies after loading its vectors, before finalize and swap (no cleanup runs).
    with steps.refresh_lock(settings, "kb"):
        ticket = steps.begin_version(settings, "kb", fp, source=str(corpus), flow_run_id=None)
        steps.prepare_data(settings, ticket, str(corpus))
        steps.reuse_unchanged(settings, ticket)
        steps.embed_changed(settings, ticket, embedder=embedder)
    assert live(settings, "kb") == 1 and statuses(settings, "kb")[2] == "building"

    report = run(settings, "kb", corpus)
    assert report.resumed and report.version == 2 and report.live_version == 2
    assert report.texts_embedded == 0
    assert version_rows(settings, "kb", 2) == chunk_hashes(corpus)


def test_failed_smoke_check_rejects_and_keeps_live(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    write_corpus(corpus, 12, seed=10)
    embedder = OfflineEmbedder(dims=64)
    fp = steps.fingerprint_for(embedder, ChunkerConfig())
    with steps.refresh_lock(settings, "kb"):
        ticket = steps.begin_version(settings, "kb", fp, source=str(corpus), flow_run_id=None)
        steps.prepare_data(settings, ticket, str(corpus))
        steps.reuse_unchanged(settings, ticket)
        steps.embed_changed(settings, ticket, embedder=embedder)
        steps.finalize_version(settings, ticket, {})
        with connect(settings) as conn:  # lose rows behind the pipeline's back
            conn.execute(sql.SQL("DELETE FROM {} WHERE valid_from = 2 AND chunk_index = 0").format(
                sql.Identifier(ticket.table)))
            conn.commit()
        result = steps.smoke_check(settings, ticket, embedder=embedder)
    assert not result.passed
    assert result.failures[0].startswith("row_count: ")
    assert statuses(settings, "kb") == {1: "live", 2: "rejected"}
    assert live(settings, "kb") == 1
    with (connect(settings, autocommit=True) as conn,
          pytest.raises(VersionError, match="only a 'candidate' can go live")):
        routing.swap_live(conn, ticket.kb_id, "kb", 2, reason="x", flow_run_id=None)


def test_concurrent_refresh_is_refused_or_waits(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    with steps.refresh_lock(settings, "kb"):
        with pytest.raises(BuildLockedError) as exc:
            run(settings, "kb", corpus)
        assert str(exc.value).startswith("another refresh of knowledge base 'kb' is running")

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with steps.refresh_lock(settings, "kb"):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(30)
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(
        run(settings, "kb", corpus, lock_wait_seconds=30)))
    waiter.start()
    release.set()
    holder.join(30)
    waiter.join(60)
    assert [r.version for r in results] == [2]


HOSTILE_KB = "it's; DROP TABLE kb;--ü\"x"


def test_hostile_kb_name_and_doc_ids_are_handled_safely(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "hostile"
    rng = __import__("random").Random(3)
    names = ["we'ird; DROP TABLE kb_documents;--", 'quo"te', "ünïcode — doc", "normal"]
    for name in names:
        (root / "general").mkdir(parents=True, exist_ok=True)
        (root / "general" / f"{name}.md").write_text(markdown_doc(name, "general", rng), "utf-8")
    report = run(settings, HOSTILE_KB, root)
    assert report.live_version == 1 and report.documents == 4
    with connect(settings) as conn:
        docs = {r["doc_id"] for r in conn.execute(
            sql.SQL("SELECT doc_id FROM {}").format(sql.Identifier(f"kb_{HOSTILE_KB}_live"))).fetchall()}
        assert docs == {f"general/{n}" for n in names}
        assert conn.execute("SELECT count(*) AS n FROM kb").fetchone() == {"n": 1}
    with pytest.raises(Exception, match="control characters"):
        run(settings, "bad\nname", root)


def test_fingerprint_change_means_full_build_in_a_new_table(settings: Settings, corpus: Path) -> None:
    first = run(settings, "kb", corpus)
    plans: list[Any] = []
    second = run(settings, "kb", corpus, embedder=OfflineEmbedder(dims=32),
                     on_plan=plans.append)
    assert plans[0].full_build and plans[0].to_embed_chunks == first.chunks
    assert plans[0].estimated_tokens > 0
    assert second.texts_embedded == len({h for _, _, h in chunk_hashes(corpus)})
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        t1 = store.fingerprint_for_version(conn, kb_id, 1).table
        t2 = store.fingerprint_for_version(conn, kb_id, 2).table
        dims = conn.execute('SELECT vector_dims(embedding) AS d FROM "kb_kb_live" LIMIT 1').fetchone()
    assert t1 != t2 and dims == {"d": 32}


def test_old_versions_are_archived_and_their_rows_purged(settings: Settings, corpus: Path) -> None:
    for seed in (1, 2, 3):
        write_corpus(corpus, 12, seed=seed)
        run(settings, "kb", corpus, keep_versions=2)
    assert statuses(settings, "kb") == {1: "archived", 2: "retired", 3: "live"}
    with connect(settings) as conn:
        table = store.fingerprint_for_version(conn, store.get_kb_id(conn, "kb"), 3).table
        row = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE valid_to <= 2").format(
            sql.Identifier(table))).fetchone()
    assert row == {"n": 0}
    assert version_rows(settings, "kb", 2) and version_rows(settings, "kb", 3)


def test_vectors_are_unit_and_finite(settings: Settings, corpus: Path) -> None:
    run(settings, "kb", corpus)
    with connect(settings) as conn:
        rows = conn.execute('SELECT embedding FROM "kb_kb_live"').fetchall()
    norms = [float(np.linalg.norm(r["embedding"].to_numpy())) for r in rows]
    assert norms and all(abs(n - 1) < 1e-5 for n in norms)


def test_resume_after_the_source_changed_back_serves_the_source_as_it_is_now(
    settings: Settings, corpus: Path
) -> None:
    run(settings, "kb", corpus)
    original = (corpus / "general/doc-000.md").read_text("utf-8")
    rng = __import__("random").Random(5)
    (corpus / "general/doc-000.md").write_text(markdown_doc("Edited", "general", rng), "utf-8")
    embedder = OfflineEmbedder(dims=64)
    fp = steps.fingerprint_for(embedder, ChunkerConfig())
    with steps.refresh_lock(settings, "kb"):  # dies after writing doc-000's new rows
        ticket = steps.begin_version(settings, "kb", fp, source=str(corpus), flow_run_id=None)
        steps.prepare_data(settings, ticket, str(corpus))
        steps.reuse_unchanged(settings, ticket)
        steps.embed_changed(settings, ticket, embedder=embedder)
    (corpus / "general/doc-000.md").write_text(original, "utf-8")

    report = run(settings, "kb", corpus)
    assert report.resumed and report.version == 2
    assert version_rows(settings, "kb", 2) == chunk_hashes(corpus) == version_rows(settings, "kb", 1)
