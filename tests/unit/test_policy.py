from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.gate.policy import (
    AcceptancePolicy,
    ChangeThreshold,
    DisparityRule,
    MetricRule,
    default_policy,
    load_policy,
    parse_policy,
)

HIGHER = ChangeThreshold(direction="higher_is_better", absolute=0.02)


def test_default_policy_is_the_playbook() -> None:
    policy = default_policy()
    assert (policy.k, policy.ndcg_k) == (5, 10)
    assert policy.max_size_ratio == 2.0
    assert policy.require_smoke is True
    # The gap may not grow by more than 2 points; an absolute cap is opt-in.
    assert policy.max_slice_disparity == (DisparityRule(metric="hit@5", max_increase=0.02),)
    assert policy.max_slice_disparity[0].max is None
    assert (policy.confidence, policy.min_slice_size) == (0.95, 30)
    assert (policy.catastrophic_drop, policy.catastrophic_min_queries) == (0.10, 10)
    assert policy.rules == (
        MetricRule(metric="hit@5", lower_bound=0.5),
        MetricRule(metric="hit@5", change=HIGHER),
        MetricRule(metric="hit@5", slice="*", change=HIGHER),
        MetricRule(metric="recall@5", change=HIGHER),
        MetricRule(metric="recall@5", slice="*", change=HIGHER),
        MetricRule(metric="mrr", change=HIGHER),
        MetricRule(metric="mrr", slice="*", change=HIGHER),
        MetricRule(metric="ndcg@10", change=HIGHER),
        MetricRule(metric="ndcg@10", slice="*", change=HIGHER),
        MetricRule(metric="precision@5", change=HIGHER),
        MetricRule(metric="precision@5", slice="*", change=HIGHER),
        MetricRule(metric="f1@5", change=HIGHER),
        MetricRule(metric="f1@5", slice="*", change=HIGHER),
        MetricRule(
            metric="latency_p95_ms",
            change=ChangeThreshold(direction="lower_is_better", relative=1.0, slack=3.0),
        ),
    )


def test_default_rules_follow_k() -> None:
    policy = parse_policy({"k": 3, "ndcg_k": 7})
    assert {rule.metric for rule in policy.rules} == {
        "hit@3",
        "recall@3",
        "mrr",
        "ndcg@7",
        "precision@3",
        "f1@3",
        "latency_p95_ms",
    }
    assert policy.max_slice_disparity[0].metric == "hit@3"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("", encoding="utf-8")
    assert load_policy(path) == default_policy()


YAML_POLICY = """\
k: 5
require_smoke: false
max_size_ratio: 3
rules:
  - metric: hit@5
    lower_bound: 0.6
  - metric: recall@5
    slice: "*"
    change: {direction: higher_is_better, absolute: 0.05, relative: 0.1}
  - metric: latency_p95_ms
    upper_bound: 250
max_slice_disparity:
  - {metric: mrr, max: 0.2}
"""

TOML_POLICY = """\
k = 5
require_smoke = false
max_size_ratio = 3

[[rules]]
metric = "hit@5"
lower_bound = 0.6

[[rules]]
metric = "recall@5"
slice = "*"
change = { direction = "higher_is_better", absolute = 0.05, relative = 0.1 }

[[rules]]
metric = "latency_p95_ms"
upper_bound = 250

[[max_slice_disparity]]
metric = "mrr"
max = 0.2
"""


@pytest.mark.parametrize(("name", "text"), [("p.yaml", YAML_POLICY), ("p.toml", TOML_POLICY)])
def test_load_yaml_and_toml(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert policy == AcceptancePolicy(
        k=5,
        require_smoke=False,
        max_size_ratio=3.0,
        rules=(
            MetricRule(metric="hit@5", lower_bound=0.6),
            MetricRule(
                metric="recall@5",
                slice="*",
                change=ChangeThreshold(direction="higher_is_better", absolute=0.05, relative=0.1),
            ),
            MetricRule(metric="latency_p95_ms", upper_bound=250),
        ),
        max_slice_disparity=(DisparityRule(metric="mrr", max=0.2),),
    )


def test_policy_is_immutable() -> None:
    policy = default_policy()
    with pytest.raises(ValueError, match="frozen"):
        policy.k = 3


def rule(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"metric": "hit@5", **fields}]}


