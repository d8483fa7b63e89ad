"""Paired confidence intervals for candidate − live: one small pure function per method.

Candidate and live answer the same golden queries, so each query gives a pair of
scores and the gate judges the per-query differences (paired), not two separate
means: that removes the query-to-query variation both versions share.

- hit@k (0/1 per query): an exact interval from the discordant pairs (McNemar's
  setting). Of the ``d`` queries where exactly one version hits, ``b`` are live-only
  hits; given ``d``, ``b ~ Binomial(d, p)`` and the mean difference is
  ``d (1 − 2p) / n``, so the Clopper–Pearson interval of ``p`` (scipy ``binomtest``)
  maps onto an interval of the difference.
- other means (recall, MRR, nDCG, precision, F1): a seeded bootstrap of the
  per-query differences (scipy ``bootstrap``, BCa).
- slice gap (max − min of slice means): a seeded bootstrap that resamples queries
  within each slice, keeping each query's live and candidate scores together.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from kbrefresh.errors import ConfigError

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Difference:
    """Mean of candidate − live over ``n`` paired queries, with its confidence interval."""

    live: float
    candidate: float
    delta: float
    low: float
    high: float
    n: int


def hit_difference(live: Scores, candidate: Scores, confidence: float = 0.95) -> Difference:
    """Exact paired interval of mean(candidate − live) for 0/1 scores (discordant pairs).

    No discordant pair means both versions hit the same queries: the interval is [0, 0].
    """
    live_a, cand_a = _paired(live, candidate)
    if not np.isin(live_a, (0.0, 1.0)).all() or not np.isin(cand_a, (0.0, 1.0)).all():
        raise ConfigError("hit scores must be 0 or 1 for the exact paired interval")
    n = len(live_a)
    live_only = int(np.sum((live_a == 1) & (cand_a == 0)))
    discordant = live_only + int(np.sum((live_a == 0) & (cand_a == 1)))
    delta = float(np.mean(cand_a) - np.mean(live_a))
    if discordant == 0:
        return Difference(float(np.mean(live_a)), float(np.mean(cand_a)), delta, 0.0, 0.0, n)
    ci = stats.binomtest(live_only, discordant).proportion_ci(confidence, method="exact")
    low = discordant * (1 - 2 * ci.high) / n
    high = discordant * (1 - 2 * ci.low) / n
    return Difference(float(np.mean(live_a)), float(np.mean(cand_a)), delta, low, high, n)


def mean_difference(
    live: Scores,
    candidate: Scores,
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """Seeded bootstrap (BCa) interval of mean(candidate − live) over paired queries."""
    live_a, cand_a = _paired(live, candidate)
    diff = cand_a - live_a
    delta = float(np.mean(diff))
    if np.ptp(diff) == 0:  # every query moved by the same amount: no sampling spread
        return Difference(float(np.mean(live_a)), float(np.mean(cand_a)), delta, delta, delta,
                          len(diff))
    low, high = _bootstrap((diff,), _mean, confidence, resamples, seed)
    return Difference(float(np.mean(live_a)), float(np.mean(cand_a)), delta, low, high, len(diff))


def gap_difference(
    slices: Sequence[str],
    live: Scores,
    candidate: Scores,
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """Interval of (candidate's slice gap − live's), resampling queries within slices.

    The gap is max − min of the slice means. ``live``/``candidate`` fields of the
    result hold the two gaps.

    Raises:
        ConfigError: fewer than two slices, or arrays of different lengths.
    """
    live_a, cand_a = _paired(live, candidate)
    if len(slices) != len(live_a):
        raise ConfigError(f"{len(slices)} slice labels for {len(live_a)} paired scores")
    names = sorted(set(slices))
    if len(names) < 2:
        raise ConfigError(f"a slice gap needs at least two slices, got {names!r}")
    labels = np.asarray(slices)
    groups = [np.flatnonzero(labels == name).astype(float) for name in names]

    def statistic(*indexes: npt.NDArray[np.float64], axis: int = -1) -> Scores:
        picks = [np.asarray(i, dtype=np.intp) for i in indexes]
        cand = np.stack([np.mean(cand_a[p], axis=axis) for p in picks])
        live_ = np.stack([np.mean(live_a[p], axis=axis) for p in picks])
        gaps: Scores = (cand.max(axis=0) - cand.min(axis=0)) - (live_.max(axis=0) - live_.min(axis=0))
        return gaps

    gap_live = _gap(live_a, groups)
    gap_cand = _gap(cand_a, groups)
    delta = gap_cand - gap_live
    if all(np.ptp(cand_a[g.astype(np.intp)] - live_a[g.astype(np.intp)]) == 0 for g in groups):
        low = high = delta
    else:
        low, high = _bootstrap(tuple(groups), statistic, confidence, resamples, seed)
    return Difference(gap_live, gap_cand, delta, low, high, len(live_a))


def _gap(scores: Scores, groups: Sequence[npt.NDArray[np.float64]]) -> float:
    means = [float(np.mean(scores[g.astype(np.intp)])) for g in groups]
    return max(means) - min(means)


def _mean(diff: Scores, axis: int = -1) -> Scores:
    return np.asarray(np.mean(diff, axis=axis))


def _bootstrap(
    data: tuple[Scores, ...],
    statistic: object,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa is undefined when nearly every resample agrees; percentile then.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.bootstrap(
                data, statistic, n_resamples=resamples, vectorized=True, paired=False,
                confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    return low, high


def _paired(live: Scores, candidate: Scores) -> tuple[Scores, Scores]:
    live_a = np.asarray(live, dtype=float)
    cand_a = np.asarray(candidate, dtype=float)
    if live_a.shape != cand_a.shape or live_a.ndim != 1:
        raise ConfigError(
            f"paired scores need two 1-d arrays of one length, got {live_a.shape} and {cand_a.shape}"
        )
    if len(live_a) == 0:
        raise ConfigError("no paired scores to compare; expected at least one query")
    return live_a, cand_a
