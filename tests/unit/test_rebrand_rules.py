"""The rebrand rules on per-query results: before/after figures, intervals, noise allowance."""

from __future__ import annotations

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.metrics import QueryResult
from kbrefresh.gate.rules import RuleResult
from kbrefresh.retraining.rebrand_gate import (
    LEGACY_SLICE,
    NEW_SLICE,
    RebrandRules,
    rebrand_rule_results,
)


def results(slice_: str, hits: list[bool]) -> list[QueryResult]:
    return [QueryResult(f"{slice_} {i}", slice_, ("d",) if hit else ("x",), ("d",), 1.0)
            for i, hit in enumerate(hits)]


def judged(new_live: list[bool], new: list[bool], old_live: list[bool], old: list[bool],
           rules: RebrandRules | None = None) -> tuple[RuleResult, RuleResult]:
    live = results(NEW_SLICE, new_live) + results(LEGACY_SLICE, old_live)
    cand = results(NEW_SLICE, new) + results(LEGACY_SLICE, old)
    new_rule, old_rule = rebrand_rule_results(cand, live, rules or RebrandRules())
    return new_rule, old_rule


def test_new_names_pass_on_the_floor_or_a_gain_and_carry_the_paired_interval() -> None:
    new_rule, old_rule = judged([False] * 10 + [True] * 10, [True] * 19 + [False],
                                [True] * 20, [True] * 20)
    assert (new_rule.passed, new_rule.value, new_rule.baseline) == (True, 0.95, 0.5)
    assert new_rule.n == 20 and new_rule.delta == pytest.approx(0.45)
    assert new_rule.ci_low > 0 and new_rule.ci_high >= 0.45
    assert new_rule.reason.startswith("rebrand queries 50% → 95%")
    assert old_rule.passed and old_rule.delta == 0.0


def test_one_lost_legacy_query_is_noise_two_are_not() -> None:
    _, one = judged([True] * 21, [True] * 21, [True] * 21, [True] * 20 + [False])
    assert one.passed and "1 lost of 21" in one.reason
    _, two = judged([True] * 21, [True] * 21, [True] * 21, [True] * 19 + [False] * 2)
    assert not two.passed and "2 lost of 21" in two.reason
    _, strict = judged([True] * 21, [True] * 21, [True] * 21, [True] * 20 + [False],
                       RebrandRules(legacy_noise_queries=0))
    assert not strict.passed


def test_no_queries_fail_and_bad_rules_are_refused() -> None:
    new_rule, old_rule = rebrand_rule_results([], None, RebrandRules())
    assert not new_rule.passed and new_rule.reason == "no new-name queries were measured"
    assert not old_rule.passed
    with pytest.raises(ConfigError, match="legacy_noise_queries -1 is out of range"):
        RebrandRules(legacy_noise_queries=-1)
