"""Every transition the rollout's decision function can take, and the rollout policy file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.release import analysis as an
from kbrefresh.release.rollout import decide
from kbrefresh.release.rollout_policy import (
    RolloutPolicy,
    load_rollout_policy,
    parse_rollout_policy,
)
from kbrefresh.release.rollout_state import Rollout, Transition

T0 = datetime(2026, 11, 1, tzinfo=UTC)
POLICY = RolloutPolicy(min_step_seconds=3600, ab_seconds=86400, ab_min_samples=100)
CANARY = Rollout(1, 1, "kb", 3, 2, "canary", (5.0, 50.0, 100.0), 0, T0, T0, "running", POLICY,
                 None, None, None)
AB = replace(CANARY, strategy="ab", steps=(50.0,))


def check(outcome: an.Outcome) -> an.MetricCheck:
    return an.MetricCheck("error_rate", outcome, 0.0, 0.0, 0.02, 10, f"{outcome} detail")


OK = an.StepAnalysis((check("successful"),))
THIN = an.StepAnalysis((check("successful"), check("inconclusive")))
BAD = an.StepAnalysis((check("inconclusive"), check("failed")))
HOUR = timedelta(hours=1, seconds=1)


@pytest.mark.parametrize(("rollout", "step", "after", "action", "detail"), [
    (CANARY, OK, HOUR, "advance", "step 1/3 at 5%: every check passed for 3601 s; next 50%"),
    (replace(CANARY, step_index=1), OK, HOUR, "advance",
     "step 2/3 at 50%: every check passed for 3601 s; next 100%"),
    (replace(CANARY, step_index=2), OK, HOUR, "promote",
     "step 3/3 at 100%: every check passed for 3601 s; promoting"),
    (CANARY, OK, timedelta(minutes=10), "wait",
     "step 1/3 at 5%: checks pass; 600 s of the 3600 s minimum elapsed"),
    (CANARY, THIN, HOUR * 48, "wait",
     "step 1/3 at 5%: inconclusive (error_rate: inconclusive detail)"),
    (CANARY, BAD, timedelta(0), "abort", "error_rate: failed detail"),
    (replace(CANARY, state="paused"), BAD, HOUR, "hold",
     "rollout is paused; nothing moves until it runs"),
    (replace(CANARY, state="awaiting_approval"), OK, HOUR, "hold",
     "rollout is awaiting_approval; nothing moves until it runs"),
    (AB, BAD, HOUR, "abort", "error_rate: failed detail"),
    (AB, THIN, HOUR, "wait", "A/B at 50%: 3601 s of 86400 s elapsed"),
])
def test_decide(rollout: Rollout, step: an.StepAnalysis, after: timedelta, action: str,
                detail: str) -> None:
    decision = decide(rollout, step, None, now=T0 + after, arm_searches=(500, 500))
    assert (decision.action, decision.detail) == (action, detail)


def test_ab_needs_its_samples_then_follows_the_test() -> None:
    later = T0 + timedelta(days=2)
    thin = decide(AB, THIN, None, now=later, arm_searches=(99, 400))
    assert thin.detail == "A/B: 99 candidate and 400 control searches, need 100 per arm"
    won = an.ABResult((), "promote", "better")
    lost = an.ABResult((), "keep_live", "worse")
    assert decide(AB, THIN, won, now=later, arm_searches=(100, 100)).action == "promote"
    assert decide(AB, OK, lost, now=later, arm_searches=(100, 100)).action == "keep_live"


def test_transition_events_and_percent() -> None:
    assert Transition(CANARY, "abort", "x").event == "kbrefresh.rollout.aborted"
    assert Transition(CANARY, "reject", "x").event == "kbrefresh.rollout.aborted"
    assert Transition(CANARY, "promote", "x").event == "kbrefresh.rollout.promoted"
    assert Transition(CANARY, "keep_live", "x").event == "kbrefresh.rollout.kept-live"
    assert Transition(CANARY, "wait", "x").event is None
    assert CANARY.percent == 5.0 and replace(CANARY, state="aborted").percent == 0.0
    assert Transition(CANARY, "abort", "x").payload()["candidate"] == 3


def test_policy_file_with_durations(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text("steps: [10, 50, 100]\nmin_step_seconds: 2d\nab_seconds: 1w\n"
                    "require_approval: true\n", "utf-8")
    policy = load_rollout_policy(path)
    assert policy.steps == (10.0, 50.0, 100.0) and policy.min_step_seconds == 172800.0
    assert policy.ab_seconds == 604800.0 and policy.require_approval


@pytest.mark.parametrize(("data", "message"), [
    ({"steps": [50, 5]}, "steps [50.0, 5.0] must rise strictly, each above 0 and at most 100"),
    ({"steps": [5, 150]}, "steps [5.0, 150.0] must rise strictly"),
    ({"min_step_seconds": "2 days"},
     "min_step_seconds: duration '2 days' is invalid; expected seconds or e.g. '30m', '2d'"),
    ({"stepz": [5]}, "stepz: Extra inputs are not permitted"),
    ({"alpha": 2}, "alpha: Input should be less than 1, got 2"),
])
def test_bad_policies_say_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rollout_policy(data, source="rollout.yaml")
    assert str(err.value).startswith(f"rollout.yaml: invalid rollout policy: {message}")


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^cannot read rollout policy '.*nope.yaml': No such file"):
        load_rollout_policy(tmp_path / "nope.yaml")
