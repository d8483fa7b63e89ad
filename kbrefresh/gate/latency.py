"""Latency judged on side-by-side timings only, and confirmed before it fails a candidate.

Only queries searched on both versions at once (``timed_queries``) carry a latency into
the verdict: a reused live result's time was taken in another run, under another load,
and the candidate's other queries ran split over two connections.

A p95 over ~50 side-by-side timings is about the third-slowest search, so one stall on
the candidate's side (a checkpoint, another process's burst) can move it past the
threshold. When a latency rule fails, the timed queries are searched side by side
again, up to ``LATENCY_ROUNDS`` rounds in all, and each query keeps its fastest time on
each version, as ``timeit`` does: a stall does not come back on the same query, while a
slower index or plan is slower in every round and still fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from kbrefresh import store
from kbrefresh.gate.golden import GoldenQuery
from kbrefresh.gate.metrics import LATENCY_P50, LATENCY_P95, QueryResult
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.gate.rules import RuleResult
from kbrefresh.gate.runs import run_side_by_side
from kbrefresh.gate.verdict import evaluate_gate
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

LATENCY_ROUNDS = 3
LATENCY_METRICS = (LATENCY_P50, LATENCY_P95)


def side_by_side_only(results: Sequence[QueryResult], timed: Sequence[int]) -> list[QueryResult]:
    """Return ``results`` with the latency of every query not in ``timed`` set to NaN."""
    keep = set(timed)
    return [r if i in keep else replace(r, latency_ms=math.nan) for i, r in enumerate(results)]


def latency_failures(
    policy: AcceptancePolicy, candidate: Sequence[QueryResult], live: Sequence[QueryResult]
) -> tuple[RuleResult, ...]:
    """Return the policy's latency rules that ``candidate`` fails against ``live``."""
    rules = tuple(r for r in policy.rules if r.metric in LATENCY_METRICS)
    if not rules:
        return ()
    only = policy.model_copy(update={"rules": rules, "max_slice_disparity": (),
                                     "max_size_ratio": None, "require_smoke": False})
    verdict = evaluate_gate(candidate, live, only, candidate_size_bytes=0, live_size_bytes=None,
                            smoke_failures=())
    return verdict.failed_rules


def keep_fastest(
    results: Sequence[QueryResult], again: Sequence[QueryResult], timed: Sequence[int]
) -> list[QueryResult]:
    """Return ``results`` where each timed query keeps the faster of its two timings.

    ``again`` holds the new round's results of the ``timed`` queries, in that order.
    """
    out = list(results)
    for i, new in zip(timed, again, strict=True):
        out[i] = replace(out[i], latency_ms=min(out[i].latency_ms, new.latency_ms))
    return out


def confirm_latency(
    settings: Settings,
    conn: store.Conn,
    policy: AcceptancePolicy,
    queries: Sequence[GoldenQuery],
    results: dict[int, list[QueryResult]],
    timed: Sequence[int],
    vectors: dict[int, npt.NDArray[np.float32]],
    tables: dict[int, store.FingerprintTable],
    depth: int,
    candidate: int,
    live: int,
) -> tuple[dict[int, list[QueryResult]], int]:
    """Return the results the verdict judges (side-by-side latencies only) and the rounds run.

    ``results``, ``vectors`` and ``tables`` are keyed by version; ``vectors`` hold the
    ``timed`` queries' in that order.
    """
    out = {v: side_by_side_only(results[v], timed) for v in (candidate, live)}
    rounds = 1
    while rounds < LATENCY_ROUNDS and timed:
        failed = latency_failures(policy, out[candidate], out[live])
        if not failed:
            break
        rounds += 1
        logger.info("latency rule failed (%s); timing the %d side-by-side queries again,"
                    " round %d of %d", "; ".join(f"{r.name}: {r.reason}" for r in failed), len(timed), rounds,
                    LATENCY_ROUNDS)
        again, _ = run_side_by_side(settings, conn, [queries[i] for i in timed], tables,
                                    vectors, depth)
        out = {v: keep_fastest(out[v], again[v], timed) for v in (candidate, live)}
    return out, rounds
