"""Refresh cost vs full build at 50k and 200k chunks, index build variants, and a peer.

Run: python benchmarks/bench_scale.py [--chunks 50000 200000] [--no-peer] [--no-rejected]

One-chunk pages; a refresh changes 1.5% of the chunks: 1% of the pages modified,
0.5% deleted, 0.5% new. Prints, in one run against one PostgreSQL (embedded, 2 GB
shared buffers, unless KBREFRESH_DATABASE_URL is set):

- per size: full build and refresh wall time, their ratio, peak RSS of each, the
  index placement (delta or rebuild), and search latency with the delta segment;
- at the first size: HNSW build serial vs parallel workers and ``halfvec``, with
  index size and recall@10 against exact search;
- the build right after a rejected first version (rows reused into a table whose
  index exists);
- the peer: LangChain's indexing API (``index()`` + ``SQLRecordManager`` +
  ``langchain-postgres`` ``PGVector``, ``cleanup="full"``, ``DeterministicFakeEmbedding``)
  on the same pages and the same change, run by ``benchmarks/peer_langchain.py`` in
  its own virtualenv (``KBREFRESH_PEER_PYTHON``; see benchmarks/requirements-peer.txt:
  langchain-postgres needs pgvector < 0.4, kbrefresh pins 0.5.1).

Each phase runs in its own subprocess so its peak RSS is its own. Asserts nothing.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refresh import start_server, vocabulary

DIMS = 1536
PEER = Path(__file__).resolve().parent / "peer_langchain.py"


def write_page(path: Path, page: int, rng: random.Random, words: list[str], salt: str = "") -> None:
    text = " ".join(rng.choice(words) for _ in range(120))
    path.write_text(f"---\ntitle: Page {page}{salt}\ncategory: {'technical' if page % 3 else 'general'}\n"
                    f"updated: 2026-11-01\n---\n# Page {page}{salt}\n\n{text}{salt}.\n", "utf-8")


def page_path(root: Path, page: int) -> Path:
    return root / f"part-{page // 1000:04d}" / f"page-{page:07d}.md"


def make_pages(root: Path, pages: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    words = vocabulary(rng)
    for i in range(pages):
        path = page_path(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_page(path, i, rng, words)


def change_pages(root: Path, pages: int, seed: int = 2) -> dict[str, int]:
    """Modify 1% of the pages, delete 0.5%, add 0.5% new ones."""
    rng = random.Random(seed)
    words = vocabulary(random.Random(1))
    chosen = rng.sample(range(pages), int(pages * 0.015))
    modified, deleted = chosen[: int(pages * 0.01)], chosen[int(pages * 0.01):]
    for i in modified:
        write_page(page_path(root, i), i, rng, words, salt=" revised")
    for i in deleted:
        page_path(root, i).unlink()
    new = range(pages, pages + int(pages * 0.005))
    for i in new:
        page_path(root, i).parent.mkdir(parents=True, exist_ok=True)
        write_page(page_path(root, i), i, rng, words)
    return {"modified": len(modified), "deleted": len(deleted), "new": len(new)}


def phase(env: dict[str, str], *args: str, python: str = sys.executable,
          script: Path = Path(__file__)) -> dict[str, Any]:
    out = subprocess.run([python, str(script), *args], env=env, check=False,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"phase {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_refresh(kb: str, source: str, reject: bool = False) -> dict[str, Any]:
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.errors import GateFailed
    from kbrefresh.gate.policy import AcceptancePolicy, MetricRule
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh as refresh
    from kbrefresh.settings import Settings

    settings = Settings()
    # Cost, not quality: only smoke checks judge (random words make metrics meaningless);
    # ``reject`` adds a rule no version passes, to reproduce a rejected first version.
    rules = (MetricRule(metric="hit@5", slice="no such slice", lower_bound=1.0),) if reject else ()
    policy = AcceptancePolicy(rules=rules, max_slice_disparity=(), max_size_ratio=None)
    started = time.perf_counter()
    try:
        report = refresh(settings, RefreshRequest(kb=kb, source=source, reason="benchmark"),
                         embedder=OfflineEmbedder(dims=DIMS), policy=policy)
    except GateFailed:
        if not reject:
            raise
        return {"wall": time.perf_counter() - started, "rejected": True,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    wall = time.perf_counter() - started
    with connect(settings) as conn:
        counts = dict(store.version_row(conn, store.get_kb_id(conn, kb), report.version).counts)
    return {
        "wall": wall, "seconds": report.seconds, "chunks": report.chunks,
        "embedded": report.chunks_embedded, "reused": report.chunks_reused,
        "removed": report.chunks_removed, "version": report.version,
        "index_action": counts.get("index_action"), "delta_rows": counts.get("delta_rows"),
        "index_seconds": counts.get("index_seconds"), "index_workers": counts.get("index_workers"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def query_vectors(conn: Any, table: str, n: int) -> Any:
    """Embeddings of the first 12 words of ``n`` random pages (partial-match queries)."""
    from psycopg import sql

    from kbrefresh.embedders import OfflineEmbedder

    rows = conn.execute(sql.SQL("SELECT content FROM {} ORDER BY md5(id::text) LIMIT %s").format(
        sql.Identifier(table)), (n,)).fetchall()
    texts = [" ".join(r["content"].split()[:12]) for r in rows]
    return OfflineEmbedder(dims=DIMS).embed(texts)


def run_search_latency(kb: str) -> dict[str, Any]:
    """Median and p95 of search_version on the live version (with its delta) and on v1."""
    import numpy as np

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.serving import routing
    from kbrefresh.serving.search import SEARCH_SESSION_SQL, search_version
    from kbrefresh.settings import Settings

    out: dict[str, Any] = {}
    with connect(Settings()) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        assert live is not None
        fp = store.fingerprint_for_version(conn, kb_id, live)
        vectors = query_vectors(conn, fp.table, 300)
        conn.execute(SEARCH_SESSION_SQL)
        for label, version in (("live", live), ("v1", 1)):
            times = []
            for v in vectors:
                started = time.perf_counter()
                search_version(conn, fp, version, v, k=10, session_configured=True)
                times.append((time.perf_counter() - started) * 1000)
            out[label] = {"p50_ms": float(np.median(times[50:])),
                          "p95_ms": float(np.percentile(times[50:], 95))}
        out["delta_rows"] = store.delta_rows(conn, fp, live)
    return out


def run_index_variants(kb: str) -> dict[str, Any]:
    """HNSW build serial vs parallel, vector vs halfvec, on copies of the live version's rows."""
    from psycopg import sql

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.serving import routing
    from kbrefresh.settings import Settings

    settings = Settings()
    results: dict[str, Any] = {}
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        assert live is not None
        table = store.fingerprint_for_version(conn, kb_id, live).table
        auto = store.build_workers(conn, None)
        vectors = query_vectors(conn, table, 200)
        for storage in ("vector", "halfvec"):
            copy = f"bench_ix_{storage}"
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(copy)))
            conn.execute(sql.SQL(
                "CREATE TABLE {} AS SELECT id, embedding::{}({}) AS embedding FROM {} c WHERE ").format(
                sql.Identifier(copy), sql.SQL(storage), sql.Literal(DIMS), sql.Identifier(table))
                + store.in_version(), {"version": live})
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE EXTERNAL").format(
                sql.Identifier(copy)))
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(copy)))
            exact = _top10(conn, copy, storage, vectors, exact=True)
            for workers in ([0, auto] if storage == "vector" else [auto]):
                conn.execute("SELECT set_config('maintenance_work_mem', %s, false),"
                             " set_config('max_parallel_maintenance_workers', %s, false)",
                             (settings.maintenance_work_mem, str(workers)))
                name = f"{copy}_hnsw"
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
                started = time.perf_counter()
                conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding {})").format(
                    sql.Identifier(name), sql.Identifier(copy), sql.SQL(f"{storage}_cosine_ops")))
                seconds = time.perf_counter() - started
                size = conn.execute("SELECT pg_relation_size(%s::regclass) AS n", (name,)).fetchone()
                approx = _top10(conn, copy, storage, vectors, exact=False)
                recall = sum(len(set(a) & set(e)) for a, e in zip(approx, exact, strict=True)) / (
                    10 * len(exact))
                results[f"{storage}_w{workers}"] = {
                    "storage": storage, "workers": workers, "seconds": seconds,
                    "index_mb": int(size["n"]) / 2**20 if size else 0, "recall@10": recall,
                    "rows": conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(
                        sql.Identifier(copy))).fetchone()["n"]}  # type: ignore[index]
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(copy)))
    return results


