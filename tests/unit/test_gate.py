from __future__ import annotations

import json
import math

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import MetricTable
from kbrefresh.gate.policy import AcceptancePolicy, default_policy, parse_policy
from kbrefresh.gate.verdict import RuleResult, Verdict, evaluate_gate

SLICES = {
    "general": {
        "hit@5": 0.82,
        "recall@5": 0.72,
        "mrr": 0.62,
        "ndcg@10": 0.66,
        "latency_p50_ms": 5.0,
        "latency_p95_ms": 9.0,
    },
    "technical": {
        "hit@5": 0.78,
        "recall@5": 0.70,
        "mrr": 0.58,
        "ndcg@10": 0.64,
        "latency_p50_ms": 6.0,
        "latency_p95_ms": 11.0,
    },
}
OVERALL = {
    "hit@5": 0.80,
    "recall@5": 0.71,
    "mrr": 0.60,
    "ndcg@10": 0.65,
    "latency_p50_ms": 5.5,
    "latency_p95_ms": 10.0,
}
LIVE_BYTES = 1_000_000


def table(
    overall: dict[str, float] | None = None,
    slices: dict[str, dict[str, float]] | None = None,
) -> MetricTable:
    return MetricTable(
        k=5,
        ndcg_k=10,
        overall=dict(OVERALL if overall is None else overall),
        by_slice={
            name: dict(values) for name, values in (SLICES if slices is None else slices).items()
        },
        n_queries=100,
        slice_counts={"general": 60, "technical": 40},
    )


def changed_slice(name: str, metric: str, value: float) -> dict[str, dict[str, float]]:
    slices = {slice_: dict(values) for slice_, values in SLICES.items()}
    slices[name][metric] = value
    return slices


def gate(
    candidate: MetricTable,
    live: MetricTable | None = None,
    policy: AcceptancePolicy | None = None,
    *,
    size: int = LIVE_BYTES,
    live_size: int | None = LIVE_BYTES,
    smoke: tuple[str, ...] = (),
) -> Verdict:
    return evaluate_gate(
        candidate,
        table() if live is None else live,
        policy or default_policy(),
        candidate_size_bytes=size,
        live_size_bytes=live_size,
        smoke_failures=smoke,
    )


def failed_names(verdict: Verdict) -> list[str]:
    return [rule.name for rule in verdict.failed_rules]


def test_same_metrics_pass_every_playbook_rule() -> None:
    verdict = gate(table())
    assert verdict.passed
    assert not verdict.first_version
    # smoke + hit@5 ≥ 0.5 + 4 quality metrics × (overall + 2 slices) + p95 + disparity + size
    assert len(verdict.rules) == 1 + 1 + 4 * 3 + 1 + 1 + 1
    assert verdict.summary == (
        "Candidate passed all 17 rules against the live version; it may be published."
    )


def test_losing_three_points_on_one_slice_fails_and_names_the_slice() -> None:
    verdict = gate(table(slices=changed_slice("technical", "recall@5", 0.67)))
    assert not verdict.passed
    [failed] = verdict.failed_rules
    assert failed.threshold == pytest.approx(0.68)  # 0.70 - 0.02
    assert failed == RuleResult(
        name="recall@5 [technical] ≥ live − 0.02",
        metric="recall@5",
        slice="technical",
        value=0.67,
        baseline=0.70,
        threshold=failed.threshold,
        passed=False,
        reason="0.67 < 0.68",
    )
    assert verdict.summary == (
        "Candidate failed 1 of 17 rules: recall@5 [technical] ≥ live − 0.02 (0.67 < 0.68);"
        " the live version keeps serving."
    )


def test_losing_one_point_passes() -> None:
    verdict = gate(table(slices=changed_slice("technical", "recall@5", 0.69)))
    assert verdict.passed


def test_losing_exactly_the_tolerance_passes() -> None:
    # 0.80 - 0.02 is 0.7800000000000001 in floats; 0.78 must still pass.
    assert gate(table(overall={**OVERALL, "hit@5": 0.78})).passed


def test_overall_drop_fails() -> None:
    verdict = gate(table(overall={**OVERALL, "mrr": 0.57}))  # 0.60 - 0.03
    assert failed_names(verdict) == ["mrr ≥ live − 0.02"]


@pytest.mark.parametrize(("factor", "passed"), [(2.5, False), (1.9, True), (2.0, True)])
def test_p95_latency_against_twice_live(factor: float, passed: bool) -> None:
    verdict = gate(table(overall={**OVERALL, "latency_p95_ms": 10.0 * factor}))
    assert verdict.passed is passed
    [latency] = [rule for rule in verdict.rules if rule.metric == "latency_p95_ms"]
    assert latency.name == "latency_p95_ms ≤ live × 2 + 3"
    assert latency.threshold == pytest.approx(23.0)  # 10 ms × (1 + 1.0) + 3 ms noise slack
    assert latency.passed is passed


