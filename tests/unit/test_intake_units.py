"""The streamed intake without a database: keys, kept files, batches, the tally."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
from kbrefresh.build.sources.directory import DirectoryReader
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
    files = list(reader.files())
    assert [f.doc_id for f in files] == ["part-0/page 00 é", "part-0/page 02 é", "part-1/page 01 é"]
    assert [f.uri for f in files] == [
        (tmp_path / f"{f.rel}").absolute().as_uri() for f in files]
    assert reader.skipped == 1


def lookup_from(catalog: Mapping[str, Mapping[str, Any]]) -> Any:
    def lookup(doc_ids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        return {d: catalog[d] for d in doc_ids if d in catalog}
    return lookup


def test_files_with_their_stored_key_are_kept_not_parsed(tmp_path: Path) -> None:
    write(tmp_path, 5)
    context = context_key(None, ChunkerConfig(), QualityPolicy())
    first = list(stream_source(str(tmp_path), query=None, lookup=lookup_from({}), batch_size=2,
                               profiles=None, chunker=ChunkerConfig(), context=context))
    counts = IntakeCounts(2)
    for batch in first:
        counts.add(batch)
    assert counts.as_counts() == {"documents_read": 5, "documents_parsed": 5,
                                  "documents_skipped": 0, "read_batches": 3,
                                  "read_batch_size": 2, "largest_read_batch": 2}
    catalog = {r["doc_id"]: {"source_key": r["source_key"], "content_hash": r["content_hash"],
                             "base_hash": r["content_hash"], "mtime_dated": False}
               for b in first for r in b.rows}
    (tmp_path / "part-1/page 01 é.md").write_text(PAGE.format(i="one"), "utf-8")
    again = list(stream_source(str(tmp_path), query=None, lookup=lookup_from(catalog),
                               batch_size=2, profiles=None, chunker=ChunkerConfig(),
                               context=context))
    assert [r["doc_id"] for b in again for r in b.rows] == ["part-1/page 01 é"]
    assert [p.document.doc_id for b in again for p in b.changed] == ["part-1/page 01 é"]
    assert sorted(k[0] for b in again for k in b.kept) == [
        "part-0/page 00 é", "part-0/page 02 é", "part-0/page 04 é", "part-1/page 03 é"]
    # Another quality limit is another context: every file is parsed again.
    other = context_key(None, ChunkerConfig(), QualityPolicy(min_chars=5))
    assert other != context
    assert source_key(b"x", "file:///a", context) != source_key(b"x", "file:///a", other)


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


def test_prefetched_keeps_order_raises_the_producers_error_and_stops_when_closed() -> None:
    import threading

    from kbrefresh.build.intake import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    got: list[int] = []
    with pytest.raises(OSError, match="disk gone"):
        got.extend(prefetched(failing()))
    assert got == [1]

    produced: list[int] = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetched(endless(), depth=1)
    assert next(stream) == 0
    stream.close()  # the consumer stops: the producer thread must end, not run on
    assert not [t for t in threading.enumerate() if t.name == "kbrefresh-source-reader"]
    assert len(produced) <= 3
