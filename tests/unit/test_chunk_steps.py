"""Chunking in document batches: the same chunks, in the same order, as the plain loop."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence

from kbrefresh.build.chunking import chunk_document
from kbrefresh.models import Chunk, ChunkerConfig
from kbrefresh.refresh.chunk_steps import ChunkJob, chunk_batch, chunk_jobs, chunks_of
from tests.unit.test_chunking import make_doc

SMALL = ChunkerConfig(max_chars=200, overlap_chars=20, min_chars=0)
DOCS = [
    (make_doc(f"# Doc {i}\n\n" + "A sentence about billing. " * (i + 5), doc_id=f"d{i}"),
     SMALL if i % 2 else ChunkerConfig())
    for i in range(7)
]


def test_jobs_keep_order_and_size() -> None:
    jobs = chunk_jobs(DOCS, 3)
    assert [len(job.documents) for job in jobs] == [3, 3, 1]
    assert [doc.doc_id for job in jobs for doc, _ in job.documents] == [f"d{i}" for i in range(7)]
    assert chunk_jobs([], 3) == []


def test_batches_through_a_map_give_the_plain_loops_chunks() -> None:
    calls: list[int] = []

    def sequential(call: Callable[[ChunkJob], list[Chunk]], jobs: Sequence[ChunkJob]) -> Iterator[list[Chunk]]:
        for job in jobs:
            calls.append(len(job.documents))
            yield call(job)

    plain = [c for doc, chunker in DOCS for c in chunk_document(doc, chunker)]
    assert list(chunks_of(DOCS, chunk_map=sequential, batch_docs=2)) == plain
    assert calls == [2, 2, 2, 1]
    assert list(chunks_of(iter(DOCS))) == plain
    assert len({c.chunk_index for c in plain if c.doc_id == "d5"}) > 1  # the small chunker cut


def test_a_job_travels_to_another_process_and_back() -> None:
    job = chunk_jobs(DOCS, 7)[0]
    assert chunk_batch(pickle.loads(pickle.dumps(job))) == chunk_batch(job)