PREFIX = "p.yaml: invalid acceptance policy: "


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"kk": 1},
            (
                "kk: unknown key; expected one of: k, ndcg_k, rules, max_slice_disparity,"
                " max_size_ratio, require_smoke, confidence,"
                    " min_slice_size, catastrophic_drop, catastrophic_min_queries, resamples, seed"
            ),
        ),
        (
            rule(lower_bound=0.5, threshold=1),
            (
                "rules[0].threshold: unknown key; expected one of: metric, slice, lower_bound,"
                " upper_bound, change"
            ),
        ),
        (
            rule(change={"direction": "higher_is_better", "absolute": 0.1, "abs": 1}),
            "rules[0].change.abs: unknown key; expected one of: direction, absolute, relative, slack",
        ),
        (
            {"rules": [{"metric": "hti@5", "lower_bound": 0.5}]},
            (
                "rules[0].metric: unknown metric 'hti@5'; valid metrics: hit@5, recall@5, mrr,"
                " ndcg@10, latency_p50_ms, latency_p95_ms, precision@5, f1@5"
            ),
        ),
        (
            {"k": 3, "rules": [{"metric": "hit@5", "lower_bound": 0.5}]},
            (
                "rules[0].metric: unknown metric 'hit@5'; valid metrics: hit@3, recall@3, mrr,"
                " ndcg@10, latency_p50_ms, latency_p95_ms, precision@3, f1@3"
            ),
        ),
        (
            {"max_slice_disparity": [{"metric": "ndcg@5", "max": 0.1}]},
            (
                "max_slice_disparity[0].metric: unknown metric 'ndcg@5'; valid metrics: hit@5,"
                " recall@5, mrr, ndcg@10, latency_p50_ms, latency_p95_ms, precision@5, f1@5"
            ),
        ),
        (
            rule(lower_bound=-0.1),
            "rules[0].lower_bound: expected greater than or equal to 0, got -0.1",
        ),
        (
            rule(lower_bound=0.9, upper_bound=0.5),
            "rules[0]: lower_bound 0.9 is above upper_bound 0.5",
        ),
        (
            rule(lower_bound=50),
            "rules[0]: 'hit@5' is on a 0–1 scale; thresholds must be ≤ 1",
        ),
        (
            rule(change={"direction": "higher_is_better", "absolute": 2}),
            "rules[0]: 'hit@5' is on a 0–1 scale; thresholds must be ≤ 1",
        ),
        (
            rule(change={"direction": "up", "absolute": 0.02}),
            "rules[0].change.direction: expected 'higher_is_better' or 'lower_is_better', got 'up'",
        ),
        (
            rule(change={"direction": "lower_is_better", "relative": -1}),
            "rules[0].change.relative: expected greater than or equal to 0, got -1",
        ),
        (
            rule(change={"direction": "higher_is_better"}),
            "rules[0].change: set 'absolute', 'relative' or both",
        ),
        (
            rule(),
            "rules[0]: set 'lower_bound', 'upper_bound' or 'change'",
        ),
        (
            {"rules": [{"lower_bound": 0.5}]},
            "rules[0].metric: required key is missing",
        ),
        (
            rule(slice="", lower_bound=0.5),
            "rules[0].slice: expected at least 1 character, got ''",
        ),
        (
            {"max_slice_disparity": [{"metric": "hit@5", "max": -0.1}]},
            "max_slice_disparity[0].max: expected greater than or equal to 0, got -0.1",
        ),
        ({"max_size_ratio": 0}, "max_size_ratio: expected greater than 0, got 0"),
        ({"k": 0}, "k: expected greater than or equal to 1, got 0"),
        (
            {"rules": {"metric": "hit@5"}},
            "rules: expected a list, got {'metric': 'hit@5'}",
        ),
        (
            {"kk": 1, "max_size_ratio": -1},
            (
                "max_size_ratio: expected greater than 0, got -1; kk: unknown key; expected one of:"
                " k, ndcg_k, rules, max_slice_disparity, max_size_ratio, require_smoke, confidence,"
                    " min_slice_size, catastrophic_drop, catastrophic_min_queries, resamples, seed"
            ),
        ),
    ],
)
def test_invalid_policies_say_where_and_what(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(data, source="p.yaml")
    assert str(info.value) == PREFIX + message


def test_non_mapping_policy() -> None:
    with pytest.raises(
        ConfigError, match=r"^p\.yaml: expected a mapping of policy keys, got list$"
    ):
        parse_policy([1], source="p.yaml")


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text('max_size_ratio = "big"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value) == (
        "gate.toml: invalid acceptance policy: max_size_ratio: expected a valid number,"
        " unable to parse string as a number, got 'big'"
    )


def test_unknown_suffix_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path / "gate.json")
    assert str(info.value) == (
        "unsupported policy file 'gate.json'; expected one of: .toml, .yaml, .yml"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read policy file '.*gate\.yaml': No such file"):
        load_policy(tmp_path / "gate.yaml")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "k = \n", "p.toml: invalid TOML (Invalid value (at line 1, column 5))"),
        (
            "p.yml",
            "k: 5\nrules: [\n",
            "p.yml line 3: invalid YAML (expected the node content, but found '<stream end>')",
        ),
    ],
)
def test_syntax_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value) == message
