"""The streamed intake without a database: keys, kept files, batches, the tally."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kbrefresh.build.intake import (
    IntakeCounts,
    QualityTally,
    context_key,
    source_key,
    stream_source,
)
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.build.sources.directory import DirectoryReader, SourceFile
from kbrefresh.models import ChunkerConfig

PAGE = "---\ntitle: Page {i}\nupdated: 2026-11-01\n---\n# Page {i}\n\nenough words to pass the length check {i}\n"


def write(root: Path, n: int) -> None:
    for i in range(n):
        path = root / f"part-{i % 2}" / f"page {i:02d} é.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PAGE.format(i=i), "utf-8")


def test_reader_gives_the_uri_and_id_a_path_would(tmp_path: Path) -> None:
    write(tmp_path, 3)
    (tmp_path / "notes.bin").write_bytes(b"\0")
    reader = DirectoryReader(tmp_path)
    files = [f for f in map(reader.read, reader.entries()) if isinstance(f, SourceFile)]
    assert len(files) == 3 and [f.doc_id for f in files] == ["part-0/page 00 é", "part-0/page 02 é", "part-1/page 01 é"]
    assert [f.uri for f in files] == [
        (tmp_path / f"{f.rel}").absolute().as_uri() for f in files]
    assert reader.skipped == 1


class MemoryCatalog:
    """The catalog's side of the intake in memory: what ``store.intake_reads`` selects."""

    def __init__(self, rows: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.rows = dict(rows or {})
        self.listed: list[tuple[str, str | None, str, bool, str | None]] = []

    def lookup(self, doc_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        return {d: self.rows[d] for d in doc_ids if d in self.rows}

    def scan(self, entries: Iterable[tuple[str, str | None, str, bool, str | None]]) -> int:
        self.listed = list(entries)
        return len(self.listed)

    def to_read(self, batch_size: int, *, everything: bool) -> Iterator[list[dict[str, Any]]]:
        absent = dict.fromkeys(("source_key", "content_hash", "mtime_dated", "base_hash"))
        wanted = [{"doc_id": d, "rel": rel, "uri": uri, "link": link}
                  | dict(self.rows.get(d, absent))
                  for d, rel, uri, link, sig in self.listed
                  if everything or d not in self.rows or self.rows[d]["stat_sig"] != sig]
        for start in range(0, len(wanted), batch_size):
            yield wanted[start:start + batch_size]

    def learn(self, batches: Sequence[Any]) -> None:
        for b in batches:
            for r in b.rows:
                self.rows[r["doc_id"]] = {k: r[k] for k in ("source_key", "content_hash",
                                                          "mtime_dated", "stat_sig")} | {
                    "base_hash": r["content_hash"]}
            for doc_id, key, _, sig in b.kept:
                self.rows[doc_id] = dict(self.rows[doc_id]) | {"source_key": key, "stat_sig": sig}


def stream(root: Path, catalog: MemoryCatalog, counts: IntakeCounts | None = None,
           **options: Any) -> list[Any]:
    context = options.pop("context", context_key(None, ChunkerConfig(), QualityPolicy()))
    return list(stream_source(str(root), query=None, catalog=catalog, batch_size=2,
                              profiles=None, chunker=ChunkerConfig(), context=context,
                              counts=counts, **options))


def test_files_with_their_stored_key_are_kept_not_parsed(tmp_path: Path) -> None:
    write(tmp_path, 5)
    catalog = MemoryCatalog()
    counts = IntakeCounts(2)
    first = stream(tmp_path, catalog, counts)
    for batch in first:
        counts.add(batch)
    assert counts.as_counts() == {"documents_read": 5, "documents_parsed": 5,
                                  "documents_skipped": 0, "files_opened": 5, "read_batches": 3,
                                  "read_batch_size": 2, "largest_read_batch": 2}
    catalog.learn(first)
    (tmp_path / "part-1/page 01 é.md").write_text(PAGE.format(i="one"), "utf-8")
    # Just written: no signature settled, so every file is read; one is parsed.
    again = stream(tmp_path, catalog)
    assert [r["doc_id"] for b in again for r in b.rows] == ["part-1/page 01 é"]
    assert [p.document.doc_id for b in again for p in b.changed] == ["part-1/page 01 é"]
    assert sorted(k[0] for b in again for k in b.kept) == [
        "part-0/page 00 é", "part-0/page 02 é", "part-0/page 04 é", "part-1/page 03 é"]
    # Another quality limit is another context: every file is parsed again.
    other = context_key(None, ChunkerConfig(), QualityPolicy(min_chars=5))
    assert other != context_key(None, ChunkerConfig(), QualityPolicy())
    assert source_key(b"x", "file:///a", other) != source_key(
        b"x", "file:///a", context_key(None, ChunkerConfig(), QualityPolicy()))


def test_settled_signatures_skip_reading_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbrefresh.build.sources import directory

    monkeypatch.setattr(directory, "SETTLE_NS", 0)  # files written before the walk: settled
    write(tmp_path, 5)
    catalog = MemoryCatalog()
    catalog.learn(stream(tmp_path, catalog))
    assert all(r["stat_sig"] for r in catalog.rows.values())
    counts = IntakeCounts(2)
    for batch in stream(tmp_path, catalog, counts):
        counts.add(batch)
    assert (counts.read, counts.opened, counts.parsed, counts.skipped) == (5, 0, 0, 5)

    page = tmp_path / "part-0/page 02 é.md"
    before = os.stat(page)
    page.write_text(PAGE.format(i="two"), "utf-8")  # same size,
    os.utime(page, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime: the ctime moved
    counts = IntakeCounts(2)
    batches = stream(tmp_path, catalog, counts)
    for batch in batches:
        counts.add(batch)
    assert [r["doc_id"] for b in batches for r in b.rows] == ["part-0/page 02 é"]
    assert (counts.read, counts.opened, counts.skipped) == (5, 1, 4)
    # Another parsing context reads every file; read_all and reparse read them too.
    assert len([r for b in stream(tmp_path, catalog, context="other") for r in b.rows]) == 5
    catalog.learn(batches)
    assert sum(len(b.kept) for b in stream(tmp_path, catalog, read_all=True)) == 5
    assert sum(len(b.rows) for b in stream(tmp_path, catalog, reparse=True)) == 5


def test_tally_reports_whole_source_checks() -> None:
    tally = QualityTally(QualityPolicy(max_shrink=0.2), "src")
    newest = datetime(2026, 11, 1, tzinfo=UTC)
    report = tally.report(
        intake={"count": 7, "newest": newest, "untitled": ["a"]}, previous_doc_count=10,
        duplicates=({"b": ["file:///b.md", "file:///b.html"]}, [["c", "d"]]),
        now=datetime(2026, 11, 2, tzinfo=UTC))
    assert [(i.check, i.severity) for i in report.issues] == [
        ("missing_title", "warning"), ("duplicate_id", "error"),
        ("duplicate_content", "warning"), ("shrinkage", "error")]
    assert report.doc_count == 7 and report.newest_modified_at == newest
