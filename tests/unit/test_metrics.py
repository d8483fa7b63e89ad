from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import (
    MetricTable,
    QueryResult,
    aggregate,
    f1_at_k,
    hit_at_k,
    metric_names,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    slice_disparity,
    smoke_failures,
    unique_ranked,
)

# "a" twice: distinct docs are [a, b, c, d, e, f]; c ranks 3rd and f 6th (7th undeduplicated).
RETRIEVED = ("a", "b", "a", "c", "d", "e", "f")
RELEVANT = ("c", "f")


def test_unique_ranked_keeps_first_rank() -> None:
    assert unique_ranked(RETRIEVED) == ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(
    ("k", "expected"),
    [(2, 0.0), (3, 1.0), (5, 1.0)],  # c is the 3rd distinct doc
)
def test_hit_at_k(k: int, expected: float) -> None:
    assert hit_at_k(RETRIEVED, RELEVANT, k) == expected


@pytest.mark.parametrize(
    ("k", "expected"),
    # top 5 distinct = a b c d e -> {c} = 1/2; top 6 adds f -> 2/2.
    # Without de-duplication the top 6 would be a b a c d e -> 1/2.
    [(5, 0.5), (6, 1.0)],
)
def test_recall_at_k_counts_distinct_docs(k: int, expected: float) -> None:
    assert recall_at_k(RETRIEVED, RELEVANT, k) == pytest.approx(expected)


def test_recall_denominator_is_all_relevant_docs() -> None:
    # 2 of 3 relevant docs in the top 2.
    assert recall_at_k(["a", "b"], ["a", "b", "c"], 2) == pytest.approx(0.6666667)


def test_reciprocal_rank_uses_first_distinct_rank() -> None:
    # c is the 3rd distinct doc -> 1/3 (the 4th raw position would give 0.25).
    assert reciprocal_rank(RETRIEVED, RELEVANT) == pytest.approx(0.3333333)


@pytest.mark.parametrize(
    ("k", "expected"),
    # top 5 distinct = a b c d e -> 1 relevant of 5 slots; top 6 adds f -> 2 of 6.
    [(2, 0.0), (5, 0.2), (6, 2 / 6)],
)
def test_precision_at_k_counts_distinct_docs(k: int, expected: float) -> None:
    assert precision_at_k(RETRIEVED, RELEVANT, k) == pytest.approx(expected)


def test_precision_divides_by_k_when_fewer_docs_came_back() -> None:
    assert precision_at_k(["a"], ["a"], 5) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("k", "expected"),
    # k=5: P 0.2, R 0.5 -> 2·0.1/0.7 = 0.2857143; k=6: P 1/3, R 1 -> 2·(1/3)/(4/3) = 0.5
    [(2, 0.0), (5, 0.2857143), (6, 0.5)],
)
def test_f1_at_k(k: int, expected: float) -> None:
    assert f1_at_k(RETRIEVED, RELEVANT, k) == pytest.approx(expected)


def test_reciprocal_rank_is_zero_without_a_relevant_doc() -> None:
    assert reciprocal_rank(["x", "y"], ["a"]) == 0.0
    assert reciprocal_rank([], ["a"]) == 0.0


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # DCG@5 = 1/log2(3+1) = 0.5; IDCG over min(5, 2) = 2 ranks = 1 + 1/log2(3) = 1.6309298
        # 0.5 / 1.6309298 = 0.3065736
        (5, 0.3065736),
        # DCG@10 = 0.5 + 1/log2(6+1) = 0.5 + 0.3562072 = 0.8562072; / 1.6309298 = 0.5249810
        (10, 0.5249810),
    ],
)
def test_ndcg_at_k(k: int, expected: float) -> None:
    assert ndcg_at_k(RETRIEVED, RELEVANT, k) == pytest.approx(expected)


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 3 relevant docs but k = 2: both slots relevant is ideal -> 1.0.
    assert ndcg_at_k(["a", "b"], ["a", "b", "c"], 2) == pytest.approx(1.0)


def test_ndcg_is_zero_without_a_relevant_doc() -> None:
    assert ndcg_at_k(["x"], ["a"], 10) == 0.0


@pytest.mark.parametrize("metric", [hit_at_k, recall_at_k, ndcg_at_k, precision_at_k, f1_at_k])
def test_k_must_be_positive(metric: Callable[[list[str], list[str], int], float]) -> None:
    with pytest.raises(ConfigError, match=r"^k must be a positive integer, got 0$"):
        metric(["a"], ["a"], 0)


def test_empty_relevant_set_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^relevant doc ids are empty; expected at least one$"):
        reciprocal_rank(["a"], [])


def result(
    slice_: str, retrieved: tuple[str, ...], relevant: tuple[str, ...], latency: float
) -> QueryResult:
    return QueryResult("q", slice_, retrieved, relevant, latency, (0.9,) * len(retrieved))


RESULTS = [
    # hit@5 1, recall@5 1, rr 1, ndcg@10 1
    result("billing", ("d1", "x", "y"), ("d1",), 10.0),
    # hit 1, recall 1/2, rr 1/2, ndcg@10 = (1/log2 3) / (1 + 1/log2 3) = 0.6309298 / 1.6309298
    # = 0.3868528
    result("billing", ("x", "d2"), ("d2", "d3"), 20.0),
    # t1 is 6th: hit@5 0, recall@5 0, rr 1/6, ndcg@10 = 1/log2(7) / 1 = 0.3562072
    result("technical", ("x", "y", "z", "w", "v", "t1"), ("t1",), 30.0),
    # nothing retrieved: all 0
    result("technical", (), ("t2",), 100.0),
]


