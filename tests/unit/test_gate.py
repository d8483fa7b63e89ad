from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.comparison import family_confidence
from kbrefresh.gate.evaluation import Evaluation, GateOutcome
from kbrefresh.gate.metrics import QueryResult, aggregate
from kbrefresh.gate.policy import AcceptancePolicy, default_policy, parse_policy
from kbrefresh.gate.verdict import RuleResult, Verdict, evaluate_gate
from kbrefresh.tracking.reports import outcome_from_dict

LIVE_BYTES = 1_000_000
# Per slice: 1 = the query's document is ranked first, 0 = it is not retrieved.
BASE = {"general": [1] * 60 + [0] * 20, "technical": [1] * 30 + [0] * 10}


def results(
    hits: Mapping[str, Sequence[int]], latency: float = 5.0
) -> list[QueryResult]:
    out = []
    for slice_, pattern in hits.items():
        for i, hit in enumerate(pattern):
            doc = f"{slice_}-{i}"
            retrieved = (doc, "other") if hit else ("other", "another")
            out.append(QueryResult(f"q {doc}", slice_, retrieved, (doc,), latency, (0.9, 0.8)))
    return out


def lose(pattern: Sequence[int], count: int) -> list[int]:
    """Turn the first ``count`` hits of ``pattern`` into misses."""
    out, lost = list(pattern), 0
    for i, hit in enumerate(out):
        if hit and lost < count:
            out[i], lost = 0, lost + 1
    return out


def gate(
    candidate: list[QueryResult],
    live: list[QueryResult] | None = None,
    policy: AcceptancePolicy | None = None,
    *,
    size: int = LIVE_BYTES,
    live_size: int | None = LIVE_BYTES,
    smoke: tuple[str, ...] = (),
    first: bool = False,
) -> Verdict:
    return evaluate_gate(
        candidate,
        None if first else (results(BASE) if live is None else live),
        policy or default_policy(),
        candidate_size_bytes=size,
        live_size_bytes=None if first else live_size,
        smoke_failures=smoke,
    )


def rule(verdict: Verdict, name: str) -> RuleResult:
    [found] = [r for r in verdict.rules if r.name == name]
    return found


def failed_names(verdict: Verdict) -> list[str]:
    return [r.name for r in verdict.failed_rules]


def test_same_results_pass_every_playbook_rule() -> None:
    verdict = gate(results(BASE))
    assert verdict.passed and not verdict.first_version
    # smoke + hit@5 ≥ 0.5 + 6 quality metrics × (overall + 2 slices) + p95 + gap + size
    assert len(verdict.rules) == 1 + 1 + 6 * 3 + 1 + 1 + 1
    assert verdict.summary == (
        "Candidate passed all 23 rules against the live version; it may be published."
    )
    hit = rule(verdict, "hit@5 [technical] ≥ live − 0.02")
    assert (hit.n, hit.delta, hit.ci_low, hit.ci_high) == (40, 0.0, 0.0, 0.0)


def test_a_six_query_slice_losing_one_query_passes_and_shows_its_interval() -> None:
    live = {**BASE, "install": [1] * 6}
    verdict = gate(results({**live, "install": [0] + [1] * 5}), results(live))
    assert verdict.passed, verdict.summary
    hit = rule(verdict, "hit@5 [install] ≥ live − 0.02")
    assert (hit.baseline, hit.value, hit.n) == (1.0, pytest.approx(5 / 6), 6)
    # Two slices of 30+ can fail, so each slice is judged at 1 − 0.05 / 2 = 97.5%:
    # 1 discordant pair, p in [0.0125, 1] -> difference in [−1/6, (1 − 0.025)/6].
    assert (hit.ci_low, hit.ci_high) == pytest.approx((-1 / 6, 0.975 / 6))
    assert hit.reason == (
        "Δ −0.167, 97.5% CI [−0.167, +0.163], n=6; 6 < 30 queries: reported, cannot fail alone"
    )


def test_a_128_query_slice_losing_ten_queries_fails_on_its_interval() -> None:
    live = {"general": [1] * 100 + [0] * 28, "technical": BASE["technical"]}
    candidate = {**live, "general": lose(live["general"], 10)}
    verdict = gate(results(candidate), results(live))
    hit = rule(verdict, "hit@5 [general] ≥ live − 0.02")
    assert not hit.passed
    # 10 discordant pairs, all live-only; 2 slices -> 97.5%: p in [0.0125^(1/10), 1]
    assert hit.delta == pytest.approx(-10 / 128)
    assert (hit.ci_low, hit.ci_high) == pytest.approx(
        (-10 / 128, 10 * (1 - 2 * 0.0125 ** 0.1) / 128)
    )
    assert hit.threshold == pytest.approx(100 / 128 - 0.02)
    assert hit.reason == (
        "Δ −0.078, 97.5% CI [−0.078, −0.023], n=128; "
        "whole interval below −0.020: worse beyond the tolerance"
    )