@pytest.mark.parametrize(("live_ms", "candidate_ms", "passed"), [(1.7, 3.7, True), (1.7, 6.5, False)])
def test_latency_slack_absorbs_noise_on_tiny_latencies(
    live_ms: float, candidate_ms: float, passed: bool
) -> None:
    verdict = evaluate_gate(
        table(overall={**OVERALL, "latency_p95_ms": candidate_ms}),
        table(overall={**OVERALL, "latency_p95_ms": live_ms}),
        default_policy(), candidate_size_bytes=100, live_size_bytes=100, smoke_failures=[],
    )
    [latency] = [rule for rule in verdict.rules if rule.metric == "latency_p95_ms"]
    assert latency.threshold == pytest.approx(1.7 * 2 + 3)
    assert latency.passed is passed


@pytest.mark.parametrize(
    ("size", "passed", "reason"),
    [
        (2_100_000, False, "2,100,000 > 2,000,000 bytes (2.1× live)"),
        (1_900_000, True, "1,900,000 ≤ 2,000,000 bytes (1.9× live)"),
    ],
)
def test_size_against_twice_live(size: int, passed: bool, reason: str) -> None:
    verdict = gate(table(), size=size)
    assert verdict.passed is passed
    [rule] = [rule for rule in verdict.rules if rule.metric == "size_bytes"]
    assert (rule.name, rule.passed, rule.reason) == ("size ≤ live × 2", passed, reason)


def test_unknown_live_size_fails() -> None:
    verdict = gate(table(), live_size=None)
    [failed] = verdict.failed_rules
    assert failed.reason == "metric 'size_bytes' could not be computed for the live baseline"


def test_missing_candidate_metric_fails() -> None:
    overall = {name: value for name, value in OVERALL.items() if name != "mrr"}
    verdict = gate(table(overall=overall))
    [failed] = verdict.failed_rules
    assert failed.name == "mrr ≥ live − 0.02"
    assert failed.reason == "metric 'mrr' could not be computed for the candidate"


def test_non_finite_candidate_metric_fails() -> None:
    verdict = gate(table(overall={**OVERALL, "ndcg@10": math.nan}))
    assert failed_names(verdict) == ["ndcg@10 ≥ live − 0.02"]


def test_missing_live_metric_fails() -> None:
    live = table(slices=changed_slice("general", "ndcg@10", math.nan))
    verdict = gate(table(), live)
    [failed] = verdict.failed_rules
    assert failed.name == "ndcg@10 [general] ≥ live − 0.02"
    assert failed.value == 0.66
    assert failed.reason == (
        "metric 'ndcg@10 [general]' could not be computed for the live baseline"
    )


def test_slice_absent_from_candidate_fails() -> None:
    verdict = gate(table(slices={"general": SLICES["general"]}))
    assert failed_names(verdict) == [
        "hit@5 [technical] ≥ live − 0.02",
        "recall@5 [technical] ≥ live − 0.02",
        "mrr [technical] ≥ live − 0.02",
        "ndcg@10 [technical] ≥ live − 0.02",
    ]
    assert verdict.failed_rules[0].reason == (
        "metric 'hit@5 [technical]' could not be computed for the candidate"
    )


def test_new_slice_without_baseline_fails() -> None:
    slices = {**SLICES, "billing": SLICES["general"]}
    verdict = gate(table(slices=slices))
    assert "hit@5 [billing] ≥ live − 0.02" in failed_names(verdict)


def test_empty_candidate_fails_every_metric_rule() -> None:
    verdict = gate(MetricTable(k=5, ndcg_k=10, overall={}))
    assert not verdict.passed
    assert all(
        rule.passed == (rule.metric in {"smoke_failures", "size_bytes"}) for rule in verdict.rules
    )


def test_first_version_is_judged_on_value_thresholds_only() -> None:
    # Far below any live value, but no live baseline: only hit@5 ≥ 0.5 applies.
    candidate = table(
        overall={**OVERALL, "recall@5": 0.1, "latency_p95_ms": 900.0},
        slices=changed_slice("technical", "mrr", 0.05),
    )
    verdict = evaluate_gate(
        candidate,
        None,
        default_policy(),
        candidate_size_bytes=10**12,
        live_size_bytes=None,
        smoke_failures=[],
    )
    assert verdict.passed
    assert verdict.first_version
    assert [rule.name for rule in verdict.rules] == [
        "smoke queries return sane results",
        "hit@5 ≥ 0.5",
        "hit@5 slice disparity ≤ 0.1",
    ]
    assert verdict.summary == (
        "First version, no live baseline: judged on value thresholds only."
        " Candidate passed all 3 rules; it may be published."
    )


def test_first_version_below_value_threshold_fails() -> None:
    candidate = table(
        overall={**OVERALL, "hit@5": 0.45},
        slices=changed_slice("general", "hit@5", 0.45) | {"technical": {"hit@5": 0.45}},
    )
    verdict = evaluate_gate(
        candidate,
        None,
        default_policy(),
        candidate_size_bytes=1,
        live_size_bytes=None,
        smoke_failures=[],
    )
    assert failed_names(verdict) == ["hit@5 ≥ 0.5"]
    assert verdict.summary == (
        "First version, no live baseline: judged on value thresholds only."
        " Candidate failed 1 of 3 rules: hit@5 ≥ 0.5 (0.45 < 0.5); nothing is published."
    )


