"""Run golden queries against a candidate and the live version, then judge them.

Queries are embedded once per fingerprint (outside the timed part), then searched on
candidate and live alternately, so both see the same cache and load; latency compares
only such side-by-side timings (reused live results are not timed). The candidate's
other queries, whose timings nothing compares, are split over two connections
(``gate.runs``). Chunks map to their documents, so labels survive re-chunking."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import embedder_for_spec
from kbrefresh.errors import ConfigError
from kbrefresh.gate.golden import GoldenQuery, load_golden_file, unknown_doc_ids
from kbrefresh.gate.latency import confirm_latency, side_by_side_only
from kbrefresh.gate.metrics import MetricTable, QueryResult, aggregate, smoke_failures
from kbrefresh.gate.policy import AcceptancePolicy, default_policy
from kbrefresh.gate.reuse import store_results, stored_results, timed_queries
from kbrefresh.gate.runs import WARM_CONNECTION, WARMUP, run_alone, run_side_by_side
from kbrefresh.gate.verdict import Verdict, evaluate_gate
from kbrefresh.retraining.adapter import QueryAdapter, apply_adapters, load_adapters
from kbrefresh.retraining.rebrand_expansion import query_expander
from kbrefresh.serving import routing
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

AUTO_SET = "auto-titles"
_AUTO_LIMIT = 200


@dataclass(frozen=True)
class GoldenLoadReport:
    loaded: int
    sets: dict[str, int]
    unknown_ids: dict[str, list[int]]


def load_golden(settings: Settings, kb: str, path: str | Path) -> GoldenLoadReport:
    """Store the golden queries of ``path`` for ``kb``, replacing the sets the file names.

    Ids unknown to the KB's document catalog are stored anyway and reported.
    """
    queries = load_golden_file(path)
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, kb)
        known = {
            r["doc_id"]
            for r in conn.execute(
                "SELECT doc_id FROM kb_documents WHERE kb_id = %s AND deleted_at IS NULL", (kb_id,)
            ).fetchall()
        }
        sets = sorted({q.set_name for q in queries})
        conn.execute(
            "DELETE FROM golden_queries WHERE kb_id = %s AND set_name = ANY(%s)", (kb_id, sets)
        )
        with conn.cursor().copy(
            "COPY golden_queries (kb_id, set_name, query, relevant, slice) FROM STDIN"
        ) as copy:
            for q in queries:
                copy.write_row((kb_id, q.set_name, q.query, list(q.relevant), q.slice))
        conn.commit()
    counts = {s: sum(1 for q in queries if q.set_name == s) for s in sets}
    return GoldenLoadReport(len(queries), counts, unknown_doc_ids(queries, known))


def stored_golden(
    conn: store.Conn, kb_id: int, sets: Sequence[str] | None = None
) -> list[GoldenQuery]:
    rows = conn.execute(
        "SELECT query, relevant, slice, set_name FROM golden_queries WHERE kb_id = %s"
        " AND archived_at IS NULL AND (%s::text[] IS NULL OR set_name = ANY(%s::text[])) ORDER BY set_name, id",
        (kb_id, list(sets) if sets else None, list(sets) if sets else None),
    ).fetchall()
    return [GoldenQuery(r["query"], tuple(r["relevant"]), r["slice"], r["set_name"]) for r in rows]


def auto_golden(conn: store.Conn, kb_id: int, versions: Sequence[int]) -> list[GoldenQuery]:
    """Known-item queries from document titles, for documents in every given version."""
    # Read in md5 order off an index (migration 0017), stopping at the limit.
    rows = conn.execute(
        "SELECT d.doc_id, d.title FROM kb_documents d WHERE d.kb_id = %s AND NOT EXISTS ("
        " SELECT 1 FROM unnest(%s::int[]) AS v(version) WHERE NOT EXISTS ("
        " SELECT 1 FROM kb_version_documents m WHERE m.kb_id = d.kb_id AND m.version = v.version"
        " AND m.doc_id = d.doc_id)) ORDER BY md5(d.doc_id) LIMIT %s",
        (kb_id, sorted(set(versions)), _AUTO_LIMIT),
    ).fetchall()
    # One slice: per-category disparity on synthetic title queries would be noise.
    return [GoldenQuery(r["title"], (r["doc_id"],), "all", AUTO_SET) for r in rows]


def version_sizes(conn: store.Conn, tables: Mapping[int, str]) -> dict[int, int]:
    """Table + index size attributed to each version by its share of its table's rows.

    Versions sharing a table are counted in one scan of it.
    """
    sizes: dict[int, int] = {}
    for table in sorted(set(tables.values())):
        versions = sorted(v for v, t in tables.items() if t == table)
        row = conn.execute(
            sql.SQL("SELECT count(*) AS total, {} FROM {} c").format(
                sql.SQL(", ").join(
                    sql.SQL("count(*) FILTER (WHERE c.valid_from <= {v} AND (c.valid_to IS NULL"
                            " OR c.valid_to > {v})) AS {name}").format(
                        v=sql.Literal(v), name=sql.Identifier(f"v{v}"))
                    for v in versions),
                sql.Identifier(table)),
        ).fetchone()
        total = int(row["total"]) if row else 0
        size = store.table_size_bytes(conn, table) if total else 0
        for v in versions:
            sizes[v] = int(size * row[f"v{v}"] / total) if row and total else 0
    return sizes


@dataclass(frozen=True)
class Evaluation:
    candidate: MetricTable
    live: MetricTable | None
    candidate_size: int
    live_size: int | None
    smoke_failures: tuple[str, ...]
    golden: str
    n_queries: int
    stale_queries: tuple[str, ...] = ()
    coverage_gained: tuple[str, ...] = ()
    candidate_results: tuple[QueryResult, ...] = field(default=(), repr=False)
    live_results: tuple[QueryResult, ...] | None = field(default=None, repr=False)
    live_reused: int = 0
    latency_rounds: int = 1  # side-by-side timing rounds (more when a latency rule failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "live": self.live.to_dict() if self.live else None,
            "candidate_size_bytes": self.candidate_size,
            "live_size_bytes": self.live_size,
            "smoke_failures": list(self.smoke_failures),
            "golden": self.golden,
            "n_queries": self.n_queries,
            "live_reused": self.live_reused,
            "latency_rounds": self.latency_rounds,
        }


def evaluate(
    settings: Settings,
    conn: store.Conn,
    kb_id: int,
    candidate: int,
    live: int | None,
    *,
    policy: AcceptancePolicy,
    sets: Sequence[str] | None = None,
) -> Evaluation:
    """Measure ``candidate`` (and ``live``) on the KB's golden sets, or auto title queries."""
    queries = stored_golden(conn, kb_id, sets)
    golden = f"golden sets {sorted({q.set_name for q in queries})}" if queries else ""
    if not queries:
        if sets:
            raise ConfigError(f"no golden queries stored in sets {list(sets)!r}; load them first")
        queries = auto_golden(conn, kb_id, [v for v in (candidate, live) if v is not None])
        golden = f"{AUTO_SET}: known-item queries from document titles (no golden sets loaded)"
    stale, gained = excluded_queries(conn, kb_id, queries, candidate, live)
    left_out = {id(q) for q in (*stale, *gained)}
    queries = [q for q in queries if id(q) not in left_out]
    if not queries:
        raise ConfigError(
            f"every golden query of {golden!r} is answerable only by deleted or new documents; "
            "archive stale ones with `kbrefresh golden prune` and load queries for this content"
        )
    depth = max(policy.k, policy.ndcg_k) * 3
    targets = [candidate] + ([live] if live is not None else [])
    tables = {v: store.fingerprint_for_version(conn, kb_id, v) for v in targets}
    # Each version sees a query as its readers do: rename maps, then adapters.
    adapters = {v: load_adapters(conn, kb_id, v) for v in targets}
    # Live's stored result for a query it answered before (any set) is reused.
    texts = {v: [expand(q.query) for q in queries]
             for v in targets for expand in [query_expander(conn, kb_id, v)]}
    reused = (stored_results(conn, kb_id, live, queries, texts[live], depth, adapters[live])
              if live is not None else {})
    results, duplicated, timed_vectors = _measure(settings, conn, queries, texts, tables,
                                                  adapters, depth, candidate, live, reused)
    if reused:
        logger.info("reused live v%s's results on %d of %d golden queries", live, len(reused),
                    len(queries))
    store_results(conn, kb_id, candidate, results[candidate], texts[candidate], depth, adapters[candidate])
    if live is not None:  # what live answered now serves the next gate against it too
        fresh = [i for i in range(len(queries)) if i not in reused]
        store_results(conn, kb_id, live, [results[live][i] for i in fresh],
                      [texts[live][i] for i in fresh], depth, adapters[live])
    conn.commit()
    timed = timed_queries(len(queries), reused)  # latency: side-by-side timings only
    if live is not None:
        judged, rounds = confirm_latency(settings, conn, policy, queries, results, timed,
                                         timed_vectors, {v: tables[v] for v in targets}, depth,
                                         candidate, live)
    else:
        judged, rounds = {candidate: side_by_side_only(results[candidate], timed)}, 1
    tables_out = {v: aggregate(judged[v], k=policy.k, ndcg_k=policy.ndcg_k) for v in targets}
    sizes = version_sizes(conn, {v: tables[v].table for v in targets})
    failures = smoke_failures(results[candidate]) + [
        f"duplicated chunk ids in the results of {q!r}" for q in duplicated[:5]
    ]
    return Evaluation(
        candidate=tables_out[candidate],
        live=tables_out.get(live) if live is not None else None,
        candidate_size=sizes[candidate],
        live_size=sizes[live] if live is not None else None,
        smoke_failures=tuple(failures),
        golden=golden,
        n_queries=len(queries),
        live_reused=len(reused),
        stale_queries=tuple(q.query for q in stale),
        coverage_gained=tuple(q.query for q in gained),
        candidate_results=tuple(judged[candidate]),
        live_results=tuple(judged[live]) if live is not None else None,
        latency_rounds=rounds,
    )


