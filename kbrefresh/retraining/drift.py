"""Query drift and coverage signals: pure functions over counts, labels and vectors.

Divergences use additive smoothing so a bin that is empty in one window does not
make the value infinite. Directions and bases:

- ``kl_divergence``: KL(current ‖ reference) in nats (natural log): how surprising
  today's queries are under last period's distribution.
- ``psi``: population stability index, KL(current ‖ reference) + KL(reference ‖ current),
  natural log (symmetric).
- ``jensen_shannon``: Jensen-Shannon *distance* (the square root of the divergence),
  base 2, so it lies in [0, 1].
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from kbrefresh.errors import ConfigError

logger = logging.getLogger(__name__)

DriftSeverity = Literal["none", "moderate", "severe", "inconclusive"]
Segment = int | str


def _probabilities(counts: ArrayLike, smoothing: float, name: str) -> NDArray[np.float64]:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"expected {name} to be a non-empty 1-d histogram, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"expected {name} to hold finite counts >= 0, got {arr.tolist()!r}")
    smoothed = arr + smoothing
    total = float(smoothed.sum())
    if total <= 0:
        raise ConfigError(f"{name} is all zeros; pass counts or smoothing > 0")
    return smoothed / total


def _pair(
    reference_counts: ArrayLike, current_counts: ArrayLike, smoothing: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if not np.isfinite(smoothing) or smoothing < 0:
        raise ConfigError(f"expected smoothing >= 0, got {smoothing!r}")
    ref = _probabilities(reference_counts, smoothing, "reference_counts")
    cur = _probabilities(current_counts, smoothing, "current_counts")
    if ref.shape != cur.shape:
        raise ConfigError(
            f"expected histograms over the same bins, got {ref.size} and {cur.size} bins"
        )
    return ref, cur


def kl_divergence(
    reference_counts: ArrayLike, current_counts: ArrayLike, *, smoothing: float = 0.5
) -> float:
    """Return KL(current ‖ reference) in nats after adding ``smoothing`` to every bin.

    With ``smoothing=0`` a bin empty in the reference but not in the current window
    gives ``inf``.
    """
    ref, cur = _pair(reference_counts, current_counts, smoothing)
    return float(entropy(cur, ref))


def psi(reference_counts: ArrayLike, current_counts: ArrayLike, *, smoothing: float = 0.5) -> float:
    """Return the population stability index, sum((cur - ref) * ln(cur / ref))."""
    ref, cur = _pair(reference_counts, current_counts, smoothing)
    # PSI is exactly the symmetrised KL, so scipy does the arithmetic.
    return float(entropy(cur, ref) + entropy(ref, cur))


def jensen_shannon(
    reference_counts: ArrayLike, current_counts: ArrayLike, *, smoothing: float = 0.5
) -> float:
    """Return the Jensen-Shannon distance (not squared), base 2, in [0, 1]."""
    ref, cur = _pair(reference_counts, current_counts, smoothing)
    return float(jensenshannon(ref, cur, base=2.0))


def classify_kl(kl: float, thresholds: tuple[float, float] = (0.1, 0.5)) -> DriftSeverity:
    """Band a KL value: below low is "none", low..high inclusive "moderate", above high "severe"."""
    low, high = _check_kl_thresholds(thresholds)
    if np.isnan(kl) or kl < 0:
        raise ConfigError(f"expected a KL divergence >= 0, got {kl!r}")
    if kl > high:
        return "severe"
    return "moderate" if kl >= low else "none"


def _check_kl_thresholds(thresholds: tuple[float, float]) -> tuple[float, float]:
    low, high = thresholds
    if not 0 <= low < high:
        raise ConfigError(
            f"expected kl_thresholds (low, high) with 0 <= low < high, got {thresholds!r}"
        )
    return float(low), float(high)


def _as_2d(embeddings: ArrayLike, name: str) -> NDArray[np.floating]:
    arr = np.asarray(embeddings)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"expected {name} as a non-empty 2-d array, got shape {arr.shape}")
    return arr


def _unit_rows(arr: NDArray[np.floating], name: str) -> NDArray[np.floating]:
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise ConfigError(
            f"{name} has {int(bad.sum())} zero or non-finite rows (first at {int(np.argmax(bad))})"
        )
    unit: NDArray[np.floating] = arr / norms
    return unit


def _nearest(arr: NDArray[np.floating], centroids: NDArray[np.float64]) -> NDArray[np.intp]:
    if arr.shape[1] != centroids.shape[1]:
        raise ConfigError(f"expected embeddings with {centroids.shape[1]} dims, got {arr.shape[1]}")
    # Row norms are positive per-row constants, so argmax of x·c over unit centroids
    # is argmax of cosine; skipping the normalisation saves a full copy of the input.
    scores = arr @ centroids.T.astype(arr.dtype, copy=False)
    if not np.all(np.isfinite(scores)):
        raise ConfigError("embeddings contain NaN or infinite values")
    return np.asarray(np.argmax(scores, axis=1), dtype=np.intp)


@dataclass(frozen=True, eq=False)
class ClusterModel:
    """Query clusters on the unit sphere; assignment is by cosine similarity.

    ``centroids`` are unit rows (k x d). ``labels[i]`` is the most common category
    of cluster i's reference members (ties: alphabetical first), or None when no
    categories were given or the cluster is empty. ``sizes`` counts reference members.
    """

    centroids: NDArray[np.float64]
    labels: tuple[str | None, ...]
    sizes: tuple[int, ...]

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, embeddings: ArrayLike) -> NDArray[np.intp]:
        """Return the id of the nearest centroid by cosine for every row."""
        return _nearest(_as_2d(embeddings, "embeddings"), self.centroids)

    def segment_names(self, cluster_ids: ArrayLike) -> NDArray[np.str_]:
        """Map cluster ids to their label, or to ``"cluster-<id>"`` when unlabelled."""
        names = np.array(
            [label if label is not None else f"cluster-{i}" for i, label in enumerate(self.labels)]
        )
        ids = np.asarray(cluster_ids, dtype=np.intp)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_clusters):
            raise ConfigError(f"expected cluster ids in 0..{self.n_clusters - 1}")
        return np.asarray(names[ids])


def fit_query_clusters(
    reference_embeddings: ArrayLike,
    n_clusters: int = 8,
    seed: int = 0,
    *,
    categories: Sequence[str] | None = None,
    iterations: int = 10,
) -> ClusterModel:
    """Fit k-means (k-means++ init, seeded) on unit-normalised reference query embeddings.

    Raises:
        ConfigError: fewer rows than clusters, zero/NaN rows, or categories of the wrong length.
    """
    unit = _unit_rows(_as_2d(reference_embeddings, "reference_embeddings"), "reference_embeddings")
    if not 1 <= n_clusters <= unit.shape[0]:
        raise ConfigError(f"expected 1 <= n_clusters <= {unit.shape[0]} rows, got {n_clusters!r}")
    if categories is not None and len(categories) != unit.shape[0]:
        raise ConfigError(
            f"expected one category per embedding ({unit.shape[0]}), got {len(categories)}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        means, _ = kmeans2(unit, n_clusters, iter=iterations, minit="++", rng=seed)
    for warning in caught:
        logger.warning("k-means: %s", warning.message)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    centroids = np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)
    centroids = np.asarray(centroids, dtype=np.float64)
    centroids.setflags(write=False)
    ids = _nearest(unit, centroids)
    sizes = tuple(int(n) for n in np.bincount(ids, minlength=n_clusters))
    return ClusterModel(centroids, _majority_labels(ids, categories, n_clusters), sizes)


def _majority_labels(
    ids: NDArray[np.intp], categories: Sequence[str] | None, n_clusters: int
) -> tuple[str | None, ...]:
    if categories is None:
        return (None,) * n_clusters
    cats = np.asarray(categories, dtype=str)
    labels: list[str | None] = []
    for cluster in range(n_clusters):
        values, counts = np.unique(cats[ids == cluster], return_counts=True)
        # np.unique sorts, and argmax takes the first maximum: ties go alphabetically.
        labels.append(str(values[np.argmax(counts)]) if values.size else None)
    return tuple(labels)


@dataclass(frozen=True)
class SegmentShare:
    """One segment's share of queries in each window; ``change`` = current - reference."""

    segment: Segment
    reference_count: int
    current_count: int
    reference_share: float
    current_share: float
    change: float