def test_smoke_failures_fail() -> None:
    smoke = ("'reset 2FA': no results", "'refund': non-finite scores [nan]", "a", "b")
    verdict = gate(table(), smoke=smoke)
    [failed] = verdict.failed_rules
    assert failed.name == "smoke queries return sane results"
    assert failed.value == 4.0
    assert failed.reason == (
        "4 smoke failures: 'reset 2FA': no results; 'refund': non-finite scores [nan]; a (+1 more)"
    )


def test_smoke_can_be_switched_off() -> None:
    policy = parse_policy({"require_smoke": False})
    assert gate(table(), policy=policy, smoke=("x",)).passed


def test_disparity_rule() -> None:
    # hit@5: general 0.90, technical 0.75 -> gap 0.15 > 0.10
    slices = changed_slice("general", "hit@5", 0.90)
    slices["technical"]["hit@5"] = 0.75
    candidate = table(slices=slices)
    verdict = gate(candidate, live=candidate)
    [failed] = verdict.failed_rules
    assert failed.name == "hit@5 slice disparity ≤ 0.1"
    assert failed.slice == "*"
    assert failed.value == pytest.approx(0.15)
    assert failed.reason == "0.15 > 0.1 (general 0.9, technical 0.75)"


def test_disparity_within_limit_passes() -> None:
    [rule] = [rule for rule in gate(table()).rules if "disparity" in rule.name]
    assert rule.passed
    assert rule.value == pytest.approx(0.04)  # 0.82 - 0.78


def test_disparity_without_slices_fails() -> None:
    verdict = evaluate_gate(
        table(slices={}),
        None,
        default_policy(),
        candidate_size_bytes=1,
        live_size_bytes=None,
        smoke_failures=[],
    )
    assert failed_names(verdict) == ["hit@5 slice disparity ≤ 0.1"]


def test_relative_and_absolute_change_must_both_hold() -> None:
    policy = parse_policy(
        {
            "rules": [
                {
                    "metric": "mrr",
                    "change": {"direction": "higher_is_better", "absolute": 0.1, "relative": 0.05},
                }
            ],
            "max_slice_disparity": [],
        }
    )
    # live 0.60: absolute allows ≥ 0.50, relative allows ≥ 0.60 × 0.95 = 0.57
    verdict = gate(table(overall={**OVERALL, "mrr": 0.56}), policy=policy)
    assert [(rule.name, rule.passed) for rule in verdict.rules] == [
        ("smoke queries return sane results", True),
        ("mrr ≥ live − 0.1", True),
        ("mrr ≥ live × 0.95", False),
        ("size ≤ live × 2", True),
    ]
    assert verdict.failed_rules[0].threshold == pytest.approx(0.57)


def test_bounds_and_named_slice() -> None:
    policy = parse_policy(
        {
            "rules": [
                {"metric": "latency_p95_ms", "slice": "technical", "upper_bound": 10},
                {"metric": "recall@5", "slice": "general", "lower_bound": 0.7},
                {"metric": "recall@5", "slice": "billing", "lower_bound": 0.7},
            ],
            "max_slice_disparity": [],
            "max_size_ratio": None,
        }
    )
    verdict = gate(table(), policy=policy)
    assert [(rule.name, rule.passed, rule.reason) for rule in verdict.rules[1:]] == [
        ("latency_p95_ms [technical] ≤ 10", False, "11 > 10"),
        ("recall@5 [general] ≥ 0.7", True, "0.72 ≥ 0.7"),
        (
            "recall@5 [billing] ≥ 0.7",
            False,
            "metric 'recall@5 [billing]' could not be computed for the candidate",
        ),
    ]


def test_verdict_round_trips_through_json() -> None:
    verdict = gate(table(slices=changed_slice("technical", "recall@5", 0.67)), live_size=None)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert Verdict.from_dict(data) == verdict


def test_from_dict_rejects_other_shapes() -> None:
    with pytest.raises(ConfigError, match=r"^not a verdict dict \(KeyError\('passed'\)\)"):
        Verdict.from_dict({})


def test_markdown_has_table_and_decision() -> None:
    verdict = gate(table(slices=changed_slice("technical", "recall@5", 0.67)))
    markdown = verdict.to_markdown()
    assert markdown.startswith("**Validation gate: FAILED**\n\n" + verdict.summary + "\n\n")
    assert "| Rule | Value | Live | Threshold | Result | Reason |" in markdown
    assert (
        "| recall@5 [technical] ≥ live − 0.02 | 0.67 | 0.7 | 0.68 | **FAIL** | 0.67 < 0.68 |"
        in markdown
    )
    assert markdown.endswith("**Decision:** keep the live version: 1 of 17 rules failed.")


def test_markdown_escapes_pipes() -> None:
    verdict = gate(table(), smoke=("'a|b': no results",))
    assert "'a\\|b': no results" in verdict.to_markdown()