def test_a_128_query_slice_losing_30_points_fails_as_catastrophic() -> None:
    live = {"general": [1] * 100 + [0] * 28, "technical": BASE["technical"]}
    candidate = {**live, "general": lose(live["general"], 39)}  # −30.5 points
    verdict = gate(results(candidate), results(live))
    hit = rule(verdict, "hit@5 [general] ≥ live − 0.02")
    assert not hit.passed
    # Upper bound 39 (1 − 2 · 0.0125^(1/39)) / 128: at least 10 points worse.
    assert hit.ci_high == pytest.approx(39 * (1 - 2 * 0.0125 ** (1 / 39)) / 128)
    assert hit.reason.endswith("; catastrophic: worse by ≥ 0.1 with 97.5% confidence on 128 queries")
    assert "[general]" in verdict.summary and "the live version keeps serving" in verdict.summary


def test_a_drop_within_noise_on_a_large_slice_passes() -> None:
    # 3 lost and 1 gained of 80: −2.5 points, within noise at 95%.
    general = lose(BASE["general"], 3)
    general[-1] = 1
    verdict = gate(results({**BASE, "general": general}))
    hit = rule(verdict, "hit@5 [general] ≥ live − 0.02")
    assert hit.passed and hit.delta == pytest.approx(-2 / 80)
    assert hit.ci_high is not None and hit.ci_high > -0.02


@pytest.mark.parametrize(
    ("size", "lost", "high", "passed"),
    [
        # upper bound d (1 − 2 · 0.0125^(1/d)) / n, d = lost (discordant pairs, live-only)
        (20, 10, -0.1452, False),  # surely 10+ points worse on ≥ 10 queries
        (20, 8, -0.0626, True),  # 40 points lost, but 10+ is not sure
        (9, 8, -0.1391, True),  # too few queries for the guard
        (14, 3, 0.1148, True),  # −21 points, but 3 queries: could be noise
        (12, 2, 0.1294, True),
    ],
)
def test_catastrophic_guard_on_small_slices(size: int, lost: int, high: float, passed: bool) -> None:
    live = {**BASE, "faq": [1] * size}
    verdict = gate(results({**live, "faq": lose(live["faq"], lost)}), results(live))
    found = rule(verdict, "hit@5 [faq] ≥ live − 0.02")
    assert found.ci_high == pytest.approx(high, abs=1e-4)
    assert found.passed is passed


def test_noise_settings_come_from_the_policy() -> None:
    live = {**BASE, "faq": [1] * 12}
    candidate = results({**live, "faq": lose(live["faq"], 2)})
    policy = parse_policy({"catastrophic_drop": None})
    assert rule(gate(candidate, results(live), policy), "hit@5 [faq] ≥ live − 0.02").passed
    policy = parse_policy({"min_slice_size": 5, "catastrophic_drop": None, "confidence": 0.8})
    verdict = gate(candidate, results(live), policy)
    # 3 slices of 5+ can fail: 1 − 0.2 / 3 per slice
    assert "93.33% CI" in rule(verdict, "hit@5 [faq] ≥ live − 0.02").reason


def test_first_version_is_judged_on_value_thresholds_only() -> None:
    # A wide slice gap and no live baseline: only smoke and hit@5 ≥ 0.5 apply.
    candidate = results({"general": [1] * 40, "technical": [1] * 10 + [0] * 30})
    verdict = gate(candidate, first=True, size=10**12)
    assert verdict.passed and verdict.first_version
    assert [r.name for r in verdict.rules] == ["smoke queries return sane results", "hit@5 ≥ 0.5"]
    assert verdict.summary == (
        "First version, no live baseline: judged on value thresholds only."
        " Candidate passed all 2 rules; it may be published."
    )


def test_first_version_below_value_threshold_fails() -> None:
    verdict = gate(results({"general": [1] * 9 + [0] * 11}), first=True)
    assert failed_names(verdict) == ["hit@5 ≥ 0.5"]
    assert verdict.summary == (
        "First version, no live baseline: judged on value thresholds only."
        " Candidate failed 1 of 2 rules: hit@5 ≥ 0.5 (0.45 < 0.5); nothing is published."
    )


