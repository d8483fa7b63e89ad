"""Query drift over a large query log, end to end; and the Retriever's overhead.

Run: python benchmarks/bench_drift.py [--queries 100000] [--repeat 3]

Inserts synthetic ``query_log`` rows (64-d sketches around fixed cluster centres,
top documents in "technical"/"general"), 80% in the reference window and 20% in
the recent one, then times ``kbrefresh.signals.query_drift`` (connect, fetch,
k-means, comparisons) and its fetch alone. When ``kbrefresh.retriever`` exists it
also builds a small KB and compares ``Retriever.search`` (routing, embedding,
logging) with a bare ``search_version`` on the same vectors. Prints measurements;
asserts nothing. Uses an embedded PostgreSQL in a temporary directory unless
KBREFRESH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIMS, CENTRES, DOCS = 64, 8, 1000
TECHNICAL_CENTRES = 3  # centres 0..2 are technical questions, the rest general


def seed_log(conn: object, kb_id: int, n: int, now: datetime, seed: int = 0) -> None:
    """COPY ``n`` queries: 80% over the 28 days before the last week, 20% in the last week."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIMS))
    recent = rng.random(n) < 0.2
    # Technical share grows from ~30% to ~45% in the recent week.
    weights_ref = np.array([0.1] * TECHNICAL_CENTRES + [0.14] * (CENTRES - TECHNICAL_CENTRES))
    weights_cur = np.array([0.15] * TECHNICAL_CENTRES + [0.11] * (CENTRES - TECHNICAL_CENTRES))
    picks = np.where(recent, rng.choice(CENTRES, n, p=weights_cur / weights_cur.sum()),
                     rng.choice(CENTRES, n, p=weights_ref / weights_ref.sum()))
    sketches = (centres[picks] + 0.6 * rng.normal(size=(n, DIMS))).astype(np.float32)
    age = np.where(recent, rng.random(n) * 7, 7 + rng.random(n) * 28)
    sims = rng.uniform(0.1, 0.9, n)
    docs = rng.integers(0, DOCS // 2, n)
    with conn.cursor().copy(  # type: ignore[attr-defined]
        "COPY query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
        " top_doc_ids, top_similarity, query_sketch) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["uuid", "int4", "timestamptz", "text", "text", "int4", "float4",
                        "text[]", "float4", "float4[]"])
        for i in range(n):
            kind = "technical" if picks[i] < TECHNICAL_CENTRES else "general"
            copy.write_row((uuid.uuid4(), kb_id, now - timedelta(days=float(age[i])),
                            f"s{i % 5000}", f"question {i}", 1, 12.5,
                            [f"{kind}/doc-{docs[i]}"], float(sims[i]), sketches[i].tolist()))


def seed_catalog(conn: object, kb_id: int) -> None:
    with conn.cursor().copy(  # type: ignore[attr-defined]
        "COPY kb_documents (kb_id, doc_id, uri, title, category, content_hash) FROM STDIN"
    ) as copy:
        for kind in ("technical", "general"):
            for i in range(DOCS // 2):
                copy.write_row((kb_id, f"{kind}/doc-{i}", f"file:///{kind}/{i}", f"doc {i}",
                                kind, "h"))


def bench_drift(n: int, repeat: int) -> None:
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.retraining.signals import _fetch_queries, query_drift
    from kbrefresh.settings import Settings

    settings, now = Settings(), datetime.now(UTC)
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, f"bench-drift-{uuid.uuid4().hex[:8]}")
        seed_catalog(conn, kb_id)
        started = time.perf_counter()
        seed_log(conn, kb_id, n, now)
        conn.commit()
        conn.execute("ANALYZE query_log")
        conn.commit()
        print(f"seeded {n:,} queries in {time.perf_counter() - started:.1f} s")
    totals, fetches = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        with connect(settings) as conn:
            drift = query_drift(conn, kb_id, now)
        totals.append(time.perf_counter() - started)
        with connect(settings) as conn:
            started = time.perf_counter()
            split = now - timedelta(days=7)
            _fetch_queries(conn, kb_id, split - timedelta(days=28), split, now)
            fetches.append(time.perf_counter() - started)
    print(f"query_drift over {drift.reference_size:,} + {drift.current_size:,} queries: "
          f"median {statistics.median(totals):.2f} s, best {min(totals):.2f} s "
          f"(fetch + decode alone: median {statistics.median(fetches):.2f} s) "
          f"over {repeat} runs")
    print(f"  result: {drift.severity}, KL {drift.kl:.3f}; "
          + "; ".join(f"{v.view}: {', '.join(map(str, v.grown)) or '-'}" for v in drift.views))


def bench_retriever(queries: int = 300) -> None:
    if importlib.util.find_spec("kbrefresh.serving.retriever") is None:
        print("kbrefresh.serving.retriever not found: Retriever overhead skipped")
        return
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.policy import AcceptancePolicy
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh
    from kbrefresh.serving.retriever import Retriever
    from kbrefresh.serving.search import search_version
    from kbrefresh.settings import Settings

    settings, kb = Settings(), f"bench-retriever-{uuid.uuid4().hex[:8]}"
    embedder = OfflineEmbedder(dims=DIMS)
    with tempfile.TemporaryDirectory() as corpus:
        for i in range(200):
            kind = "technical" if i % 2 else "general"
            path = Path(corpus) / kind / f"doc-{i}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# Article {i}\n\nHow feature {i} works for {kind} users, "
                            f"step {i % 7} of setting up workspace option {i * 3}.\n", "utf-8")
        run_refresh(settings, RefreshRequest(kb=kb, source=corpus), embedder=embedder,
                    policy=AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None))
    texts = [f"how does feature {i} work" for i in range(queries)]
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        version = store.list_versions(conn, kb_id)[0].version
        table = store.fingerprint_for_version(conn, kb_id, version).table
        started = time.perf_counter()
        for text in texts:
            search_version(conn, table, version, embedder.embed([text])[0], k=5)
        bare = (time.perf_counter() - started) / queries
    with Retriever(kb, settings=settings, embedder=embedder) as retriever:
        retriever.search(texts[0])  # first search loads routing and the version's table
        started = time.perf_counter()
        for text in texts:
            retriever.search(text, k=5, session_id=text)
        served = (time.perf_counter() - started) / queries
        retriever.flush()
    print(f"Retriever.search {served * 1000:.2f} ms vs bare embed + search_version "
          f"{bare * 1000:.2f} ms per query: overhead {(served - bare) * 1000:+.2f} ms "
          f"({served / bare:.2f}x) over {queries} queries, logging included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        os.environ.setdefault("KBREFRESH_DATA_DIR", data_dir)
        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
        bench_drift(args.queries, args.repeat)
        bench_retriever()


if __name__ == "__main__":
    main()
