"""Search golden queries on versions: side by side (timed) or split over connections.

Side by side: candidate and live run on two connections in lockstep (query i on both
at once), so each sees the same load; their latencies can be compared. Alone: queries
whose timings nothing compares (live's result is reused) are searched in batches
(``gate.batch``) split over ``SPLIT_CONNECTIONS`` connections, which on a server with
as many cores takes that fraction of the time.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import numpy.typing as npt

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.gate.batch import duplicated, read_tail, search_many
from kbrefresh.gate.golden import GoldenQuery
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.serving.search import search_settings, search_version
from kbrefresh.settings import Settings

# Untimed searches before the timed ones on each connection: the first queries pay for
# cold caches (WARMUP); after a batch of searches on the same table warmed the index
# and tail pages, only the connection's own first statements (WARM_CONNECTION).
WARMUP = 10
WARM_CONNECTION = 2
SPLIT_CONNECTIONS = 2


def run_side_by_side(
    settings: Settings,
    conn: store.Conn,
    queries: Sequence[GoldenQuery],
    tables: dict[int, store.FingerprintTable],
    vectors: dict[int, npt.NDArray[np.float32]],
    depth: int,
    *,
    warmup: int = WARMUP,
) -> tuple[dict[int, list[QueryResult]], dict[int, list[str]]]:
    """Return each version's results and the queries whose hits repeated a chunk id.

    Candidate and live run side by side on two connections in lockstep (query i on
    both at once), so each sees the same load and the gate takes half the time.
    """
    versions = list(tables)
    barrier = threading.Barrier(len(versions))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed search would land on one version only
    try:
        with ExitStack() as stack:
            conns = [conn] + [stack.enter_context(connect(settings)) for _ in versions[1:]]
            with ThreadPoolExecutor(len(versions)) as pool:
                futures = [
                    pool.submit(run_version, c, queries, tables[v], v, vectors[v], depth, barrier,
                                warmup)
                    for c, v in zip(conns, versions, strict=True)
                ]
                errors = [e for e in (f.exception() for f in futures) if e is not None]
                if errors:  # the root cause, not the other side's broken barrier
                    raise next((e for e in errors if not isinstance(
                        e, threading.BrokenBarrierError)), errors[0])
                done = [f.result() for f in futures]
    finally:
        if gc_was_enabled:
            gc.enable()
    return ({v: d[0] for v, d in zip(versions, done, strict=True)},
            {v: d[1] for v, d in zip(versions, done, strict=True)})


def run_version(
    conn: store.Conn,
    queries: Sequence[GoldenQuery],
    table: store.FingerprintTable,
    version: int,
    vectors: npt.NDArray[np.float32],
    depth: int,
    barrier: threading.Barrier,
    warmup: int = WARMUP,
) -> tuple[list[QueryResult], list[str]]:
    results: list[QueryResult] = []
    dups: list[str] = []
    ef = 2 * depth
    try:
        with conn.transaction():  # settings once: each timed search is one round trip
            search_settings(conn, ef)
            # Untimed first: the first queries pay for cold caches.
            for i in range(min(warmup, len(queries))):
                search_version(conn, table, version, vectors[i], k=depth,
                               session_configured=True, session_ef_search=ef)
            for i, q in enumerate(queries):
                barrier.wait(timeout=60)
                started = time.perf_counter()
                hits = search_version(conn, table, version, vectors[i], k=depth,
                                      session_configured=True, session_ef_search=ef)
                elapsed = (time.perf_counter() - started) * 1000
                results.append(QueryResult(
                    q.query, q.slice, tuple(h.doc_id for h in hits), q.relevant, elapsed,
                    tuple(h.similarity for h in hits),
                ))
                if len({h.chunk_id for h in hits}) != len(hits):
                    dups.append(q.query)
    except BaseException:
        barrier.abort()  # the other side must not wait for a query that never comes
        raise
    return results, dups


def run_alone(
    settings: Settings,
    conn: store.Conn,
    queries: Sequence[GoldenQuery],
    table: store.FingerprintTable,
    version: int,
    vectors: npt.NDArray[np.float32],
    depth: int,
) -> tuple[dict[int, list[QueryResult]], dict[int, list[str]]]:
    """Search ``version`` on every query, split over connections; results in query order.

    Batched (``gate.batch``): the tail is read once, each connection searches its share
    of the queries in one statement. Nothing is timed: the latencies are NaN.
    """
    tail = read_tail(conn, table, version)
    parts = [list(range(i, len(queries), SPLIT_CONNECTIONS)) for i in range(SPLIT_CONNECTIONS)]
    parts = [p for p in parts if p]
    with ExitStack() as stack:
        conns = [conn] + [stack.enter_context(connect(settings)) for _ in parts[1:]]
        with ThreadPoolExecutor(len(parts)) as pool:
            futures = [pool.submit(search_many, c, table, version, vectors[part], depth, tail)
                       for c, part in zip(conns, parts, strict=True)]
            done = [f.result() for f in futures]
    hits = {i: found for part, got in zip(parts, done, strict=True)
            for i, found in zip(part, got, strict=True)}
    results = [QueryResult(q.query, q.slice, tuple(h[1] for h in hits[i]), q.relevant, math.nan,
                           tuple(h[2] for h in hits[i])) for i, q in enumerate(queries)]
    return ({version: results},
            {version: [q.query for i, q in enumerate(queries) if duplicated(hits[i])]})
