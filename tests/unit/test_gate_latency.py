"""Latency judged on side-by-side timings, each query keeping its fastest round."""

from __future__ import annotations

import math

import pytest

from kbrefresh.gate.latency import keep_fastest, latency_failures, side_by_side_only
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.gate.policy import default_policy


def timings(*ms: float) -> list[QueryResult]:
    return [QueryResult(f"q{i}", "s", (f"d{i}",), (f"d{i}",), t, (0.9,)) for i, t in enumerate(ms)]


def latencies(results: list[QueryResult]) -> list[float]:
    return [r.latency_ms for r in results]


def test_only_the_timed_queries_keep_a_latency() -> None:
    out = side_by_side_only(timings(1.0, 2.0, 3.0, 4.0), [0, 2])
    assert latencies(out)[0::2] == [1.0, 3.0]
    assert all(math.isnan(t) for t in latencies(out)[1::2])
    assert [r.retrieved_doc_ids for r in out] == [("d0",), ("d1",), ("d2",), ("d3",)]


def test_each_timed_query_keeps_its_fastest_round() -> None:
    first = side_by_side_only(timings(5.0, 90.0, 5.0, 7.0), [0, 1, 3])
    again = keep_fastest(first, timings(6.0, 4.0, 8.0), [0, 1, 3])
    assert latencies(again)[0:2] == [5.0, 4.0] and latencies(again)[3] == 7.0
    assert math.isnan(latencies(again)[2])  # not timed: stays out of the percentiles


def test_a_stall_on_the_candidate_fails_the_default_rule_until_it_is_timed_again() -> None:
    policy, timed = default_policy(), list(range(50))
    live = timings(*[4.0] * 50)
    stalled = timings(*[4.0] * 45, *[60.0] * 5)  # five searches behind a checkpoint
    [failed] = latency_failures(policy, stalled, live)
    assert failed.name == "latency_p95_ms ≤ live × 2 + 3"
    again = keep_fastest(stalled, timings(*[4.5] * 50), timed)
    assert latency_failures(policy, again, live) == ()
    slower = keep_fastest(timings(*[15.0] * 50), timings(*[14.0] * 50), timed)
    assert [r.name for r in latency_failures(policy, slower, live)] == [failed.name]


def test_a_policy_without_latency_rules_never_asks_for_another_round() -> None:
    policy = default_policy().model_copy(update={"rules": ()})
    assert latency_failures(policy, timings(99.0), timings(1.0)) == ()


def test_the_two_rounds_must_hold_the_same_queries() -> None:
    with pytest.raises(ValueError):
        keep_fastest(timings(1.0, 2.0), timings(1.0), [0, 1])