def test_absolute_disparity_cap_is_opt_in() -> None:
    candidate = results({"general": [1] * 40, "technical": [1] * 10 + [0] * 30})
    policy = parse_policy({"max_slice_disparity": [{"metric": "hit@5", "max": 0.1}]})
    verdict = gate(candidate, first=True, policy=policy)
    assert failed_names(verdict) == ["hit@5 slice disparity ≤ 0.1"]
    assert verdict.failed_rules[0].reason == "0.75 > 0.1 (general 1, technical 0.25)"


def test_slice_gap_growing_beyond_the_tolerance_fails() -> None:
    live = {"general": [1] * 32 + [0] * 8, "technical": [1] * 32 + [0] * 8}
    candidate = {**live, "technical": lose(live["technical"], 12)}  # 0.8 -> 0.5
    policy = parse_policy({"rules": [], "max_size_ratio": None})
    verdict = gate(results(candidate), results(live), policy)
    gap = rule(verdict, "hit@5 slice gap ≤ live's + 0.02")
    assert not gap.passed
    assert (gap.baseline, gap.value, gap.delta) == pytest.approx((0.0, 0.3, 0.3))
    assert gap.ci_low is not None and gap.ci_low > 0.02
    assert gap.reason.startswith("gap 0 → 0.3, Δ +0.300, 95% CI [")


def test_slice_gap_ignores_small_slices() -> None:
    live = {**BASE, "install": [1] * 6}
    verdict = gate(results({**live, "install": [0] * 6}), results(live))
    gap = rule(verdict, "hit@5 slice gap ≤ live's + 0.02")
    assert gap.passed and gap.delta == 0.0


def test_slice_gap_with_one_large_slice_has_nothing_to_compare() -> None:
    live = {"general": [1] * 40, "install": [1] * 6}
    verdict = gate(results(live), results(live))
    gap = rule(verdict, "hit@5 slice gap ≤ live's + 0.02")
    assert gap.passed
    assert gap.reason == "fewer than 2 slices of ≥ 30 queries (general 40, install 6): nothing to compare"


@pytest.mark.parametrize(("factor", "passed"), [(2.5, False), (1.9, True), (2.0, True)])
def test_p95_latency_against_twice_live(factor: float, passed: bool) -> None:
    verdict = gate(results(BASE, latency=10.0 * factor), results(BASE, latency=10.0))
    latency = rule(verdict, "latency_p95_ms ≤ live × 2 + 3")
    assert latency.threshold == pytest.approx(23.0)  # 10 ms × (1 + 1.0) + 3 ms noise slack
    assert latency.passed is passed and verdict.passed is passed


@pytest.mark.parametrize(
    ("size", "passed", "reason"),
    [
        (2_100_000, False, "2,100,000 > 2,000,000 bytes (2.1× live)"),
        (1_900_000, True, "1,900,000 ≤ 2,000,000 bytes (1.9× live)"),
    ],
)
def test_size_against_twice_live(size: int, passed: bool, reason: str) -> None:
    verdict = gate(results(BASE), size=size)
    found = rule(verdict, "size ≤ live × 2")
    assert (found.passed, found.reason) == (passed, reason)


def test_unknown_live_size_fails() -> None:
    [failed] = gate(results(BASE), live_size=None).failed_rules
    assert failed.reason == "metric 'size_bytes' could not be computed for the live baseline"


def test_named_slice_absent_from_the_candidate_fails() -> None:
    policy = parse_policy({"rules": [{"metric": "recall@5", "slice": "billing", "lower_bound": 0.7}],
                           "max_slice_disparity": [], "max_size_ratio": None})
    [failed] = gate(results(BASE), policy=policy).failed_rules
    assert failed.reason == "metric 'recall@5 [billing]' could not be computed for the candidate"


def test_results_of_other_queries_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^candidate and live results must hold the same queries"):
        gate(results(BASE), results({"general": [1]}))


def test_smoke_failures_fail() -> None:
    smoke = ("'reset 2FA': no results", "'refund': non-finite scores [nan]", "a", "b")
    [failed] = gate(results(BASE), smoke=smoke).failed_rules
    assert failed.name == "smoke queries return sane results"
    assert failed.reason == (
        "4 smoke failures: 'reset 2FA': no results; 'refund': non-finite scores [nan]; a (+1 more)"
    )


