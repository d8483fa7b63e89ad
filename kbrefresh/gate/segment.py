"""The segment gate of a drift-biased re-embedding: the drifted segment must improve, the
others must not regress.

It consumes per-query results (``metrics.QueryResult``) of a baseline and a candidate on
the same queries, matched by query text. The target segment passes when its hit@k gains
at least ``min_gain`` (default +2 points) and the gain is significant: an exact one-sided
McNemar test (``scipy.stats.binomtest`` on the discordant pairs) below ``alpha``. Every
other segment passes when its hit@k drops by no more than ``max_other_drop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import binomtest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import QueryResult, hit_at_k, ndcg_at_k


@dataclass(frozen=True)
class SegmentPolicy:
    min_gain: float = 0.02
    alpha: float = 0.05
    max_other_drop: float = 0.0
    k: int = 5
    ndcg_k: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha!r}")
        if self.max_other_drop < 0:
            raise ConfigError(f"max_other_drop must be >= 0, got {self.max_other_drop!r}")


@dataclass(frozen=True)
class SliceDelta:
    n: int
    hit_before: float
    hit_after: float
    ndcg_before: float
    ndcg_after: float
    improved: int  # queries hit after and missed before
    worsened: int

    @property
    def gain(self) -> float:
        return self.hit_after - self.hit_before


@dataclass(frozen=True)
class SegmentVerdict:
    passed: bool
    segment: str
    target: SliceDelta
    p_value: float
    others: dict[str, SliceDelta] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def summary(self) -> str:
        t = self.target
        head = (f"{self.segment!r} hit@5 {t.hit_before:.3f} -> {t.hit_after:.3f} "
                f"({t.gain * 100:+.1f} points, n={t.n}, +{t.improved}/-{t.worsened}, "
                f"p={self.p_value:.3g})")
        return head + ("; passed" if self.passed else f"; failed: {'; '.join(self.reasons)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentVerdict:
        """Read back ``to_dict``'s output (a stored or raised verdict)."""
        def delta(d: dict[str, Any]) -> SliceDelta:
            return SliceDelta(**{k: v for k, v in d.items() if k != "gain"})
        return cls(bool(data["passed"]), str(data["segment"]), delta(data["target"]),
                   float(data["p_value"]), {k: delta(v) for k, v in data["others"].items()},
                   tuple(data["reasons"]))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "segment": self.segment, "p_value": self.p_value,
                "target": asdict(self.target) | {"gain": self.target.gain},
                "others": {k: asdict(v) | {"gain": v.gain} for k, v in self.others.items()},
                "reasons": list(self.reasons), "summary": self.summary()}


def slice_delta(before: Sequence[QueryResult], after: Sequence[QueryResult],
                k: int = 5, ndcg_k: int = 10) -> SliceDelta:
    """Compare two runs of the same queries (matched by query text)."""
    by_query = {r.query: r for r in after}
    missing = [r.query for r in before if r.query not in by_query]
    if missing:
        raise ConfigError(f"query {missing[0]!r} has a baseline result but no candidate result; "
                          "expected both runs on the same queries")
    pairs = [(r, by_query[r.query]) for r in before]
    hb = [hit_at_k(b.retrieved_doc_ids, b.relevant, k) for b, _ in pairs]
    ha = [hit_at_k(a.retrieved_doc_ids, a.relevant, k) for _, a in pairs]
    nb = [ndcg_at_k(b.retrieved_doc_ids, b.relevant, ndcg_k) for b, _ in pairs]
    na = [ndcg_at_k(a.retrieved_doc_ids, a.relevant, ndcg_k) for _, a in pairs]
    n = len(pairs)

    def mean(xs: list[float]) -> float:
        return sum(xs) / n if n else 0.0

    return SliceDelta(n, mean(hb), mean(ha), mean(nb), mean(na),
                      sum(1 for b, a in zip(hb, ha, strict=True) if a > b),
                      sum(1 for b, a in zip(hb, ha, strict=True) if a < b))


def judge_segment(
    before: Sequence[QueryResult], after: Sequence[QueryResult], segment: str,
    policy: SegmentPolicy | None = None,
) -> SegmentVerdict:
    """Judge a candidate's per-query results against a baseline's for ``segment``."""
    policy = policy or SegmentPolicy()
    slices = sorted({r.slice for r in before})
    if segment not in slices:
        raise ConfigError(f"segment {segment!r} has no evaluation queries; expected one of: "
                          f"{', '.join(slices) or '(none)'}")
    deltas = {s: slice_delta([r for r in before if r.slice == s],
                             [r for r in after if r.slice == s], policy.k, policy.ndcg_k)
              for s in slices}
    target = deltas.pop(segment)
    discordant = target.improved + target.worsened
    p = (binomtest(target.improved, discordant, 0.5, alternative="greater").pvalue
         if discordant else 1.0)
    return rejudge(SegmentVerdict(True, segment, target, float(p), deltas), policy)


def rejudge(verdict: SegmentVerdict, policy: SegmentPolicy) -> SegmentVerdict:
    """Return ``verdict``'s measurements judged under ``policy`` (same k as measured)."""
    segment, target, p = verdict.segment, verdict.target, verdict.p_value
    reasons = []
    if target.gain < policy.min_gain:
        reasons.append(f"{segment!r} gained {target.gain * 100:+.1f} points hit@{policy.k}, "
                       f"expected at least {policy.min_gain * 100:+.1f}")
    if p >= policy.alpha:
        reasons.append(f"the gain is not significant (McNemar p={p:.3g} >= {policy.alpha})")
    for name, d in verdict.others.items():
        if -d.gain > policy.max_other_drop + 1e-12:
            reasons.append(f"{name!r} regressed {d.gain * 100:+.1f} points hit@{policy.k}")
    return SegmentVerdict(not reasons, segment, target, p, dict(verdict.others), tuple(reasons))


def smallest_p_value(target: SliceDelta) -> float:
    """The lowest McNemar p any candidate could reach on these queries: every query the
    baseline misses found, none lost (``0.5 ** misses``)."""
    misses = round(target.n * (1 - target.hit_before))
    return float(binomtest(misses, misses, 0.5, alternative="greater").pvalue) if misses else 1.0
