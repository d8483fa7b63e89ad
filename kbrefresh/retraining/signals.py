"""Measure the retraining signals from Postgres; the pure bands live in ``triggers`` and ``drift``.

Windows end at ``now`` and are half-open on the left: the recent window is
``(now - window_days, now]`` and the reference/baseline window the ``*_days`` before it.
Query drift is read in one pass over ``query_log``: sketches come back as
``array_send`` bytes and are decoded in bulk by numpy, so 100k queries cost one
query and no per-row Python floats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg.rows import tuple_row

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import run_gate
from kbrefresh.retraining.drift import (
    CoverageReport,
    DriftReport,
    compare_distributions,
    coverage_gap,
    fit_query_clusters,
)
from kbrefresh.serving import routing
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

GOLDEN_METRIC = "hit@5"
NO_RESULT = "(no result)"
UNKNOWN_DOCUMENT = "(unknown document)"
# Fitting k-means on a seeded sample keeps the cost flat as the log grows.
_FIT_SAMPLE = 20_000
_FETCH_ROWS = 20_000
_ARRAY_HEADER_INTS = 5  # ndim, has-null flag, element oid, length, lower bound


def _check_now(now: datetime) -> None:
    if now.tzinfo is None:
        raise ConfigError(f"now must be timezone-aware, got {now!r}; use datetime.now(UTC)")


def _check_days(**days: float) -> None:
    for name, value in days.items():
        if not value > 0:
            raise ConfigError(f"expected {name} > 0 days, got {value!r}")


def days_since_last_build(conn: store.Conn, kb_id: int, now: datetime) -> float | None:
    """Return days since the live version was built, or None when nothing is live."""
    _check_now(now)
    row = conn.execute(
        "SELECT coalesce(v.finished_at, v.created_at) AS built FROM kb_routing r "
        "JOIN kb_versions v ON v.kb_id = r.kb_id AND v.version = r.live_version "
        "WHERE r.kb_id = %s",
        (kb_id,),
    ).fetchone()
    if row is None:
        return None
    built: datetime = row["built"]
    return max(0.0, (now - built).total_seconds() / 86_400)


@dataclass(frozen=True)
class Satisfaction:
    """Mean feedback score (1..5; thumbs up = 5, down = 1) per window; None when empty."""

    baseline: float | None
    current: float | None
    n_baseline: int
    n_current: int
    window_days: float
    baseline_days: float


@dataclass(frozen=True)
class ProvenBaseline:
    """Satisfaction of the last proven version over its validation week (set by the monitor)."""

    version: int
    satisfaction: float
    n_feedback: int
    set_at: datetime


def proven_baseline(conn: store.Conn, kb_id: int) -> ProvenBaseline | None:
    """The production baseline's satisfaction, when a proven version recorded feedback."""
    row = conn.execute("SELECT version, metrics, set_at FROM kb_production_baseline "
                       "WHERE kb_id = %s", (kb_id,)).fetchone()
    metrics = dict(row["metrics"]) if row else {}
    if row is None or metrics.get("satisfaction") is None or not metrics.get("feedback"):
        return None
    return ProvenBaseline(int(row["version"]), float(metrics["satisfaction"]),
                          int(metrics["feedback"]), row["set_at"])


