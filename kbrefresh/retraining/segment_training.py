"""Train and judge a segment's query adapter on one KB version, from Postgres data.

Pairs: the KB's golden queries of the segment (split 80/10/10 under a seed, per slice)
plus positively rated queries from the query log (rating >= 4 or thumbs up) whose top
document is the segment's; they only ever join the training split. Targets: the mean
chunk vector of each relevant document in the version. λ is chosen on the validation
split; the verdict compares the version with and without the adapter on the held-out
queries (the segment's test split, the other slices' validation and test splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from psycopg import sql

from kbrefresh import store
from kbrefresh.embedders import Embedder
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import stored_golden
from kbrefresh.gate.golden import GoldenQuery
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.gate.segment import SegmentPolicy, SegmentVerdict, judge_segment
from kbrefresh.retraining import adapter as qa
from kbrefresh.retraining.profiles import SegmentProfile
from kbrefresh.serving.search import search_version

MIN_TRAIN_PAIRS = 5
EVAL_DEPTH = 10


@dataclass(frozen=True)
class Split:
    train: tuple[GoldenQuery, ...]
    val: tuple[GoldenQuery, ...]
    heldout: tuple[GoldenQuery, ...]  # the segment's test split + other slices' val and test


def split_golden(golden: Sequence[GoldenQuery], segment: str, seed: int) -> Split:
    """Split each slice's queries 80/10/10 with ``seed``; duplicates by text count once."""
    unique = list({q.query: q for q in golden}.values())
    train: list[GoldenQuery] = []
    val: list[GoldenQuery] = []
    held: list[GoldenQuery] = []
    for name in sorted({q.slice for q in unique}):
        items = [q for q in unique if q.slice == name]
        tr, va, te = qa.split_indices(len(items), seed)
        train += [items[i] for i in tr]
        if name == segment:
            val += [items[i] for i in va]
            held += [items[i] for i in te]
        else:
            held += [items[i] for i in va + te]
    return Split(tuple(train), tuple(val), tuple(held))


def feedback_pairs(conn: store.Conn, kb_id: int, segment_docs: set[str]) -> list[GoldenQuery]:
    """Positively rated queries whose top document is one of the segment's."""
    rows = conn.execute(
        "SELECT DISTINCT ON (q.query) q.query, q.top_doc_ids[1] AS doc FROM query_log q "
        "JOIN feedback f ON f.query_id = q.query_id WHERE q.kb_id = %s AND q.error IS NULL "
        "AND cardinality(q.top_doc_ids) > 0 AND (f.rating >= 4 OR f.thumbs) "
        "ORDER BY q.query, q.ts DESC", (kb_id,),
    ).fetchall()
    return [GoldenQuery(r["query"], (r["doc"],), "", "feedback") for r in rows
            if r["doc"] in segment_docs]


def doc_vectors(conn: store.Conn, table: str, version: int) -> dict[str, qa.F32]:
    """Each document's mean chunk vector in ``version`` (pgvector's avg)."""
    rows = conn.execute(
        sql.SQL("SELECT c.doc_id, avg(c.embedding) AS v FROM {} c WHERE ").format(
            sql.Identifier(table)) + store.in_version() + sql.SQL(" GROUP BY c.doc_id"),
        {"version": version},
    ).fetchall()
    return {r["doc_id"]: qa.normalize(np.asarray(r["v"].to_numpy(), dtype=np.float32))[0]
            for r in rows}


def run_queries(
    conn: store.Conn, table: str, version: int, queries: Sequence[GoldenQuery],
    vectors: qa.F32,
) -> list[QueryResult]:
    out = []
    for q, vec in zip(queries, vectors, strict=True):
        hits = search_version(conn, table, version, vec, k=EVAL_DEPTH)
        out.append(QueryResult(q.query, q.slice, tuple(h.doc_id for h in hits), q.relevant, 0.0))
    return out