def excluded_queries(
    conn: store.Conn,
    kb_id: int,
    queries: Sequence[GoldenQuery],
    candidate: int,
    live: int | None,
) -> tuple[list[GoldenQuery], list[GoldenQuery]]:
    """Return (stale, coverage gained): queries no fair comparison can include.

    Stale: no relevant document is in the candidate and every one was deleted at the
    source (so no candidate could answer). Coverage gained: no relevant document is
    in live, some are in the candidate (so live could never have answered).
    """
    relevant = sorted({doc for q in queries for doc in q.relevant})  # only these matter
    rows = conn.execute(
        "SELECT m.version, m.doc_id FROM kb_version_documents m WHERE m.kb_id = %s"
        " AND m.version = ANY(%s) AND m.doc_id = ANY(%s)",
        (kb_id, [v for v in (candidate, live) if v is not None], relevant),
    ).fetchall()
    in_candidate = {r["doc_id"] for r in rows if r["version"] == candidate}
    in_live = {r["doc_id"] for r in rows if r["version"] == live}
    deleted = {
        r["doc_id"]
        for r in conn.execute(
            "SELECT doc_id FROM kb_documents WHERE kb_id = %s AND deleted_at IS NOT NULL"
            " AND doc_id = ANY(%s)", (kb_id, relevant)
        ).fetchall()
    }
    stale = [q for q in queries if not in_candidate & set(q.relevant) and set(q.relevant) <= deleted]
    gained = [
        q for q in queries
        if live is not None and not in_live & set(q.relevant) and in_candidate & set(q.relevant)
    ]
    return stale, gained