def test_relative_and_absolute_change_must_both_hold_on_the_interval() -> None:
    policy = parse_policy({
        "rules": [{"metric": "hit@5", "change": {
            "direction": "higher_is_better", "absolute": 0.2, "relative": 0.05}}],
        "max_slice_disparity": [], "max_size_ratio": None,
    })
    live = {"general": [1] * 100 + [0] * 28}
    verdict = gate(results({"general": lose(live["general"], 10)}), results(live), policy)
    # live 0.78125: absolute allows −0.2; relative allows −0.039 (0.78125 × 0.05).
    assert [(r.name, r.passed) for r in verdict.rules] == [
        ("smoke queries return sane results", True),
        ("hit@5 ≥ live − 0.2", True),
        ("hit@5 ≥ live × 0.95", True),  # interval upper bound −0.030 ≥ −0.039
    ]
    assert verdict.rules[2].threshold == pytest.approx(100 / 128 * 0.95)


def test_stale_and_gained_queries_are_reported() -> None:
    verdict = evaluate_gate(
        results(BASE), results(BASE), default_policy(), candidate_size_bytes=1,
        live_size_bytes=1, smoke_failures=[], stale_queries=["old a", "old b"],
        coverage_gained=["new c"],
    )
    assert verdict.passed
    assert verdict.summary.startswith(
        "2 golden queries are answerable only by deleted documents: left out (archive with"
        " `kbrefresh golden prune`). 1 golden query is answerable only by documents new in the"
        " candidate: coverage gained, left out. Candidate passed all 23 rules"
    )
    markdown = verdict.to_markdown()
    assert "**Stale golden queries (left out):** 'old a'; 'old b'" in markdown
    assert "**Coverage gained (left out):** 'new c'" in markdown
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict


def test_verdict_round_trips_through_json() -> None:
    live = {"general": [1] * 100 + [0] * 28, "technical": BASE["technical"]}
    verdict = gate(results({**live, "general": lose(live["general"], 10)}), results(live),
                   live_size=None)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert Verdict.from_dict(data) == verdict


def test_a_stored_gate_outcome_reads_back_whole() -> None:
    """What a version row stores (``GateOutcome.as_dict``) reads back field for field."""
    cand, live = results(BASE), results({**BASE, "general": lose(BASE["general"], 3)})
    verdict = gate(cand, live, live_size=LIVE_BYTES)
    evaluation = Evaluation(aggregate(cand), aggregate(live), 900, LIVE_BYTES, (), "golden sets",
                            len(cand), live_reused=97, latency_rounds=2)
    data = json.loads(json.dumps(GateOutcome(verdict, evaluation).as_dict(), allow_nan=False))
    back = outcome_from_dict(data)
    assert back.verdict == verdict
    assert back.evaluation.as_dict() == evaluation.as_dict()
    assert (back.evaluation.live_reused, back.evaluation.latency_rounds) == (97, 2)


def test_old_verdicts_without_intervals_still_load() -> None:
    data = {"passed": True, "first_version": True, "summary": "s", "rules": [{
        "name": "hit@5 ≥ 0.5", "metric": "hit@5", "slice": None, "value": 0.7, "baseline": None,
        "threshold": 0.5, "passed": True, "reason": "0.7 ≥ 0.5"}]}
    verdict = Verdict.from_dict(data)
    assert verdict.rules[0].ci_low is None and verdict.stale_queries == ()


def test_from_dict_rejects_other_shapes() -> None:
    with pytest.raises(ConfigError, match=r"^not a verdict dict \(KeyError\('passed'\)\)"):
        Verdict.from_dict({})


def test_markdown_shows_live_candidate_delta_interval_and_n() -> None:
    live = {"general": [1] * 100 + [0] * 28, "technical": BASE["technical"]}
    verdict = gate(results({**live, "general": lose(live["general"], 10)}), results(live))
    markdown = verdict.to_markdown()
    assert markdown.startswith("**Validation gate: FAILED**\n\n" + verdict.summary + "\n\n")
    assert "| Rule | Live | Candidate | Δ | CI | n | Threshold | Result | Reason |" in markdown
    assert (
        "| hit@5 [general] ≥ live − 0.02 | 0.7812 | 0.7031 | -0.07812 | [-0.078, -0.023] | 128 |"
        " 0.7612 | **FAIL** |" in markdown
    )
    assert markdown.endswith("rules failed.")


@pytest.mark.parametrize(("sizes", "expected"), [
    ({"a": 80, "b": 40}, 0.975), ({"a": 80, "b": 6}, 0.95), ({"a": 5}, 0.95),
    ({f"s{i}": 30 for i in range(13)}, 1 - 0.05 / 13),
])
def test_per_slice_confidence_is_shared_by_the_slices_that_can_fail(
    sizes: dict[str, int], expected: float
) -> None:
    assert family_confidence(default_policy(), sizes) == pytest.approx(expected)


def test_markdown_escapes_pipes() -> None:
    verdict = gate(results(BASE), smoke=("'a|b': no results",))
    assert "'a\\|b': no results" in verdict.to_markdown()
