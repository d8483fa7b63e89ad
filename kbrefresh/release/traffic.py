"""What users saw of one version in one time window, read from ``query_log`` and ``feedback``.

Rollout analysis (per arm) and the post-deploy monitor (per check) both judge a version on
these samples: searches, failed searches, latency, empty or low-similarity results, ratings
and thumbs. Samples are returned whole (not only summaries) because the significance tests
of an A/B need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from kbrefresh.errors import ConfigError
from kbrefresh.store import Conn

# A best similarity below this is a "low-similarity" answer: the KB probably lacks the topic.
DEFAULT_LOW_SIMILARITY = 0.3


@dataclass(frozen=True)
class WindowSamples:
    """Per-query and per-feedback samples of one version in ``[start, end)``."""

    version: int
    start: datetime
    end: datetime
    latencies_ms: npt.NDArray[np.float64]  # every search, failed ones included
    failed: npt.NDArray[np.bool_]
    empty: npt.NDArray[np.bool_]  # succeeded with no hit
    top_similarity: npt.NDArray[np.float64]  # succeeded with hits
    ratings: npt.NDArray[np.float64]  # 1..5
    thumbs: npt.NDArray[np.bool_]

    @property
    def searches(self) -> int:
        return int(self.failed.size)

    @property
    def error_rate(self) -> float | None:
        return float(self.failed.mean()) if self.failed.size else None

    @property
    def p95_latency_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms.size else None

    @property
    def empty_rate(self) -> float | None:
        ok = self.answered
        return float(self.empty.sum() / ok) if ok else None

    @property
    def answered(self) -> int:
        """Searches that did not fail."""
        return int((~self.failed).sum())

    def low_similarity_count(self, cutoff: float = DEFAULT_LOW_SIMILARITY) -> int:
        """Successful searches that came back empty or below ``cutoff``."""
        return int(self.empty.sum() + (self.top_similarity < cutoff).sum())

    def low_similarity_rate(self, cutoff: float = DEFAULT_LOW_SIMILARITY) -> float | None:
        """Share of successful searches that came back empty or below ``cutoff``."""
        ok = self.answered
        return self.low_similarity_count(cutoff) / ok if ok else None

    @property
    def satisfaction(self) -> float | None:
        """Mean score 1..5 (thumbs up = 5, down = 1), as the retraining check computes it."""
        scores = np.concatenate([self.ratings, np.where(self.thumbs, 5.0, 1.0)])
        return float(scores.mean()) if scores.size else None

    @property
    def feedback_count(self) -> int:
        return int(self.ratings.size + self.thumbs.size)

    def summary(self, low_similarity: float = DEFAULT_LOW_SIMILARITY) -> dict[str, float | None]:
        """Plain numbers for reports, artifacts and MLflow."""
        return {
            "searches": float(self.searches), "error_rate": self.error_rate,
            "p95_latency_ms": self.p95_latency_ms, "empty_rate": self.empty_rate,
            "low_similarity_rate": self.low_similarity_rate(low_similarity),
            "satisfaction": self.satisfaction, "feedback": float(self.feedback_count),
        }


def window_samples(
    conn: Conn, kb_id: int, version: int, start: datetime, end: datetime
) -> WindowSamples:
    """Read the searches served by ``version`` in ``[start, end)`` and the feedback on them.

    Feedback is attributed by the query it rates, so it counts for the version that
    answered, whenever it arrived.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ConfigError(f"window bounds must be timezone-aware; got {start!r} and {end!r}")
    if end <= start:
        raise ConfigError(f"window end {end.isoformat()} is not after its start {start.isoformat()}")
    params = {"kb": kb_id, "version": version, "start": start, "end": end}
    queries = conn.execute(
        "SELECT latency_ms, error IS NOT NULL AS failed,"
        " error IS NULL AND cardinality(top_doc_ids) = 0 AS empty, top_similarity"
        " FROM query_log WHERE kb_id = %(kb)s AND version = %(version)s"
        " AND ts >= %(start)s AND ts < %(end)s",
        params,
    ).fetchall()
    feedback = conn.execute(
        "SELECT f.rating, f.thumbs FROM feedback f JOIN query_log q ON q.query_id = f.query_id"
        " WHERE q.kb_id = %(kb)s AND q.version = %(version)s"
        " AND q.ts >= %(start)s AND q.ts < %(end)s",
        params,
    ).fetchall()
    sims = [r["top_similarity"] for r in queries
            if not r["failed"] and not r["empty"] and r["top_similarity"] is not None]
    return WindowSamples(
        version=version, start=start, end=end,
        latencies_ms=np.array([r["latency_ms"] for r in queries], dtype=np.float64),
        failed=np.array([r["failed"] for r in queries], dtype=np.bool_),
        empty=np.array([r["empty"] for r in queries], dtype=np.bool_),
        top_similarity=np.array(sims, dtype=np.float64),
        ratings=np.array([r["rating"] for r in feedback if r["rating"] is not None],
                         dtype=np.float64),
        thumbs=np.array([r["thumbs"] for r in feedback if r["thumbs"] is not None],
                        dtype=np.bool_),
    )
