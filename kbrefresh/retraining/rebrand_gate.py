"""The validation gate for a rebrand: new-name queries must improve, old names must keep working.

Golden queries that name an old name are rewritten through the rename map into the
``rebrand`` set (slice ``rebrand``); the originals join the same set as the
``legacy names`` slice. Queries already phrased with the new names (the bundled
``rebrand.jsonl``) get their legacy twin by the inverse rewrite. The usual gate
judges every other set as usual; the rebrand set is judged by two rules only:

- new-name queries: hit@k ≥ ``floor``, or a gain over live of at least ``min_gain``;
- legacy-name queries: hit@k ≥ live − ``legacy_tolerance``, or at most
  ``legacy_noise_queries`` queries lost net (one query of 21 is HNSW or tie noise).

Each rule carries the paired difference, its exact interval and n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import GateOutcome, run_gate, stored_golden
from kbrefresh.gate.golden import GoldenQuery
from kbrefresh.gate.metrics import QueryResult, per_query_scores
from kbrefresh.gate.policy import AcceptancePolicy, default_policy
from kbrefresh.gate.rules import EPSILON
from kbrefresh.gate.statistics import Difference, hit_difference
from kbrefresh.gate.verdict import RuleResult, Verdict
from kbrefresh.retraining.rebrand import RenameMap, parse_rename_map
from kbrefresh.settings import Settings

REBRAND_SET = "rebrand"
NEW_SLICE = "rebrand"
LEGACY_SLICE = "legacy names"


@dataclass(frozen=True)
class RebrandRules:
    """What a rebrand candidate must show on the rebrand set (0–1 scale)."""

    floor: float = 0.8
    min_gain: float = 0.2
    legacy_tolerance: float = 0.02
    legacy_noise_queries: int = 1

    def __post_init__(self) -> None:
        noise = self.legacy_noise_queries
        if isinstance(noise, bool) or not isinstance(noise, int) or noise < 0:
            raise ConfigError(f"rebrand rule legacy_noise_queries {noise!r} is out of range; "
                              "expected an integer ≥ 0")
        for name in ("floor", "min_gain", "legacy_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"rebrand rule {name} {value!r} is out of range; expected 0 to 1")


def rebrand_queries(queries: Sequence[GoldenQuery], renames: RenameMap) -> list[GoldenQuery]:
    """Return the rebrand set: a new-name and a legacy-name query per query naming a product."""
    try:
        inverse: RenameMap | None = parse_rename_map({new: old for old, new in renames.pairs})
    except ConfigError:
        inverse = None  # two old names merged into one new name: no unique way back
    out: dict[tuple[str, str], GoldenQuery] = {}
    for q in queries:
        if renames.mentions(q.query):
            new, legacy = renames.rewrite(q.query), q.query
        elif inverse is not None and q.set_name == REBRAND_SET and inverse.mentions(q.query):
            new, legacy = q.query, inverse.rewrite(q.query)
        else:
            continue
        out.setdefault((NEW_SLICE, new), GoldenQuery(new, q.relevant, NEW_SLICE, REBRAND_SET))
        out.setdefault((LEGACY_SLICE, legacy),
                       GoldenQuery(legacy, q.relevant, LEGACY_SLICE, REBRAND_SET))
    return list(out.values())


def store_rebrand_golden(conn: store.Conn, kb_id: int, renames: RenameMap) -> dict[str, int]:
    """Replace the KB's ``rebrand`` golden set with the one derived from all its golden queries.

    Returns the number of queries per slice (``rebrand``, ``legacy names``).
    """
    queries = rebrand_queries(stored_golden(conn, kb_id), renames)
    conn.execute("DELETE FROM golden_queries WHERE kb_id = %s AND set_name = %s",
                 (kb_id, REBRAND_SET))
    with conn.cursor().copy(
        "COPY golden_queries (kb_id, set_name, query, relevant, slice) FROM STDIN"
    ) as copy:
        for q in queries:
            copy.write_row((kb_id, q.set_name, q.query, list(q.relevant), q.slice))
    return {s: sum(1 for q in queries if q.slice == s) for s in (NEW_SLICE, LEGACY_SLICE)}


def rebrand_rule_results(
    candidate: Sequence[QueryResult],
    live: Sequence[QueryResult] | None,
    rules: RebrandRules,
    *,
    k: int = 5,
    confidence: float = 0.95,
) -> list[RuleResult]:
    """Judge the rebrand set's two slices (see the module docstring), per query.

    With a live baseline each rule carries the paired difference candidate − live,
    its exact interval and n (:func:`~kbrefresh.gate.statistics.hit_difference`).
    """
    metric = f"hit@{k}"
    new = _slice_scores(candidate, live, NEW_SLICE, k, confidence)
    old = _slice_scores(candidate, live, LEGACY_SLICE, k, confidence)
    if new is None:
        new_rule = RuleResult("rebrand queries", metric, NEW_SLICE, None, None, rules.floor,
                              False, "no new-name queries were measured")
    else:
        gain_ok = new.live is not None and new.value - new.live >= rules.min_gain - EPSILON
        new_rule = _with_difference(RuleResult(
            "rebrand queries", metric, NEW_SLICE, new.value, new.live, rules.floor,
            new.value >= rules.floor - EPSILON or gain_ok,
            f"rebrand queries {_pct(new.live)} → {_pct(new.value)} (needs ≥ {_pct(rules.floor)} "
            f"or a gain of {rules.min_gain * 100:.0f} points)"), new)
    if old is None:
        old_rule = RuleResult("legacy names", metric, LEGACY_SLICE, None, None, None, False,
                              "no legacy-name queries were measured")
    else:
        threshold = None if old.live is None else old.live - rules.legacy_tolerance
        lost = 0 if old.live is None else round((old.live - old.value) * old.n)
        old_rule = _with_difference(RuleResult(
            "legacy names", metric, LEGACY_SLICE, old.value, old.live, threshold,
            threshold is None or old.value >= threshold - EPSILON
            or lost <= rules.legacy_noise_queries,
            f"old-name queries {_pct(old.live)} → {_pct(old.value)} (may fall at most "
            f"{rules.legacy_tolerance * 100:.0f} points or {rules.legacy_noise_queries} "
            f"quer{'y' if rules.legacy_noise_queries == 1 else 'ies'}; {max(lost, 0)} lost "
            f"of {old.n})"), old)
    return [new_rule, old_rule]


@dataclass(frozen=True)
class _SliceScores:
    value: float
    live: float | None
    n: int
    difference: Difference | None


def _slice_scores(
    candidate: Sequence[QueryResult],
    live: Sequence[QueryResult] | None,
    slice_: str,
    k: int,
    confidence: float,
) -> _SliceScores | None:
    mask = np.array([r.slice == slice_ for r in candidate], dtype=bool)
    if not mask.any():
        return None
    cand = per_query_scores(candidate, k)[f"hit@{k}"][mask]
    if live is None:
        return _SliceScores(float(cand.mean()), None, int(mask.sum()), None)
    diff = hit_difference(per_query_scores(live, k)[f"hit@{k}"][mask], cand, confidence)
    return _SliceScores(diff.candidate, diff.live, diff.n, diff)


def _with_difference(rule: RuleResult, scores: _SliceScores) -> RuleResult:
    diff = scores.difference
    if diff is None:
        return replace(rule, n=scores.n)
    return replace(rule, n=diff.n, delta=diff.delta, ci_low=diff.low, ci_high=diff.high)


def run_rebrand_gate(
    settings: Settings,
    kb: str,
    version: int,
    *,
    rules: RebrandRules | None = None,
    policy: AcceptancePolicy | None = None,
    against: int | None | str = "live",
    build_smoke_failures: Sequence[str] = (),
) -> GateOutcome:
    """Gate ``version``: the usual policy on the usual sets, the rebrand rules on the rebrand set.

    Raises:
        ConfigError: the KB has no ``rebrand`` golden set (``store_rebrand_golden`` first).
    """
    rules, policy = rules or RebrandRules(), policy or default_policy()
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        sets = sorted({q.set_name for q in stored_golden(conn, kb_id)} - {REBRAND_SET})
    judged_only = AcceptancePolicy(k=policy.k, ndcg_k=policy.ndcg_k, rules=(),
                                   max_slice_disparity=(), max_size_ratio=None,
                                   require_smoke=False)
    rebrand = run_gate(settings, kb, version, policy=judged_only, sets=[REBRAND_SET],
                       against=against)
    if sets:
        usual = run_gate(settings, kb, version, policy=policy, sets=sets, against=against,
                         build_smoke_failures=build_smoke_failures)
    else:  # only the rebrand set: smoke, latency and size as usual, no quality rules
        usual = run_gate(settings, kb, version, sets=[REBRAND_SET], against=against,
                         build_smoke_failures=build_smoke_failures, policy=policy.model_copy(
            update={"rules": tuple(r for r in policy.rules if not r.metric.startswith(
                ("hit@", "recall@", "ndcg@", "mrr"))), "max_slice_disparity": ()}))
    extra = rebrand_rule_results(rebrand.evaluation.candidate_results,
                                 rebrand.evaluation.live_results, rules, k=policy.k,
                                 confidence=policy.confidence)
    return replace(usual, verdict=combine(usual.verdict, extra))


def combine(verdict: Verdict, extra: Sequence[RuleResult]) -> Verdict:
    """Add the rebrand rules to a verdict: it passes only when all rules pass."""
    results = (*extra, *verdict.rules)
    failed = [r for r in results if not r.passed]
    headline = "; ".join(r.reason for r in extra)
    if failed:
        details = "; ".join(f"{r.name} ({r.reason})" for r in failed)
        summary = (f"Rebrand: {headline}. Candidate failed {len(failed)} of {len(results)} "
                   f"rules: {details}; the live version keeps serving.")
    else:
        summary = f"Rebrand: {headline}. Candidate passed all {len(results)} rules; publish now."
    return Verdict(passed=not failed, first_version=verdict.first_version, rules=results,
                   summary=summary)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"
