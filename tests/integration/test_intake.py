"""The streamed intake: unchanged files are read but not parsed, batches bound memory."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.build.chunking import chunk_documents
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.build.sources import load_source
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import DataQualityError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def run(settings: Settings, source: Path, **request: Any) -> RefreshReport:
    return run_refresh(settings, RefreshRequest(kb="kb", source=str(source), **request),
                       embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)


def chunk_hashes(source: Path) -> set[tuple[str, int, str]]:
    docs = load_source(str(source)).documents
    return {(c.doc_id, c.chunk_index, c.content_hash)
            for c in chunk_documents(docs, ChunkerConfig())}


def live_rows(settings: Settings, version: int) -> set[tuple[str, int, str]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        fp = store.fingerprint_for_version(conn, kb_id, version)
        rows = conn.execute(sql.SQL("SELECT doc_id, chunk_index, content_hash FROM {} c WHERE ")
                            .format(sql.Identifier(fp.table)) + store.in_version(),
                            {"version": version}).fetchall()
    return {(r["doc_id"], r["chunk_index"], r["content_hash"]) for r in rows}


def version_counts(settings: Settings, version: int) -> dict[str, Any]:
    with connect(settings) as conn:
        return dict(store.version_row(conn, store.get_kb_id(conn, "kb"), version).counts)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_corpus(root, 12)
    return root


def test_unchanged_files_are_not_parsed(settings: Settings, corpus: Path) -> None:
    first = run(settings, corpus)
    assert (first.documents_parsed, first.documents_skipped) == (12, 0)
    again = run(settings, corpus)
    assert (again.documents_parsed, again.documents_skipped) == (0, 12)
    assert again.texts_embedded == 0 and again.chunks_reused == again.chunks == first.chunks

    rng = random.Random(5)
    (corpus / "general/doc-000.md").write_text(markdown_doc("Topic 0 v2", "general", rng), "utf-8")
    (corpus / "technical/new-doc.md").write_text(markdown_doc("New", "technical", rng), "utf-8")
    (corpus / "general/doc-002.md").unlink()
    report = run(settings, corpus)
    assert (report.documents_parsed, report.documents_skipped) == (2, 10)
    assert (report.documents_new, report.documents_changed, report.documents_deleted) == (1, 1, 1)
    assert report.documents == 12
    assert live_rows(settings, report.version) == chunk_hashes(corpus)


def test_a_change_with_the_mtime_preserved_is_seen(settings: Settings, corpus: Path) -> None:
    run(settings, corpus)
    path = corpus / "technical/doc-001.md"
    before = os.stat(path)
    text = path.read_text("utf-8")
    path.write_text(text.replace("# Topic 1", "# Topic 1 renamed", 1), "utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as a copy -p or a restore would
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.stat(path).st_size != before.st_size
    report = run(settings, corpus)
    assert (report.documents_parsed, report.documents_changed) == (1, 1)
    assert live_rows(settings, report.version) == chunk_hashes(corpus)


def test_settled_files_are_not_opened_until_their_stat_changes(
        settings: Settings, corpus: Path) -> None:
    run(settings, corpus)
    time.sleep(1.1)  # written under a second before the first walk: not settled, read again
    second = run(settings, corpus)
    assert version_counts(settings, second.version)["files_opened"] == 12
    third = run(settings, corpus)
    assert (third.documents, third.documents_skipped) == (12, 12)
    assert version_counts(settings, third.version)["files_opened"] == 0

    # Same size, mtime put back (as a restore would): the ctime moved, so it is read.
    path = corpus / "general/doc-000.md"
    before = os.stat(path)
    text = path.read_text("utf-8")
    path.write_text(text.replace("Topic 0", "Topic X", 1), "utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    changed = run(settings, corpus)
    assert (changed.documents_parsed, changed.documents_changed) == (1, 1)
    assert version_counts(settings, changed.version)["files_opened"] == 1
    assert live_rows(settings, changed.version) == chunk_hashes(corpus)
    every = run(settings.model_copy(update={"read_every_file": True}), corpus)
    assert version_counts(settings, every.version)["files_opened"] == 12
    assert every.documents_parsed == 0


def test_touching_a_file_without_a_date_moves_its_date_not_its_content(
    settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "plain"
    write_corpus(root, 3)
    (root / "general/undated.txt").write_text("a plain text page with enough words to pass", "utf-8")
    run(settings, root)
    os.utime(root / "general/undated.txt", (1_700_000_000, 1_800_000_000))
    report = run(settings, root)
    assert (report.documents_parsed, report.documents_skipped, report.documents_changed) == (0, 4, 0)
    with connect(settings) as conn:
        row = conn.execute("SELECT modified_at FROM kb_documents WHERE doc_id = 'general/undated'"
                           ).fetchone()
    assert row is not None and row["modified_at"].timestamp() == 1_800_000_000


def test_batches_bound_the_intake_and_checks_span_batches(
    settings: Settings, corpus: Path
) -> None:
    small = settings.model_copy(update={"source_batch_size": 5})
    report = run(small, corpus)
    counts = version_counts(small, report.version)
    assert (counts["read_batches"], counts["largest_read_batch"], counts["read_batch_size"]) == (
        3, 5, 5)
    assert counts["documents_read"] == 12 and report.chunks == len(chunk_hashes(corpus))
    # One document a batch: doc-000.html and doc-000.md are in different batches.
    (corpus / "general/doc-000.html").write_text(
        "<html><head><title>Twin</title></head><body><p>a twin page with the same id</p>"
        "</body></html>", "utf-8")
    with pytest.raises(DataQualityError, match=r"doc id 'general/doc-000' is used by 2 documents"):
        run(settings.model_copy(update={"source_batch_size": 1}), corpus)


def test_reparse_sources_parses_every_file(settings: Settings, corpus: Path) -> None:
    run(settings, corpus)
    report = run(settings.model_copy(update={"reparse_sources": True}), corpus)
    assert (report.documents_parsed, report.documents_skipped) == (12, 0)
    assert report.texts_embedded == 0


def test_a_stricter_length_limit_parses_again(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "short"
    write_corpus(root, 3)
    (root / "general/short.txt").write_text("only a few words here", "utf-8")  # 21 chars
    run(settings, root)
    with pytest.raises(DataQualityError, match=r"'general/short' has only 21 characters"):
        run_refresh(settings, RefreshRequest(kb="kb", source=str(root)),
                    embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY,
                    quality=QualityPolicy(min_chars=50))


def test_close_intake_counts_the_source_and_names_kept_documents_without_a_title(
        settings: Settings) -> None:
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, "kb")
        for doc_id, title in (("a", "A"), ("blank", "  "), ("parsed-blank", "")):
            conn.execute(
                "INSERT INTO kb_documents (kb_id, doc_id, uri, title, category, content_hash,"
                " source_key) VALUES (%s, %s, %s, %s, 'general', 'h', 'k')",
                (kb_id, doc_id, f"file:///{doc_id}", title))
        store.open_intake(conn)
        listed = [(d, f"{d}.md", f"file:///{d}", False, "sig") for d in
                  ("a", "blank", "parsed-blank", "failed")]
        assert store.copy_scan(conn, listed) == 4
        parsed = {"doc_id": "parsed-blank", "uri": "file:///parsed-blank", "title": "",
                  "category": "general", "metadata": {}, "content_hash": "h2",
                  "modified_at": None, "source_key": "k2", "mtime_dated": False,
                  "stat_sig": None}
        # "a" was read and kept, "blank" kept unread, "failed" did not parse.
        store.copy_intake(conn, kb_id, [parsed], [("a", "k", None, "sig")], ["failed.md"])
        closed = store.close_intake(conn, kb_id)
        conn.rollback()
    # Only kept documents are named here: parsed ones were checked as they were parsed.
    assert (closed["count"], closed["untitled"]) == (3, ["blank"])
