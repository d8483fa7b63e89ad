"""Chunking in batches of documents, so a runner can spread it (e.g. over a Dask cluster).

``prepare_data`` chunks the documents it must stage. By default it does so in its own
process; given a ``ChunkMap`` (the runner's ``map``), it cuts them into ``ChunkJob``
batches and runs ``chunk_batch`` on each wherever the runner sends it. Parsing Markdown
and HTML is the CPU-bound part of preparing data, and threads would share one
interpreter lock, so only a runner with processes (Dask) is worth a fan-out.
Batches come back in order, so the staged chunks are those of the plain loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from kbrefresh.build.chunking import chunk_document
from kbrefresh.models import Chunk, ChunkerConfig, Document

ChunkMap = Callable[[Callable[["ChunkJob"], list[Chunk]], Sequence["ChunkJob"]], Iterable[list[Chunk]]]


@dataclass(frozen=True)
class ChunkJob:
    """Documents to chunk, each with its own chunker (its segment's profile, or the default)."""

    documents: tuple[tuple[Document, ChunkerConfig], ...]


def chunk_batch(job: ChunkJob) -> list[Chunk]:
    """Return the chunks of every document of ``job``, in order."""
    return [chunk for doc, chunker in job.documents for chunk in chunk_document(doc, chunker)]


def chunk_jobs(documents: Iterable[tuple[Document, ChunkerConfig]], size: int) -> list[ChunkJob]:
    """Cut ``documents`` into jobs of at most ``size`` documents, keeping their order."""
    items = list(documents)
    return [ChunkJob(tuple(items[i:i + size])) for i in range(0, len(items), size)]


def chunks_of(
    documents: Iterable[tuple[Document, ChunkerConfig]],
    *,
    chunk_map: ChunkMap | None = None,
    batch_docs: int = 200,
) -> Iterator[Chunk]:
    """Yield the chunks of ``documents`` in order: here, or batch by batch through ``chunk_map``."""
    if chunk_map is None:
        for doc, chunker in documents:
            yield from chunk_document(doc, chunker)
        return
    for chunks in chunk_map(chunk_batch, chunk_jobs(documents, batch_docs)):
        yield from chunks