def _top10(conn: Any, table: str, storage: str, vectors: Any, *, exact: bool) -> list[list[int]]:
    from psycopg import sql

    query = sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %s::{} LIMIT 10").format(
        sql.Identifier(table), sql.SQL(storage))
    out = []
    with conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 40")
        conn.execute("SET LOCAL enable_indexscan = " + ("off" if exact else "on"))
        conn.execute("SET LOCAL enable_seqscan = " + ("on" if exact else "off"))
        for v in vectors:
            out.append([r["id"] for r in conn.execute(query, (v,)).fetchall()])
    return out


def fmt(d: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 1) for k, v in d.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-rejected", action="store_true")
    parser.add_argument("--no-variants", action="store_true")
    parser.add_argument("--phase", default=None)
    parser.add_argument("--kb", default="bench")
    parser.add_argument("--source", default=None)
    args = parser.parse_args()
    if args.phase:
        result = {
            "refresh": lambda: run_refresh(args.kb, args.source),
            "reject": lambda: run_refresh(args.kb, args.source, reject=True),
            "latency": lambda: run_search_latency(args.kb),
            "variants": lambda: run_index_variants(args.kb),
        }[args.phase]()
        print(json.dumps(result))
        return

    print(f"date {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="kbrefresh-scale-"))
    env = dict(os.environ, KBREFRESH_DATA_DIR=str(tmp / "data"), KBREFRESH_MAINTENANCE_WORK_MEM="2GB",
               KBREFRESH_EMBEDDING_DIMS=str(DIMS), KBREFRESH_TRACKING="false")
    if "KBREFRESH_DATABASE_URL" not in env:
        env["KBREFRESH_DATABASE_URL"] = start_server(tmp / "pgdata")
    for i, chunks in enumerate(args.chunks):
        kb, source = f"bench{chunks}", tmp / f"pages{chunks}"
        make_pages(source, chunks)
        full = phase(env, "--phase", "refresh", "--kb", kb, "--source", str(source))
        print(f"[{chunks}] full build: {full['chunks']} chunks in {full['wall']:.1f}s "
              f"(index {full['index_action']} in {full['index_seconds']:.1f}s, "
              f"{full['index_workers']} parallel workers) {fmt(full['seconds'])}; "
              f"peak RSS {full['peak_rss_mb']:.0f} MB")
        peer_source = tmp / f"peer{chunks}"
        if i == 0 and not args.no_peer:  # the peer starts from the same pages
            subprocess.run(["cp", "-r", str(source), str(peer_source)], check=True)
        changed = change_pages(source, chunks)
        share = (changed["modified"] + changed["new"]) / chunks
        inc = phase(env, "--phase", "refresh", "--kb", kb, "--source", str(source))
        print(f"[{chunks}] refresh: {changed}: {share:.1%} of the chunks new or changed; embedded "
              f"{inc['embedded']}, reused {inc['reused']}, removed {inc['removed']} in "
              f"{inc['wall']:.1f}s; index {inc['index_action']} ({inc['delta_rows']} delta rows) "
              f"{fmt(inc['seconds'])}; peak RSS {inc['peak_rss_mb']:.0f} MB")
        print(f"RATIO [{chunks}] refresh/full wall time: {inc['wall'] / full['wall']:.3f} (target <= 0.05)")
        lat = phase(env, "--phase", "latency", "--kb", kb)
        print(f"[{chunks}] search k=10, 250 queries: live v{inc['version']} with {lat['delta_rows']} "
              f"delta rows p50 {lat['live']['p50_ms']:.2f} ms p95 {lat['live']['p95_ms']:.2f} ms; "
              f"v1 (index only) p50 {lat['v1']['p50_ms']:.2f} ms p95 {lat['v1']['p95_ms']:.2f} ms")
        if i == 0 and not args.no_variants:
            variants = phase(env, "--phase", "variants", "--kb", kb)
            for name, v in variants.items():
                print(f"[{chunks}] HNSW build {name}: {v['rows']} rows, {v['seconds']:.1f}s, "
                      f"index {v['index_mb']:.0f} MB, recall@10 vs exact {v['recall@10']:.3f}")
        if i == 0 and not args.no_peer:
            peer_python = os.environ.get("KBREFRESH_PEER_PYTHON", sys.executable)
            url = env["KBREFRESH_DATABASE_URL"]
            pf = phase(env, "full", str(peer_source), url, python=peer_python, script=PEER)
            print(f"[{chunks}] peer LangChain full: index() {pf['index_s']:.1f}s + HNSW "
                  f"{pf['hnsw_s']:.1f}s = {pf['index_s'] + pf['hnsw_s']:.1f}s "
                  f"({pf['result']}); peak RSS {pf['peak_rss_mb']:.0f} MB")
            change_pages(peer_source, chunks)
            pr = phase(env, "refresh", str(peer_source), url, python=peer_python, script=PEER)
            print(f"[{chunks}] peer LangChain refresh (same change): {pr['index_s']:.1f}s "
                  f"({pr['result']}); peak RSS {pr['peak_rss_mb']:.0f} MB")
            print(f"RATIO [{chunks}] peer refresh / kbrefresh refresh: "
                  f"{pr['index_s'] / inc['wall']:.1f}x (target >= 5)")
            print(f"RATIO [{chunks}] peer full to queryable index / kbrefresh full build: "
                  f"{(pf['index_s'] + pf['hnsw_s']) / full['wall']:.2f}x (target > 1)")
        if i == 0 and not args.no_rejected:
            rsource = tmp / f"pages{chunks}"
            rej = phase(env, "--phase", "reject", "--kb", f"{kb}r", "--source", str(rsource))
            after = phase(env, "--phase", "refresh", "--kb", f"{kb}r", "--source", str(rsource))
            print(f"[{chunks}] rejected first version {rej['wall']:.1f}s, then the build that "
                  f"reuses its {after['reused']} rows: {after['wall']:.1f}s, index "
                  f"{after['index_action']} in {after['index_seconds']:.1f}s "
                  f"{fmt(after['seconds'])}")
            print(f"RATIO [{chunks}] build after a rejected version / full build: "
                  f"{after['wall'] / full['wall']:.2f} (target <= 1)")
    print(f"end {time.strftime('%H:%M')}; load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