def satisfaction_windows(
    conn: store.Conn,
    kb_id: int,
    now: datetime,
    window_days: float = 7,
    baseline_days: float = 28,
) -> Satisfaction:
    """Average feedback in the last ``window_days`` and in the ``baseline_days`` before."""
    _check_now(now)
    _check_days(window_days=window_days, baseline_days=baseline_days)
    split = now - timedelta(days=window_days)
    start = split - timedelta(days=baseline_days)
    row = conn.execute(
        "WITH f AS (SELECT ts, coalesce(rating::float8, CASE WHEN thumbs THEN 5.0 ELSE 1.0 END)"
        " AS score FROM feedback WHERE kb_id = %(kb)s AND ts > %(start)s AND ts <= %(now)s)"
        " SELECT avg(score) FILTER (WHERE ts <= %(split)s) AS baseline,"
        " count(*) FILTER (WHERE ts <= %(split)s) AS n_baseline,"
        " avg(score) FILTER (WHERE ts > %(split)s) AS current,"
        " count(*) FILTER (WHERE ts > %(split)s) AS n_current FROM f",
        {"kb": kb_id, "start": start, "split": split, "now": now},
    ).fetchone()
    assert row is not None
    return Satisfaction(
        _float(row["baseline"]), _float(row["current"]), int(row["n_baseline"]),
        int(row["n_current"]), float(window_days), float(baseline_days),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class GoldenAccuracy:
    """The live version's golden ``metric`` when it was validated (baseline) and now."""

    version: int
    metric: str
    baseline: float
    current: float
    n_queries: int
    golden: str


def golden_accuracy_drop(
    settings: Settings, kb: str, metric: str = GOLDEN_METRIC
) -> GoldenAccuracy | None:
    """Re-measure the live version on the golden queries it was validated with.

    Returns None (and logs why) when nothing is live, the live version has no stored
    verdict with ``metric``, or the golden sets changed since, so the numbers are
    not comparable.
    """
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        verdict = store.version_row(conn, kb_id, live).verdict if live else None
    evaluation = (verdict or {}).get("evaluation") or {}
    stored = ((evaluation.get("candidate") or {}).get("overall") or {}).get(metric)
    if live is None or stored is None:
        logger.info("golden accuracy of %r skipped: no live version with a stored %s", kb, metric)
        return None
    measured = run_gate(settings, kb, live, against=None).evaluation
    current = measured.candidate.overall.get(metric)
    if current is None or (measured.golden, measured.n_queries) != (
        evaluation.get("golden"), evaluation.get("n_queries")
    ):
        logger.info("golden accuracy of %r skipped: golden queries changed since v%d was validated",
                    kb, live)
        return None
    return GoldenAccuracy(live, metric, float(stored), float(current), measured.n_queries,
                          measured.golden)


@dataclass(frozen=True)
class GrownSegment:
    """A segment whose share of queries grew; ``str()`` reads "technical 0.20 → 0.40"."""

    view: str
    name: str
    reference_share: float
    current_share: float

    def __str__(self) -> str:
        return f"{self.name} {self.reference_share:.2f} → {self.current_share:.2f}"


@dataclass(frozen=True)
class DriftView:
    """Drift of one way of segmenting queries ("categories" or "clusters")."""

    view: str
    kl: float | None
    psi: float | None
    js: float | None
    severity: str
    inconclusive: bool
    reason: str
    grown: tuple[GrownSegment, ...]


@dataclass(frozen=True)
class QueryDrift:
    """Query drift between the reference and the recent window, per view, plus coverage.

    The headline ``kl``/``severity`` is the worst conclusive view; ``inconclusive`` is
    True only when no view is conclusive (too few queries), and then never alarms.
    """

    views: tuple[DriftView, ...]
    coverage: CoverageReport
    reference_size: int
    current_size: int
    skipped_sketches: int
    kl: float | None
    severity: str
    inconclusive: bool
    reason: str

    @property
    def grown(self) -> tuple[GrownSegment, ...]:
        return tuple(g for view in self.views for g in view.grown)

    @property
    def segment(self) -> str | None:
        """The grown segment to re-embed first: a category if one grew, else a cluster label."""
        by_view = {v.view: v for v in self.views}
        for name in ("categories", "clusters"):
            view = by_view.get(name)
            if view is not None and view.grown:
                return view.grown[0].name
        return None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form; grown segments also as their "name a → b" text."""
        return asdict(self) | {"segment": self.segment, "grown": [str(g) for g in self.grown]}


@dataclass(frozen=True)
class _QueryWindows:
    recent: npt.NDArray[np.bool_]
    categories: npt.NDArray[np.str_]
    similarity: npt.NDArray[np.float64]
    sketches: npt.NDArray[np.float32]  # rows of ``sketch_rows`` only
    sketch_rows: npt.NDArray[np.intp]


def _fetch_queries(conn: store.Conn, kb_id: int, start: datetime, split: datetime,
                   now: datetime) -> _QueryWindows:
    recent: list[bool] = []
    categories: list[str] = []
    sims: list[float] = []
    blobs: list[bytes | None] = []
    with conn.transaction(), conn.cursor(
        name="kbrefresh_query_drift", binary=True, row_factory=tuple_row
    ) as cur:
        cur.execute(
            "SELECT q.ts > %(split)s, array_send(q.query_sketch), coalesce(d.category,"
            " CASE WHEN q.top_doc_ids[1] IS NULL THEN %(none)s ELSE %(unknown)s END),"
            " q.top_similarity"
            " FROM query_log q LEFT JOIN kb_documents d"
            " ON d.kb_id = q.kb_id AND d.doc_id = q.top_doc_ids[1]"
            " WHERE q.kb_id = %(kb)s AND q.ts > %(start)s AND q.ts <= %(now)s",
            {"kb": kb_id, "start": start, "split": split, "now": now, "none": NO_RESULT,
             "unknown": UNKNOWN_DOCUMENT},
        )
        while rows := cur.fetchmany(_FETCH_ROWS):
            for is_recent, blob, category, sim in rows:
                recent.append(is_recent)
                blobs.append(blob)
                categories.append(category)
                # No result at all is the worst coverage there is.
                sims.append(-1.0 if sim is None else sim)
    sketches, sketch_rows = _decode_sketches(blobs)
    return _QueryWindows(np.array(recent, dtype=bool), np.array(categories, dtype=str),
                         np.array(sims, dtype=np.float64), sketches, sketch_rows)


def _decode_sketches(
    blobs: list[bytes | None],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """Decode ``array_send`` bytes of 1-d real[]; NULL, odd-shaped or zero rows are skipped."""
    lengths = np.fromiter((len(b) if b is not None else 0 for b in blobs), dtype=np.int64,
                          count=len(blobs))
    usable = lengths > _ARRAY_HEADER_INTS * 4
    if not usable.any():
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.intp)
    values, counts = np.unique(lengths[usable], return_counts=True)
    size = int(values[np.argmax(counts)])  # the sketch width most rows were logged with
    rows = np.flatnonzero(lengths == size)
    words = np.frombuffer(b"".join(blobs[i] or b"" for i in rows), dtype=">i4")
    words = words.reshape(rows.size, size // 4)
    dims = (size // 4 - _ARRAY_HEADER_INTS) // 2
    ok = (words[:, 0] == 1) & (words[:, 1] == 0) & (words[:, 3] == dims)
    floats = words.view(">f4")[:, _ARRAY_HEADER_INTS + 1 :: 2].astype(np.float32)
    norms = np.linalg.norm(floats, axis=1)
    ok &= np.isfinite(norms) & (norms > 0)
    return np.ascontiguousarray(floats[ok]), rows[ok]


def query_drift(
    conn: store.Conn,
    kb_id: int,
    now: datetime,
    window_days: float = 7,
    reference_days: float = 28,
    min_samples: int = 200,
    n_clusters: int = 8,
    *,
    coverage_cutoff: float = 0.3,
    kl_thresholds: tuple[float, float] = (0.1, 0.5),
    seed: int = 0,
) -> QueryDrift:
    """Compare the recent window's queries with the reference window's.

    Views: clusters of query sketches fitted on the reference window (named after
    their majority category), and the category of each query's top document.
    Coverage is the share of queries whose top similarity is below
    ``coverage_cutoff`` (a query without results counts as below).
    """
    _check_now(now)
    _check_days(window_days=window_days, reference_days=reference_days)
    split = now - timedelta(days=window_days)
    data = _fetch_queries(conn, kb_id, split - timedelta(days=reference_days), split, now)
    n_cur = int(data.recent.sum())
    n_ref = int(data.recent.size - n_cur)
    options: dict[str, Any] = {"min_samples": min_samples, "kl_thresholds": kl_thresholds}
    categories = _view("categories", compare_distributions(
        data.categories[~data.recent], data.categories[data.recent], **options), str)
    clusters = _cluster_view(data, n_clusters, seed, options)
    coverage = coverage_gap(data.similarity[~data.recent], data.similarity[data.recent],
                            cutoff=coverage_cutoff)
    views = (categories, clusters)
    skipped = int(data.recent.size - data.sketch_rows.size)
    if skipped:
        logger.warning("query drift: %d queries without a usable sketch left out of clusters",
                       skipped)
    return _headline(views, coverage, n_ref, n_cur, skipped)


def _cluster_view(data: _QueryWindows, n_clusters: int, seed: int,
                  options: dict[str, Any]) -> DriftView:
    recent = data.recent[data.sketch_rows]
    reference = data.sketches[~recent]
    if reference.shape[0] < max(n_clusters, options["min_samples"]) or recent.sum() == 0:
        reason = (f"too few sketched queries to cluster: reference {reference.shape[0]}, "
                  f"current {int(recent.sum())}, need {options['min_samples']} each")
        return DriftView("clusters", None, None, None, "inconclusive", True, reason, ())
    ref_categories = data.categories[data.sketch_rows][~recent]
    fit_rows = np.arange(reference.shape[0])
    if fit_rows.size > _FIT_SAMPLE:
        fit_rows = np.sort(np.random.default_rng(seed).choice(fit_rows, _FIT_SAMPLE, replace=False))
    model = fit_query_clusters(reference[fit_rows], n_clusters, seed,
                               categories=ref_categories[fit_rows].tolist())
    ids = model.assign(data.sketches)
    report = compare_distributions(ids[~recent], ids[recent], **options)

    def name(cluster: int | str) -> str:
        label = model.labels[int(cluster)]
        return f"{label} (cluster {cluster})" if label is not None else f"cluster {cluster}"

    return _view("clusters", report, name)


def _view(view: str, report: DriftReport, name: Callable[[int | str], str]) -> DriftView:
    grown = tuple(
        GrownSegment(view, name(s.segment), s.reference_share, s.current_share)
        for s in report.grown_segments
    )
    return DriftView(view, report.kl, report.psi, report.js, report.severity,
                     report.inconclusive, report.reason, grown)


_SEVERITY_ORDER = ("none", "moderate", "severe")


def _headline(views: tuple[DriftView, ...], coverage: CoverageReport, n_ref: int, n_cur: int,
              skipped: int) -> QueryDrift:
    conclusive = [v for v in views if not v.inconclusive and v.kl is not None]
    if not conclusive:
        reason = next((v.reason for v in views), "no queries")
        return QueryDrift(views, coverage, n_ref, n_cur, skipped, None, "inconclusive", True,
                          reason)
    worst = max(conclusive, key=lambda v: (_SEVERITY_ORDER.index(v.severity), v.kl or 0.0))
    reason = f"{worst.view}: {worst.reason}"
    grown = [g for view in views for g in view.grown]
    if grown:
        reason += "; grew: " + ", ".join(str(g) for g in grown)
    return QueryDrift(views, coverage, n_ref, n_cur, skipped, worst.kl, worst.severity, False,
                      reason)
