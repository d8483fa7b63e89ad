"""Document-level retrieval metrics: one small pure function per metric.

Every metric takes the ranked doc ids a query retrieved (chunks already mapped to
their documents) and the relevant doc ids. A document retrieved twice counts once,
at its first rank, and ``k`` cuts the de-duplicated list, so "hit@5" means "one of
the first five distinct documents is relevant". Values are on a 0–1 scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kbrefresh.errors import ConfigError

LATENCY_P50 = "latency_p50_ms"
LATENCY_P95 = "latency_p95_ms"
MRR = "mrr"


def metric_names(k: int = 5, ndcg_k: int = 10) -> tuple[str, ...]:
    """Return the stable names of the metrics :func:`aggregate` computes."""
    return (f"hit@{k}", f"recall@{k}", MRR, f"ndcg@{ndcg_k}", LATENCY_P50, LATENCY_P95,
            f"precision@{k}", f"f1@{k}")


def score_names(k: int = 5, ndcg_k: int = 10) -> tuple[str, ...]:
    """Return the per-query quality metrics (means of 0–1 scores, unlike latency percentiles)."""
    return (f"hit@{k}", f"recall@{k}", MRR, f"ndcg@{ndcg_k}", f"precision@{k}", f"f1@{k}")


def unique_ranked(retrieved: Iterable[str]) -> list[str]:
    """Return ``retrieved`` without repeats, each doc id kept at its first rank."""
    return list(dict.fromkeys(retrieved))


def hit_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Return 1.0 if any of the first ``k`` distinct docs is relevant, else 0.0."""
    relevant_set = _relevant_set(relevant)
    top = unique_ranked(retrieved)[: _check_k(k)]
    return 1.0 if any(doc_id in relevant_set for doc_id in top) else 0.0


def recall_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Return the share of relevant docs found among the first ``k`` distinct docs."""
    relevant_set = _relevant_set(relevant)
    top = unique_ranked(retrieved)[: _check_k(k)]
    return sum(1 for doc_id in top if doc_id in relevant_set) / len(relevant_set)


def precision_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Return the share of the first ``k`` distinct-doc slots that hold a relevant doc.

    Divided by ``k`` even when fewer docs came back: an empty slot is not relevant.
    """
    relevant_set = _relevant_set(relevant)
    top = unique_ranked(retrieved)[: _check_k(k)]
    return sum(1 for doc_id in top if doc_id in relevant_set) / k


def f1_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Return the harmonic mean of precision@k and recall@k (0.0 when both are 0)."""
    precision = precision_at_k(retrieved, relevant, k)
    recall = recall_at_k(retrieved, relevant, k)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def reciprocal_rank(retrieved: Sequence[str], relevant: Iterable[str]) -> float:
    """Return 1 / rank of the first relevant distinct doc over the whole list, or 0.0."""
    relevant_set = _relevant_set(relevant)
    for rank, doc_id in enumerate(unique_ranked(retrieved), start=1):
        if doc_id in relevant_set:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Return binary-relevance nDCG@k with a log2 discount.

    The ideal ranking puts ``min(k, len(relevant))`` relevant docs first.
    """
    relevant_set = _relevant_set(relevant)
    top = unique_ranked(retrieved)[: _check_k(k)]
    dcg = sum(
        1.0 / math.log2(rank + 1)
        for rank, doc_id in enumerate(top, start=1)
        if doc_id in relevant_set
    )
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant_set)) + 1))
    return dcg / ideal


def _check_k(k: int) -> int:
    if k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return k


def _relevant_set(relevant: Iterable[str]) -> set[str]:
    relevant_set = set(relevant)
    if not relevant_set:
        raise ConfigError("relevant doc ids are empty; expected at least one")
    return relevant_set


