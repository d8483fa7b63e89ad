"""Swaps under load: reader processes search while the routing moves, and every answer is checked.

``prepare`` builds a chain of published versions of a KB (each rewrites some documents,
so versions differ) and stages one candidate under a new embedding fingerprint (another
chunking: a new chunk table). ``run`` starts reader processes — Retriever clients, plain
readers of the ``kb_<name>_live`` view and one long reader (a query that holds the view
for ``long_query_seconds``) — measures a quiet phase, then performs the route changes
(rollbacks down the chain, the swap to the new fingerprint and the rollback from it) and
stops the readers. Every query is recorded; ``analyse`` counts failures (errors and empty
answers), compares reader p99 during the changes with the quiet phase, and checks that
each answer is one version's: every row it returned is a row of the version it reports
(looked up in that version's chunk table by id, or by document, position and content
hash for the view), and a view answer reports a single version.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DIMS = 64
KB = "load"
VIEW = f"kb_{KB}_live"


@dataclass(frozen=True)
class LoadConfig:
    retrievers: int = 8
    view_readers: int = 2
    long_reader: bool = True
    long_query_seconds: float = 2.0
    swaps: int = 20  # route changes: rollbacks, the fingerprint swap and its rollback
    quiet_seconds: float = 10.0
    swap_pause_seconds: float = 0.5
    think_seconds: float = 0.01  # each reader's pause between queries
    routing_ttl_seconds: float = 1.0
    documents: int = 30
    seed: int = 7


@dataclass
class LoadResult:
    queries: int
    failed: int
    empty: int
    mixed: int  # answers with rows of another version than the one reported
    p99_quiet_ms: float
    p99_swaps_ms: float
    swaps_done: int
    swap_seconds: float
    errors: list[str] = field(default_factory=list)
    change_ms: list[float] = field(default_factory=list)  # each swap or rollback call
    p99_by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)  # quiet, swaps

    @property
    def p99_ratio(self) -> float:
        return self.p99_swaps_ms / self.p99_quiet_ms if self.p99_quiet_ms else float("nan")


# -- preparation ---------------------------------------------------------------------


def _rewrite(root: Path, version: int, n_docs: int, per_version: int = 6) -> None:
    from tests.support.corpus import markdown_doc

    rng = random.Random(1000 + version)
    for j in range(per_version):
        i = (version * per_version + j) % n_docs
        category = "technical" if i % 2 else "general"
        path = root / category / f"doc-{i:03d}.md"
        path.write_text(markdown_doc(f"Topic {i} v{version}", category, rng), "utf-8")


def prepare(settings: Any, root: Path, config: LoadConfig) -> dict[str, int]:
    """Build ``swaps - 1`` published versions and stage one under a new fingerprint."""
    from kbrefresh.embedders.offline import OfflineEmbedder
    from kbrefresh.gate.policy import AcceptancePolicy
    from kbrefresh.models import ChunkerConfig
    from tests.support.build import refresh
    from tests.support.corpus import write_corpus

    policy = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
    source = root / "src"
    write_corpus(source, config.documents, seed=config.seed)
    embedder = OfflineEmbedder(dims=DIMS)
    chain = max(config.swaps - 1, 2)
    for version in range(1, chain + 1):
        if version > 1:
            _rewrite(source, version, config.documents)
        refresh(settings, KB, str(source), embedder=embedder, policy=policy, keep_versions=100)
    staged = refresh(settings, KB, str(source), embedder=embedder, policy=policy,
                     keep_versions=100, publish=False,
                     chunker=ChunkerConfig(max_chars=500, overlap_chars=50))
    return {"chain": chain, "staged": staged.version}


def route_changes(chain: int, staged: int, swaps: int) -> list[tuple[str, int]]:
    """The route changes: rollbacks, the swap to ``staged`` in the middle, its rollback, more rollbacks."""
    rollbacks = max(swaps - 2, 0)
    first = rollbacks // 2
    live = chain
    plan: list[tuple[str, int]] = []
    for _ in range(first):
        live -= 1
        plan.append(("rollback", live))
    plan += [("swap", staged), ("rollback", live)]
    for _ in range(rollbacks - first):
        live -= 1
        plan.append(("rollback", live))
    return plan


# -- reader processes ----------------------------------------------------------------


def _reader(kind: str, number: int, url: str, config: LoadConfig, out: str,
            ready: Any, stop: Any) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from kbrefresh.errors import KBRefreshError
    from kbrefresh.settings import Settings

    rng = random.Random(config.seed * 1000 + number)
    words = ["account", "billing", "invoice", "webhook", "token", "api", "key", "rotate",
             "limit", "retry", "export", "sso", "agent", "ticket", "report", "backup"]
    records: list[dict[str, Any]] = []
    retriever = conn = None
    if kind == "retriever":
        from kbrefresh.serving.retriever import Retriever

        retriever = Retriever(KB, database_url=url, settings=Settings(embedding_dims=DIMS),
                              routing_ttl_seconds=config.routing_ttl_seconds)
    else:
        conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
    ready.release()
    while not stop.is_set():
        started = time.monotonic()
        record: dict[str, Any] = {"kind": kind, "t": started}
        try:
            if retriever is not None:
                query = " ".join(rng.choice(words) for _ in range(3))
                result = retriever.search(query, k=5, session_id=f"s{rng.randrange(10**6)}")
                record["version"] = result.version
                record["ids"] = [h.chunk_id for h in result.hits]
            else:
                assert conn is not None
                record.update(_view_query(conn, kind, rng, config))
        except (psycopg.Error, KBRefreshError) as exc:  # every failure is what we count
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        record["ms"] = (time.monotonic() - started) * 1000.0
        records.append(record)
        if config.think_seconds:
            stop.wait(config.think_seconds)
    if retriever is not None:
        retriever.close()
    if conn is not None:
        conn.close()
    Path(out).write_text("\n".join(json.dumps(r) for r in records), "utf-8")


def _view_query(conn: Any, kind: str, rng: random.Random, config: LoadConfig) -> dict[str, Any]:
    vector = np.asarray([rng.gauss(0, 1) for _ in range(DIMS)], dtype=np.float32)
    text = "[" + ",".join(f"{x:.5f}" for x in vector) + "]"
    hold = config.long_query_seconds if kind == "long" else 0.0
    rows = conn.execute(
        # MATERIALIZED: the sleep runs once, not once per row of a nested loop.
        f"WITH s AS MATERIALIZED (SELECT pg_sleep(%s) AS z) SELECT v.version, v.doc_id,"
        f" v.chunk_index, md5(v.content) AS h FROM {VIEW} v CROSS JOIN s"
        " ORDER BY v.embedding <=> %s::vector LIMIT 10",
        (hold, text),
    ).fetchall()
    return {"versions": sorted({r["version"] for r in rows}),
            "rows": [[r["doc_id"], r["chunk_index"], r["h"]] for r in rows]}


# -- the run ---------------------------------------------------------------------------


def run(settings: Any, url: str, root: Path, config: LoadConfig,
        prepared: dict[str, int]) -> tuple[LoadResult, list[dict[str, Any]]]:
    """Start the readers, measure quiet then swapping, stop; return the result and every record."""
    from kbrefresh import store
    from kbrefresh.db import connect
    from kbrefresh.serving import routing

    ctx = mp.get_context("spawn")
    kinds = (["retriever"] * config.retrievers + ["view"] * config.view_readers
             + (["long"] if config.long_reader else []))
    ready, stop = ctx.Semaphore(0), ctx.Event()
    outs = [str(root / f"reader-{i}.jsonl") for i in range(len(kinds))]
    procs = [ctx.Process(target=_reader, args=(k, i, url, config, outs[i], ready, stop))
             for i, k in enumerate(kinds)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a reader process did not start within 120 s")
    quiet_from = time.monotonic()
    stop.wait(config.quiet_seconds)
    swaps_from = time.monotonic()
    plan = route_changes(prepared["chain"], prepared["staged"], config.swaps)
    change_ms: list[float] = []
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, KB)
        for action, target in plan:
            began = time.monotonic()
            if action == "swap":
                routing.swap_live(conn, kb_id, KB, target, reason="load test", flow_run_id=None)
            else:
                routing.rollback(conn, kb_id, KB, to_version=target, reason="load test")
            change_ms.append((time.monotonic() - began) * 1000.0)
            stop.wait(config.swap_pause_seconds)
    # Readers keep going until the last change is older than the routing cache.
    stop.wait(config.routing_ttl_seconds + config.long_query_seconds)
    swaps_to = time.monotonic()
    stop.set()
    for p in procs:
        p.join(timeout=60)
    records = [json.loads(line) for out in outs if Path(out).exists()
               for line in Path(out).read_text("utf-8").splitlines() if line]
    result = analyse(settings, records, quiet_from, swaps_from, swaps_to)
    result.swaps_done, result.swap_seconds = len(plan), swaps_to - swaps_from
    result.change_ms = change_ms
    return result, records


def analyse(settings: Any, records: list[dict[str, Any]], quiet_from: float,
            swaps_from: float, swaps_to: float) -> LoadResult:
    """Count failures, empty and mixed answers; p99 of short readers per phase."""
    from kbrefresh.db import connect

    failed = [r for r in records if "error" in r]
    answered = [r for r in records if "error" not in r]
    empty = [r for r in answered if not (r.get("ids") or r.get("rows"))]
    with connect(settings) as conn:
        rows = _version_rows(conn, {r["version"] for r in answered if "version" in r}
                             | {v for r in answered for v in r.get("versions", [])})
    mixed = 0
    for r in answered:
        if "ids" in r:
            ok = all(i in rows[r["version"]][0] for i in r["ids"])
        else:
            ok = len(r["versions"]) <= 1 and all(
                tuple(x) in rows[r["versions"][0]][1] for x in r["rows"])
        mixed += not ok
    short = [r for r in records if r["kind"] != "long"]
    quiet = [r["ms"] for r in short if quiet_from <= r["t"] < swaps_from]
    swapping = [r["ms"] for r in short if swaps_from <= r["t"] < swaps_to]
    by_kind = {kind: (_p99([r["ms"] for r in records if r["kind"] == kind
                            and quiet_from <= r["t"] < swaps_from]),
                      _p99([r["ms"] for r in records if r["kind"] == kind
                            and swaps_from <= r["t"] < swaps_to]))
               for kind in ("retriever", "view", "long")}
    return LoadResult(
        p99_by_kind=by_kind, queries=len(records), failed=len(failed), empty=len(empty), mixed=mixed,
        p99_quiet_ms=_p99(quiet), p99_swaps_ms=_p99(swapping), swaps_done=0, swap_seconds=0.0,
        errors=sorted({r["error"] for r in failed})[:5])


def _version_rows(conn: Any, versions: set[int]) -> dict[int, tuple[set[int], set[tuple[Any, ...]]]]:
    from psycopg import sql

    from kbrefresh import store

    kb_id = store.get_kb_id(conn, KB)
    out = {}
    for v in versions:
        table = store.fingerprint_for_version(conn, kb_id, v).table
        found = conn.execute(sql.SQL(
            "SELECT id, doc_id, chunk_index, md5(content) AS h FROM {} WHERE valid_from <= %s"
            " AND (valid_to IS NULL OR valid_to > %s)").format(sql.Identifier(table)),
            (v, v)).fetchall()
        out[v] = ({int(r["id"]) for r in found},
                  {(r["doc_id"], r["chunk_index"], r["h"]) for r in found})
    return out


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def records_by_phase(records: list[dict[str, Any]]) -> Iterator[tuple[str, int]]:
    for kind in ("retriever", "view", "long"):
        yield kind, sum(1 for r in records if r["kind"] == kind)