@dataclass(frozen=True)
class DriftReport:
    """Query-distribution drift between a reference and a current window.

    ``segments`` are sorted by ``change``, largest growth first. ``kl``/``psi``/``js``
    are None only when a window is empty; when a window is smaller than
    ``min_samples`` they are still computed but ``severity`` is "inconclusive".
    """

    kl: float | None
    psi: float | None
    js: float | None
    segments: tuple[SegmentShare, ...]
    grown_segments: tuple[SegmentShare, ...]
    reference_size: int
    current_size: int
    severity: DriftSeverity
    inconclusive: bool
    reason: str


def _label_counts(labels: ArrayLike, name: str) -> tuple[NDArray[np.generic], NDArray[np.intp]]:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ConfigError(f"expected {name} as a 1-d sequence, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iuU":
        raise ConfigError(
            f"expected {name} to be cluster ids (int) or categories (str), got dtype {arr.dtype}"
        )
    values, counts = np.unique(arr, return_counts=True)
    return values, counts


def _segment_table(
    reference_labels: ArrayLike, current_labels: ArrayLike
) -> tuple[list[Segment], NDArray[np.float64], NDArray[np.float64]]:
    ref_values, ref_counts = _label_counts(reference_labels, "reference_labels")
    cur_values, cur_counts = _label_counts(current_labels, "current_labels")
    kinds = {("str" if v.dtype.kind == "U" else "int") for v in (ref_values, cur_values) if v.size}
    if len(kinds) > 1:
        raise ConfigError("expected both windows labelled the same way (both ids or both strings)")
    ref_map = dict(zip(ref_values.tolist(), ref_counts.tolist(), strict=True))
    cur_map = dict(zip(cur_values.tolist(), cur_counts.tolist(), strict=True))
    segments: list[Segment] = sorted(set(ref_map) | set(cur_map))
    ref = np.array([ref_map.get(s, 0) for s in segments], dtype=np.float64)
    cur = np.array([cur_map.get(s, 0) for s in segments], dtype=np.float64)
    return segments, ref, cur


def compare_distributions(
    reference_labels: ArrayLike,
    current_labels: ArrayLike,
    *,
    min_samples: int = 200,
    kl_thresholds: tuple[float, float] = (0.1, 0.5),
    min_share_change: float = 0.05,
    smoothing: float = 0.5,
) -> DriftReport:
    """Compare per-query segment labels (cluster ids or category strings) of two windows.

    ``grown_segments`` are those whose share grew by at least ``min_share_change``
    (absolute, 0.20 → 0.40 is +0.20). Severity bands KL with ``classify_kl``.
    """
    _check_kl_thresholds(kl_thresholds)
    if min_samples < 1:
        raise ConfigError(f"expected min_samples >= 1, got {min_samples!r}")
    segments, ref, cur = _segment_table(reference_labels, current_labels)
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    kl = ps = js = None
    if n_ref and n_cur:
        kl = kl_divergence(ref, cur, smoothing=smoothing)
        ps = psi(ref, cur, smoothing=smoothing)
        js = jensen_shannon(ref, cur, smoothing=smoothing)
    ref_share = ref / n_ref if n_ref else np.zeros_like(ref)
    cur_share = cur / n_cur if n_cur else np.zeros_like(cur)
    shares = sorted(
        (
            SegmentShare(s, int(rc), int(cc), float(rs), float(cs), float(cs - rs))
            for s, rc, cc, rs, cs in zip(segments, ref, cur, ref_share, cur_share, strict=True)
        ),
        # stable sort over the naturally sorted segments: ties keep id / name order
        key=lambda share: -share.change,
    )
    grown = tuple(s for s in shares if s.change >= min_share_change)
    if kl is None or min(n_ref, n_cur) < min_samples:
        reason = f"too few queries: reference {n_ref}, current {n_cur}, need {min_samples} each"
        return DriftReport(
            kl, ps, js, tuple(shares), grown, n_ref, n_cur, "inconclusive", True, reason
        )
    severity = classify_kl(kl, kl_thresholds)
    reason = f"KL {kl:.3f} is {severity} (thresholds {kl_thresholds[0]}, {kl_thresholds[1]})"
    return DriftReport(kl, ps, js, tuple(shares), grown, n_ref, n_cur, severity, False, reason)


@dataclass(frozen=True)
class CoverageReport:
    """Share of queries whose best similarity to the corpus is below ``cutoff``, per window.

    Shares are None for an empty window; ``change`` is None unless both exist.
    """

    cutoff: float
    reference_share_below: float | None
    current_share_below: float | None
    change: float | None
    reference_size: int
    current_size: int


def _share_below(sims: ArrayLike, cutoff: float, name: str) -> tuple[float | None, int]:
    arr = np.asarray(sims, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"expected {name} as a 1-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} contains NaN or infinite similarities")
    if arr.size == 0:
        return None, 0
    return float(np.count_nonzero(arr < cutoff) / arr.size), int(arr.size)


def coverage_gap(
    reference_best_sims: ArrayLike, current_best_sims: ArrayLike, *, cutoff: float = 0.3
) -> CoverageReport:
    """Measure how many queries the corpus covers badly (best similarity < cutoff) now vs before."""
    if not -1.0 <= cutoff <= 1.0:
        raise ConfigError(f"expected a cosine cutoff in [-1, 1], got {cutoff!r}")
    ref, n_ref = _share_below(reference_best_sims, cutoff, "reference_best_sims")
    cur, n_cur = _share_below(current_best_sims, cutoff, "current_best_sims")
    change = cur - ref if ref is not None and cur is not None else None
    return CoverageReport(cutoff, ref, cur, change, n_ref, n_cur)