@dataclass(frozen=True)
class QueryResult:
    """What one golden query retrieved from one knowledge-base version."""

    query: str
    slice: str
    retrieved_doc_ids: tuple[str, ...]
    relevant: tuple[str, ...]
    latency_ms: float
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class MetricTable:
    """Metric means overall and per slice, as computed by :func:`aggregate`.

    A metric absent from a mapping, or not finite, "could not be computed".
    """

    k: int
    ndcg_k: int
    overall: Mapping[str, float]
    by_slice: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    n_queries: int = 0
    slice_counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def slices(self) -> tuple[str, ...]:
        return tuple(sorted(self.by_slice))

    def get(self, metric: str, slice: str | None = None) -> float | None:
        """Return ``metric`` overall (``slice=None``) or for one slice; None if missing."""
        values = self.overall if slice is None else self.by_slice.get(slice, {})
        value = values.get(metric)
        if value is None or not math.isfinite(value):
            return None
        return float(value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (non-finite values become None)."""
        return {
            "k": self.k,
            "ndcg_k": self.ndcg_k,
            "n_queries": self.n_queries,
            "overall": _json_floats(self.overall),
            "by_slice": {name: _json_floats(v) for name, v in sorted(self.by_slice.items())},
            "slice_counts": dict(sorted(self.slice_counts.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricTable:
        """Rebuild a table from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or holds the wrong kind of value.
        """
        try:
            return cls(
                k=int(data["k"]),
                ndcg_k=int(data["ndcg_k"]),
                overall=_float_map(data["overall"]),
                by_slice={str(n): _float_map(v) for n, v in data.get("by_slice", {}).items()},
                n_queries=int(data.get("n_queries", 0)),
                slice_counts={str(n): int(c) for n, c in data.get("slice_counts", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"not a metric table dict ({exc!r}); expected MetricTable.to_dict() output"
            ) from exc


def _json_floats(values: Mapping[str, float]) -> dict[str, float | None]:
    return {name: (v if math.isfinite(v) else None) for name, v in sorted(values.items())}


def _float_map(values: Mapping[str, Any]) -> dict[str, float]:
    return {str(name): (math.nan if v is None else float(v)) for name, v in values.items()}


def aggregate(results: Sequence[QueryResult], k: int = 5, ndcg_k: int = 10) -> MetricTable:
    """Average per-query metrics overall and per slice; latency as p50/p95.

    No results gives a table with no metrics (every rule on it fails as missing).
    """
    _check_k(k)
    _check_k(ndcg_k)
    groups: dict[str, list[QueryResult]] = {}
    for result in results:
        groups.setdefault(result.slice, []).append(result)
    return MetricTable(
        k=k,
        ndcg_k=ndcg_k,
        overall=_summarise(results, k, ndcg_k),
        by_slice={name: _summarise(group, k, ndcg_k) for name, group in sorted(groups.items())},
        n_queries=len(results),
        slice_counts={name: len(group) for name, group in sorted(groups.items())},
    )


def per_query_scores(
    results: Sequence[QueryResult], k: int = 5, ndcg_k: int = 10
) -> dict[str, npt.NDArray[np.float64]]:
    """Return each quality metric of :func:`score_names` per query, in ``results`` order."""
    rows = [
        (
            hit_at_k(r.retrieved_doc_ids, r.relevant, k),
            recall_at_k(r.retrieved_doc_ids, r.relevant, k),
            reciprocal_rank(r.retrieved_doc_ids, r.relevant),
            ndcg_at_k(r.retrieved_doc_ids, r.relevant, ndcg_k),
            precision_at_k(r.retrieved_doc_ids, r.relevant, k),
            f1_at_k(r.retrieved_doc_ids, r.relevant, k),
        )
        for r in results
    ]
    matrix = np.asarray(rows, dtype=float).reshape(len(rows), 6)
    return {name: matrix[:, i] for i, name in enumerate(score_names(k, ndcg_k))}


def _summarise(results: Sequence[QueryResult], k: int, ndcg_k: int) -> dict[str, float]:
    if not results:
        return {}
    latencies = np.asarray([r.latency_ms for r in results], dtype=float)
    per_query = per_query_scores(results, k, ndcg_k)
    summary = {name: float(np.mean(values)) for name, values in per_query.items()}
    timed = latencies[np.isfinite(latencies)]  # NaN: not timed side by side (reused)
    if timed.size:
        summary[LATENCY_P50] = float(np.percentile(timed, 50, method="linear"))
        summary[LATENCY_P95] = float(np.percentile(timed, 95, method="linear"))
    return summary


def slice_disparity(table: MetricTable, metric: str) -> float:
    """Return the gap (max − min) of ``metric`` across the table's slices.

    Raises:
        ConfigError: some slice lacks the metric, or the table has no slices.
    """
    if not table.slices:
        raise ConfigError(f"cannot compare {metric!r} across slices: the table has no slices")
    values = {name: table.get(metric, name) for name in table.slices}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ConfigError(f"metric {metric!r} is missing for slices {missing!r}")
    present = [value for value in values.values() if value is not None]
    return max(present) - min(present)


def smoke_failures(results: Sequence[QueryResult]) -> list[str]:
    """Describe each smoke query that returned nothing, non-finite scores or an infinite
    latency (NaN: not timed, as a query searched in a batch)."""
    failures: list[str] = []
    for result in results:
        if not result.retrieved_doc_ids:
            failures.append(f"{result.query!r}: no results")
        elif not all(math.isfinite(score) for score in result.scores):
            failures.append(f"{result.query!r}: non-finite scores {list(result.scores)!r}")
        elif math.isinf(result.latency_ms):
            failures.append(f"{result.query!r}: latency is {result.latency_ms!r}")
    return failures