@dataclass(frozen=True)
class AdapterTraining:
    adapter: qa.QueryAdapter
    fit: qa.RidgeFit
    split: Split
    feedback: int
    data_version: str
    without: list[QueryResult]  # held-out, this version, no adapter
    with_adapter: list[QueryResult]
    verdict: SegmentVerdict  # with vs without the adapter, held-out


def segment_doc_ids(conn: store.Conn, kb_id: int, version: int, profile: SegmentProfile) -> set[str]:
    rows = conn.execute(
        "SELECT d.doc_id, d.category FROM kb_documents d JOIN kb_version_documents v "
        "USING (kb_id, doc_id) WHERE d.kb_id = %s AND v.version = %s", (kb_id, version),
    ).fetchall()
    return {r["doc_id"] for r in rows if profile.matches(r["doc_id"], r["category"])}


def train_adapter(
    conn: store.Conn, kb_id: int, version: int, segment: str, *, segment_docs: set[str],
    embedder: Embedder, seed: int, policy: SegmentPolicy | None = None,
) -> AdapterTraining:
    """Fit the segment's adapter on ``version`` and judge it on held-out queries.

    Raises:
        ConfigError: the segment has too few golden queries to train and test on.
    """
    golden = [q for q in stored_golden(conn, kb_id) if q.slice]
    split = split_golden(golden, segment, seed)
    seg_train = [q for q in split.train if q.slice == segment]
    held_text = {q.query for q in split.val + split.heldout}
    extra = [q for q in feedback_pairs(conn, kb_id, segment_docs) if q.query not in held_text]
    pairs = seg_train + [q for q in extra if q.query not in {p.query for p in seg_train}]
    if len(pairs) < MIN_TRAIN_PAIRS or not split.val or not any(
            q.slice == segment for q in split.heldout):
        raise ConfigError(f"segment {segment!r} has {len(pairs)} training pairs and "
                          f"{sum(q.slice == segment for q in split.heldout)} held-out queries; "
                          f"expected at least {MIN_TRAIN_PAIRS} and 1 (load its golden queries)")
    table = store.fingerprint_for_version(conn, kb_id, version).table
    docs = doc_vectors(conn, table, version)
    texts = sorted({q.query for q in [*split.train, *split.val, *split.heldout, *pairs]})
    vec = dict(zip(texts, qa.normalize(embedder.embed(texts)), strict=True))

    def targets(qs: Sequence[GoldenQuery]) -> tuple[list[qa.F32], list[qa.F32]]:
        kept = [q for q in qs if any(d in docs for d in q.relevant)]
        return ([vec[q.query] for q in kept],
                [qa.normalize(np.mean([docs[d] for d in q.relevant if d in docs], axis=0))[0]
                 for q in kept])

    tq, td = targets(pairs)
    vq, vd = targets(split.val)
    fit = qa.choose_ridge(np.stack(tq), np.stack(td), np.stack(vq), np.stack(vd))
    centroids = qa.centroids_of([vec[q.query] for q in split.train],
                                [q.slice for q in split.train])
    adapter = qa.QueryAdapter(segment, fit.matrix, centroids)
    held = list(split.heldout)
    raw = np.stack([vec[q.query] for q in held])
    without = run_queries(conn, table, version, held, raw)
    with_adapter = run_queries(conn, table, version, held, adapter.apply(raw))
    verdict = judge_segment(without, with_adapter, segment, policy)
    metrics = {"heldout_hit5_without": verdict.target.hit_before,
               "heldout_hit5_with": verdict.target.hit_after,
               "heldout_ndcg10_without": verdict.target.ndcg_before,
               "heldout_ndcg10_with": verdict.target.ndcg_after,
               "p_value": verdict.p_value, "lambda": fit.lam, "train_loss": fit.train_loss,
               "val_loss": min(loss for _, loss in fit.val_losses),
               "val_loss_identity": fit.identity_val_loss}
    adapter = qa.QueryAdapter(segment, fit.matrix, centroids, metrics)
    return AdapterTraining(adapter, fit, split, len(extra), qa.data_version(
        [(q.query, q.relevant) for q in pairs]), without, with_adapter, verdict)
