"""The peer of bench_scale.py: LangChain's indexing API on the same pages and PostgreSQL.

Run by bench_scale.py in its own virtualenv (benchmarks/requirements-peer.txt):
    python peer_langchain.py full|refresh <pages dir> <postgres url>

``index()`` with a ``SQLRecordManager`` and a ``langchain-postgres`` ``PGVector``
(vector(1536) column, JSONB metadata), ``cleanup="full"``, ``source_id_key="source"``,
``DeterministicFakeEmbedding``: one document per page (the pages are one chunk each).
``full`` also builds the HNSW cosine index after the load (maintenance_work_mem 2GB,
the same parallel workers kbrefresh's auto sizing picks here) so the store is
queryable as fast as kbrefresh's; ``refresh`` re-indexes with that index in place.
Prints one JSON line; imports nothing from kbrefresh.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import psycopg
from langchain_classic.indexes import SQLRecordManager
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.indexing import index
from langchain_postgres import PGVector

DIMS = 1536
DB = "peer_langchain"


def main() -> None:
    mode, root, url = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if mode == "full":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB}")
            conn.execute(f"CREATE DATABASE {DB}")
    db_url = url.replace("/postgres?", f"/{DB}?", 1).replace("postgresql://", "postgresql+psycopg://", 1)
    store = PGVector(embeddings=DeterministicFakeEmbedding(size=DIMS), collection_name="pages",
                     connection=db_url, use_jsonb=True, embedding_length=DIMS)
    manager = SQLRecordManager("pgvector/pages", db_url=db_url)
    manager.create_schema()
    docs = [Document(page_content=p.read_text("utf-8"), metadata={"source": str(p.relative_to(root))})
            for p in sorted(root.rglob("*.md"))]
    started = time.perf_counter()
    result = index(docs, manager, store, cleanup="full", source_id_key="source")
    index_s = time.perf_counter() - started
    hnsw_s = 0.0
    if mode == "full":
        pg_url = url.replace("/postgres?", f"/{DB}?", 1)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            workers = min(int(conn.execute("SHOW max_parallel_workers").fetchone()[0]),  # type: ignore[index]
                          max((os.cpu_count() or 1) - 1, 0))
            conn.execute("SET maintenance_work_mem = '2GB'")
            conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
            started = time.perf_counter()
            conn.execute("CREATE INDEX ON langchain_pg_embedding USING hnsw (embedding vector_cosine_ops)")
            hnsw_s = time.perf_counter() - started
    print(json.dumps({"index_s": index_s, "hnsw_s": hnsw_s, "result": dict(result),
                      "docs": len(docs),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