def _measure(
    settings: Settings,
    conn: store.Conn,
    queries: Sequence[GoldenQuery],
    texts: dict[int, list[str]],
    tables: dict[int, store.FingerprintTable],
    adapters: dict[int, tuple[QueryAdapter, ...]],
    depth: int,
    candidate: int,
    live: int | None,
    reused: dict[int, QueryResult],
) -> tuple[dict[int, list[QueryResult]], list[str], dict[int, npt.NDArray[np.float32]]]:
    """Search the candidate on every query, and live in lockstep on ``timed_queries``.

    Returns each version's results in query order, the candidate's duplicated queries
    and each version's query vectors of the timed queries (in ``timed_queries`` order)."""
    def vectors(v: int, part: Sequence[int]) -> npt.NDArray[np.float32]:
        embedder = embedder_for_spec(settings, tables[v].spec)
        return apply_adapters(embedder.embed([texts[v][i] for i in part]), adapters[v])

    fresh = timed_queries(len(queries), reused)
    cand_vectors = vectors(candidate, range(len(queries)))
    by_index: dict[int, QueryResult] = {}
    out: dict[int, list[QueryResult]] = {}
    duplicated: list[str] = []
    timed_vectors: dict[int, npt.NDArray[np.float32]] = {}
    warmup = WARMUP
    # The batch first: it warms the index and tail pages the timed searches then read.
    for part, with_live, timed in ((sorted(set(reused) - set(fresh)), False, False),
                                   (fresh, live is not None, True)):
        if not part:
            continue
        qs = [queries[i] for i in part]
        run = {candidate: cand_vectors[part]}
        if with_live and live is not None:
            run[live] = vectors(live, part)
        if timed:
            timed_vectors = run
            res, dup = run_side_by_side(settings, conn, qs, {v: tables[v] for v in run}, run,
                                        depth, warmup=warmup)
        else:  # nothing compares these timings: batched, split over connections
            res, dup = run_alone(settings, conn, qs, tables[candidate], candidate,
                                 run[candidate], depth)
            if live is None or tables[live].table == tables[candidate].table:
                warmup = WARM_CONNECTION  # every version timed reads the warmed pages
        by_index.update(zip(part, res[candidate], strict=True))
        duplicated += dup[candidate]
        if with_live and live is not None:
            got = dict(zip(part, res[live], strict=True))  # a stored result keeps its hits
            reused = got | {i: replace(r, latency_ms=got[i].latency_ms) if i in got else r
                            for i, r in reused.items()}
    out[candidate] = [by_index[i] for i in range(len(queries))]
    if live is not None:
        out[live] = [reused[i] for i in range(len(queries))]
    return out, duplicated, timed_vectors


