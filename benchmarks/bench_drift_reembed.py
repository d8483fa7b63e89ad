"""Drift-biased re-embedding of one segment of the Python manual (``corpus_pydoc.py``).

Run: python benchmarks/bench_drift_reembed.py [--segment c-api] [--out /tmp/kbrefresh-pydoc]
         [--seeds 0,1,2,3,4] [--skip-full]

Live v1 is built from ``v1/`` with the default chunking; then the segment gets a profile
(smaller chunks, the category in each chunk's header) and the same code path as the
``drift-reembed`` flow runs: the refresh sequence with the profile (publish=False), the
adapter training (seeded 80/10/10), the held-out comparison. Prints held-out hit@5 and
nDCG@10 of the segment for live, profile, profile + adapter; the other segments' deltas;
chunks embedded; wall time against a full build with the profile. Offline embedder,
embedded PostgreSQL in a temporary directory; asserts nothing.

Power: the adapter ships on an exact one-sided McNemar test (binomtest on the discordant
held-out queries). With the win and loss rates measured over ``--seeds`` splits, it prints
the probability that the test reaches p < 0.05 on a held-out set of the split's size, and
the held-out size that would reach it 80% of the time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mcnemar_power(n: int, p_win: float, p_loss: float, alpha: float = 0.05) -> float:
    """P(exact one-sided McNemar p < alpha) for ``n`` paired queries with these rates."""
    if n == 0 or p_win + p_loss == 0:
        return 0.0
    d = np.arange(n + 1)
    # Smallest number of wins among d discordant pairs with P(W >= w | d, 1/2) < alpha.
    w = np.arange(n + 2)
    w_min = np.array([int(w[np.argmax(binom.sf(w - 1, k, 0.5) < alpha)])
                      if binom.sf(k - 1, k, 0.5) < alpha else k + 1 for k in d])
    share = p_win / (p_win + p_loss)
    return float(np.sum(binom.pmf(d, n, p_win + p_loss) * binom.sf(w_min - 1, d, share)))


def heldout_needed(p_win: float, p_loss: float, power: float = 0.8, limit: int = 5000) -> int:
    """The smallest held-out size whose McNemar power reaches ``power`` (0 if never by limit)."""
    n = 1
    while n <= limit:
        if mcnemar_power(n, p_win, p_loss) >= power:
            return n
        n += 1 if n < 200 else 10
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segment", default="c-api")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kbrefresh-pydoc"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="", help="more split seeds for the power estimate")
    parser.add_argument("--skip-full", action="store_true", help="no full build for timing")
    args = parser.parse_args()

    from benchmarks.corpus_pydoc import build_corpus
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.embedders import make_embedder
    from kbrefresh.gate.evaluation import load_golden
    from kbrefresh.gate.policy import AcceptancePolicy
    from kbrefresh.gate.segment import judge_segment
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh
    from kbrefresh.retraining import adapter as qa
    from kbrefresh.retraining import segment_training as training
    from kbrefresh.retraining.profiles import load_profiles
    from kbrefresh.settings import Settings

    if not (args.out / "v1").is_dir():
        build_corpus(args.out, seed=7)
    tmp = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    settings = Settings(data_dir=tmp / "data", tracking=False)
    embedder = make_embedder(settings)
    open_gate = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
    source = str(args.out / "v1")
    v1_ids = {str(p.relative_to(args.out / "v1").with_suffix("")) for p in
              (args.out / "v1").rglob("*.html")}
    golden = tmp / "golden.jsonl"
    rows = [json.loads(line) for line in (args.out / "golden.jsonl").read_text().splitlines()]
    kept = [r for r in rows if set(r["relevant"]) <= v1_ids]
    golden.write_text("".join(json.dumps(r) + "\n" for r in kept))
    profile = tmp / "kb.yaml"
    profile.write_text(f"segments:\n  {args.segment}:\n    category: {args.segment}\n"
                       "    max_chars: 500\n    overlap_chars: 60\n"
                       '    header_template: "{category} › {title} › {section}\\n\\n{text}"\n')

    started = time.perf_counter()
    live = run_refresh(settings, RefreshRequest(kb="pydoc", source=source), embedder=embedder,
                       policy=open_gate)
    full_default = time.perf_counter() - started
    load_golden(settings, "pydoc", golden)
    started = time.perf_counter()
    cand = run_refresh(settings, RefreshRequest(kb="pydoc", source=source, publish=False,
                                                profile_file=str(profile)),
                       embedder=embedder, policy=open_gate)
    reembed_refresh = time.perf_counter() - started
    seg = load_profiles(profile).require(args.segment)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "pydoc")
        docs = training.segment_doc_ids(conn, kb_id, cand.version, seg)
        t0 = time.perf_counter()
        tr = training.train_adapter(conn, kb_id, cand.version, args.segment, segment_docs=docs,
                                    embedder=embedder, seed=args.seed)
        train_seconds = time.perf_counter() - t0
        held = list(tr.split.heldout)
        raw = qa.normalize(embedder.embed([q.query for q in held]))
        table = store.fingerprint_for_version(conn, kb_id, live.version).table
        base = training.run_queries(conn, table, live.version, held, raw)
        runs = []
        for s in sorted({args.seed, *(int(x) for x in args.seeds.split(",") if x)}):
            other = tr if s == args.seed else training.train_adapter(
                conn, kb_id, cand.version, args.segment, segment_docs=docs, embedder=embedder,
                seed=s)
            runs.append((s, other.verdict))
    profile_only = judge_segment(base, tr.without, args.segment)
    both = judge_segment(base, tr.with_adapter, args.segment)

    started = time.perf_counter()
    full = None if args.skip_full else run_refresh(
        settings, RefreshRequest(kb="pydoc-full", source=source, profile_file=str(profile)),
        embedder=embedder, policy=open_gate)
    full_profile = time.perf_counter() - started

    t = both.target
    print(f"corpus: {source} ({live.documents} pages, {live.chunks} chunks at v1); golden "
          f"queries answerable in v1: {len(kept)}; segment {args.segment!r}: {len(docs)} pages")
    print(f"adapter split (seed {args.seed}): {len([q for q in tr.split.train if q.slice == args.segment])} "
          f"train + {tr.feedback} feedback pairs, {len(tr.split.val)} val, "
          f"{t.n} held-out segment queries; λ={tr.fit.lam:g}; val loss "
          f"{tr.fit.identity_val_loss:.4f} (no adapter) -> "
          f"{min(v for _, v in tr.fit.val_losses):.4f}")
    print(f"held-out {args.segment!r} hit@5: live {t.hit_before:.3f}, profile "
          f"{profile_only.target.hit_after:.3f}, profile+adapter {t.hit_after:.3f}")
    print(f"held-out {args.segment!r} nDCG@10: live {t.ndcg_before:.3f}, profile "
          f"{profile_only.target.ndcg_after:.3f}, profile+adapter {t.ndcg_after:.3f}")
    print(f"segment gate, profile vs live: {profile_only.summary()}")
    print(f"segment gate, profile+adapter vs live: {both.summary()}")
    print(f"adapter gate (with vs without, what decides shipping): {tr.verdict.summary()}")
    for name in sorted(both.others):
        p, b = profile_only.others[name], both.others[name]
        print(f"  other {name!r} (n={b.n}): hit@5 {b.hit_before:.3f} -> profile "
              f"{p.hit_after:.3f} ({p.gain * 100:+.1f}) -> +adapter {b.hit_after:.3f} "
              f"({b.gain * 100:+.1f})")
    for s, v in runs:
        print(f"  adapter gate, split seed {s}: {v.summary()}")
    n_all = sum(v.target.n for _, v in runs)
    p_win = sum(v.target.improved for _, v in runs) / n_all
    p_loss = sum(v.target.worsened for _, v in runs) / n_all
    print(f"power over {len(runs)} splits ({n_all} held-out answers): wins {p_win:.3f}, losses "
          f"{p_loss:.3f} per query; P(McNemar p < 0.05) with n={t.n}: "
          f"{mcnemar_power(t.n, p_win, p_loss):.2f}; held-out size for 80% power: "
          f"{heldout_needed(p_win, p_loss) or 'over 5000'} (the split keeps 10% of the "
          f"segment's golden queries)")
    print(f"chunks embedded: re-embed {cand.chunks_embedded} (segment only: "
          f"{cand.documents_changed} pages changed), reused {cand.chunks_reused}; full build "
          f"with the profile {full.chunks_embedded if full else 'skipped'}")
    print(f"wall time: re-embed refresh {reembed_refresh:.1f} s + adapter training "
          f"{train_seconds:.1f} s; full build with the profile {full_profile:.1f} s "
          f"(first default build {full_default:.1f} s)")
    print(f"matrix {tr.adapter.matrix.shape}, ||W - I||_F = "
          f"{float(np.linalg.norm(tr.adapter.matrix - np.eye(tr.adapter.dims))):.3f}")


if __name__ == "__main__":
    main()