def test_aggregate_overall() -> None:
    table = aggregate(RESULTS, k=5, ndcg_k=10)
    assert table.n_queries == 4
    assert dict(table.overall) == pytest.approx(
        {
            "hit@5": 0.5,  # (1 + 1 + 0 + 0) / 4
            "recall@5": 0.375,  # (1 + 0.5 + 0 + 0) / 4
            "mrr": 0.4166667,  # (1 + 0.5 + 1/6 + 0) / 4
            "ndcg@10": 0.4357650,  # (1 + 0.3868528 + 0.3562072 + 0) / 4
            # latencies 10 20 30 100, linear: p50 at index 1.5 -> 20 + 0.5 * 10 = 25
            "latency_p50_ms": 25.0,
            # p95 at index 0.95 * 3 = 2.85 -> 30 + 0.85 * 70 = 89.5
            "latency_p95_ms": 89.5,
            "precision@5": 0.1,  # (1/5 + 1/5 + 0 + 0) / 4
            # F1 = 2PR/(P+R): (2·0.2·1/1.2 = 1/3) and (2·0.2·0.5/0.7 = 2/7): (1/3 + 2/7) / 4
            "f1@5": 0.1547619,
        }
    )


def test_aggregate_per_slice() -> None:
    table = aggregate(RESULTS)
    assert table.slices == ("billing", "technical")
    assert dict(table.slice_counts) == {"billing": 2, "technical": 2}
    assert dict(table.by_slice["billing"]) == pytest.approx(
        {
            "hit@5": 1.0,
            "recall@5": 0.75,  # (1 + 0.5) / 2
            "mrr": 0.75,  # (1 + 0.5) / 2
            "ndcg@10": 0.6934264,  # (1 + 0.3868528) / 2
            "latency_p50_ms": 15.0,  # 10 + 0.5 * 10
            "latency_p95_ms": 19.5,  # 10 + 0.95 * 10
            "precision@5": 0.2,
            "f1@5": 0.3095238,  # (1/3 + 2/7) / 2
        }
    )
    assert dict(table.by_slice["technical"]) == pytest.approx(
        {
            "hit@5": 0.0,
            "recall@5": 0.0,
            "mrr": 0.0833333,  # (1/6 + 0) / 2
            "ndcg@10": 0.1781036,  # 0.3562072 / 2
            "latency_p50_ms": 65.0,  # 30 + 0.5 * 70
            "latency_p95_ms": 96.5,  # 30 + 0.95 * 70
            "precision@5": 0.0,
            "f1@5": 0.0,
        }
    )


def test_metric_names_match_aggregate_keys() -> None:
    assert metric_names(5, 10) == (
        "hit@5",
        "recall@5",
        "mrr",
        "ndcg@10",
        "latency_p50_ms",
        "latency_p95_ms",
        "precision@5",
        "f1@5",
    )
    assert set(aggregate(RESULTS, k=3, ndcg_k=4).overall) == set(metric_names(3, 4))


def test_slice_disparity() -> None:
    table = aggregate(RESULTS)
    assert slice_disparity(table, "hit@5") == pytest.approx(1.0)  # 1.0 - 0.0
    assert slice_disparity(table, "mrr") == pytest.approx(0.6666667)  # 0.75 - 0.0833333


def test_slice_disparity_of_one_slice_is_zero() -> None:
    assert slice_disparity(aggregate(RESULTS[:2]), "hit@5") == 0.0


def test_slice_disparity_names_missing_slices() -> None:
    table = MetricTable(5, 10, {}, {"a": {"hit@5": 1.0}, "b": {}})
    with pytest.raises(ConfigError, match=r"^metric 'hit@5' is missing for slices \['b'\]$"):
        slice_disparity(table, "hit@5")
    with pytest.raises(ConfigError, match="the table has no slices"):
        slice_disparity(MetricTable(5, 10, {}), "hit@5")


def test_no_results_means_no_metrics() -> None:
    table = aggregate([])
    assert table.n_queries == 0
    assert table.get("hit@5") is None
    assert table.slices == ()


def test_non_finite_values_count_as_missing() -> None:
    table = aggregate([result("a", ("d",), ("d",), math.nan)])
    assert table.get("latency_p95_ms") is None
    assert table.get("hit@5") == 1.0
    assert table.get("hit@5", "a") == 1.0
    assert table.get("hit@5", "other") is None


def test_table_round_trips_through_json() -> None:
    table = aggregate([*RESULTS, result("x", ("d",), ("d",), math.nan)])
    data = json.loads(json.dumps(table.to_dict(), allow_nan=False))
    restored = MetricTable.from_dict(data)
    assert restored.to_dict() == table.to_dict()
    assert restored.get("latency_p95_ms", "x") is None
    assert restored.get("mrr", "billing") == pytest.approx(0.75)


def test_from_dict_rejects_other_shapes() -> None:
    with pytest.raises(ConfigError, match=r"^not a metric table dict \(KeyError\('k'\)\)"):
        MetricTable.from_dict({"overall": {}})


def test_smoke_failures() -> None:
    results = [
        QueryResult("ok", "a", ("d",), ("d",), 3.0, (0.8,)),
        QueryResult("empty", "a", (), ("d",), 3.0),
        QueryResult("nan", "a", ("d",), ("d",), 3.0, (math.nan,)),
        QueryResult("slow", "a", ("d",), ("d",), math.inf, (0.5,)),
        QueryResult("untimed", "a", ("d",), ("d",), math.nan, (0.5,)),  # searched in a batch
    ]
    assert smoke_failures(results) == [
        "'empty': no results",
        "'nan': non-finite scores [nan]",
        "'slow': latency is inf",
    ]