@dataclass(frozen=True)
class GateOutcome:
    verdict: Verdict
    evaluation: Evaluation

    def as_dict(self) -> dict[str, Any]:
        return self.verdict.to_dict() | {"evaluation": self.evaluation.as_dict()}


def run_gate(
    settings: Settings,
    kb: str,
    version: int,
    *,
    against: int | None | str = "live",
    policy: AcceptancePolicy | None = None,
    sets: Sequence[str] | None = None,
    build_smoke_failures: Sequence[str] = (),
) -> GateOutcome:
    """Evaluate ``version`` against live (or another version, or None) and judge it."""
    policy = policy or default_policy()
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        baseline = routing.live_version(conn, kb_id) if against == "live" else against
        if baseline == version:
            baseline = None
        assert baseline is None or isinstance(baseline, int)
        for target in (version, baseline):
            if target is not None:
                routing.require_rows(conn, kb_id, kb, target)
        ev = evaluate(settings, conn, kb_id, version, baseline, policy=policy, sets=sets)
    verdict = evaluate_gate(
        ev.candidate_results, ev.live_results, policy, candidate_size_bytes=ev.candidate_size,
        live_size_bytes=ev.live_size, smoke_failures=[*build_smoke_failures, *ev.smoke_failures],
        stale_queries=ev.stale_queries, coverage_gained=ev.coverage_gained,
    )
    return GateOutcome(verdict, ev)
