"""Per-query gate results kept per version, so a later gate reuses live's searches.

A version's result for one query depends on the version (its rows and rename maps),
the text searched (the query expanded by the version's rename maps), the search depth
and the version's query adapters; the key hashes the last three, and the version is a column, so a result is reused only for the exact
version it was measured on. Labels (relevant ids, slice) are not part of the search:
a reused result takes them from the query that asks for it now.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from psycopg.types.json import Jsonb

from kbrefresh import store
from kbrefresh.gate.golden import GoldenQuery
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.retraining.adapter import QueryAdapter, adapters_digest

_PREFIX = "q1:"  # per-query keys; whole-set keys of earlier releases never match one


def query_key(text: str, depth: int, adapters: Sequence[QueryAdapter] = ()) -> str:
    """Hash what one query's search result depends on besides the version."""
    payload = json.dumps([depth, text] + ([adapters_digest(adapters)] if adapters else []))
    return _PREFIX + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def stored_results(
    conn: store.Conn,
    kb_id: int,
    version: int,
    queries: Sequence[GoldenQuery],
    texts: Sequence[str],
    depth: int,
    adapters: Sequence[QueryAdapter] = (),
) -> dict[int, QueryResult]:
    """Return ``version``'s stored results by position in ``queries``, where one exists.

    ``texts``: each query as ``version`` searches it (after its rename expansion).
    """
    keys = [query_key(t, depth, adapters) for t in texts]
    rows = conn.execute(
        "SELECT golden_key, results FROM kb_gate_results WHERE kb_id = %s AND version = %s"
        " AND golden_key = ANY(%s)",
        (kb_id, version, sorted(set(keys))),
    ).fetchall()
    found = {r["golden_key"]: r["results"] for r in rows}
    out: dict[int, QueryResult] = {}
    for i, (q, key) in enumerate(zip(queries, keys, strict=True)):
        if (r := found.get(key)) is not None:
            latency = r["latency_ms"]  # null: not timed (searched in a batch)
            out[i] = QueryResult(q.query, q.slice, tuple(r["retrieved"]), q.relevant,
                                 math.nan if latency is None else float(latency),
                                 tuple(r["scores"]))
    return out


def store_results(
    conn: store.Conn,
    kb_id: int,
    version: int,
    results: Sequence[QueryResult],
    texts: Sequence[str],
    depth: int,
    adapters: Sequence[QueryAdapter] = (),
) -> None:
    """Keep ``version``'s per-query results (``texts``: as searched) for later gates.

    Committed by the caller.
    """
    rows = {
        query_key(t, depth, adapters): Jsonb({
            "retrieved": list(r.retrieved_doc_ids),
            "latency_ms": r.latency_ms if math.isfinite(r.latency_ms) else None,
            "scores": list(r.scores)})
        for r, t in zip(results, texts, strict=True)
    }
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO kb_gate_results (kb_id, version, golden_key, results)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (kb_id, version, golden_key)"
            " DO UPDATE SET results = EXCLUDED.results, created_at = now()",
            [(kb_id, version, key, payload) for key, payload in rows.items()],
        )


# Reused live results still leave this many queries searched on both versions side by
# side, so the latency rule compares timings taken under the same load.
LATENCY_SAMPLE = 50


def timed_queries(n: int, reused: Mapping[int, object]) -> list[int]:
    """Indices searched on live now: those without a stored result, plus a fixed sample."""
    fresh = [i for i in range(n) if i not in reused]
    return sorted(set(fresh) | set(sorted(reused)[:LATENCY_SAMPLE]))
