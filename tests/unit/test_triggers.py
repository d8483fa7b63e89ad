from __future__ import annotations

import json
import math

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.retraining.triggers import (
    Action,
    Signal,
    TriggerPolicy,
    decide,
    drift_signal,
    performance_signal,
    quality_signal,
    time_signal,
    volume_signal,
)

ENOUGH = {"n_baseline": 500, "n_current": 400}

# ---- each row of the decision tree, both sides of each edge -----------------------------


@pytest.mark.parametrize(
    ("days", "severity", "action"),
    [
        (None, "never_built", Action.RUN_NOW),
        (0.0, "ok", Action.MONITOR),
        (29.99, "ok", Action.MONITOR),
        (30.0, "due", Action.RUN_NOW),
        (45.0, "due", Action.RUN_NOW),
    ],
)
def test_time_signal(days: float | None, severity: str, action: Action) -> None:
    signal = time_signal(days)
    assert (signal.name, signal.severity, signal.action) == ("time", severity, action)
    assert signal.value == days


@pytest.mark.parametrize(
    ("baseline", "current", "severity", "action"),
    [
        (100.0, 110.0, "ok", Action.MONITOR),  # improved
        (100.0, 100.0, "ok", Action.MONITOR),
        (100.0, 95.01, "ok", Action.MONITOR),  # 4.99 %
        (100.0, 95.0, "warning", Action.INVESTIGATE),  # 5 % exactly: warning band starts
        (100.0, 90.0, "warning", Action.INVESTIGATE),  # 10 % exactly: critical is > 10 %
        (1.0, 0.9, "warning", Action.INVESTIGATE),  # 10 % despite float error
        (100.0, 89.99, "critical", Action.WITHIN_24H),  # 10.01 %
        (4.3, 3.8, "critical", Action.WITHIN_24H),  # playbook rebrand: 11.6 %
        (100.0, 80.0, "critical", Action.WITHIN_24H),  # 20 % exactly: urgent is > 20 %
        (0.8, 0.64, "critical", Action.WITHIN_24H),  # 20 % despite float error
        (100.0, 79.99, "critical", Action.RUN_NOW),  # 20.01 %
        (4.3, 0.0, "critical", Action.RUN_NOW),
    ],
)
def test_performance_signal_bands(
    baseline: float, current: float, severity: str, action: Action
) -> None:
    signal = performance_signal(baseline, current, **ENOUGH)
    assert (signal.severity, signal.action) == (severity, action)
    assert signal.value == pytest.approx((baseline - current) / baseline * 100)


def test_rebrand_example_drop_is_pinned() -> None:
    signal = performance_signal(4.3, 3.8, **ENOUGH)
    assert signal.value == pytest.approx(11.627907, abs=1e-6)
    assert signal.reason == "dropped 11.6% (4.3 → 3.8) > 10%"


@pytest.mark.parametrize(
    ("baseline", "current", "n_baseline", "n_current", "reason"),
    [
        (None, 3.0, 500, 400, "no baseline yet"),
        (4.3, None, 500, 400, "no current value yet"),
        (0.0, 3.0, 500, 400, "baseline 0.0 is not positive; a drop % is undefined"),
        (4.3, 1.0, 29, 400, "too few samples: baseline 29, current 400, need 30 each"),
        (4.3, 1.0, 500, 29, "too few samples: baseline 500, current 29, need 30 each"),
    ],
)
def test_performance_without_enough_data_is_inconclusive_never_an_alarm(
    baseline: float | None, current: float | None, n_baseline: int, n_current: int, reason: str
) -> None:
    signal = performance_signal(baseline, current, n_baseline=n_baseline, n_current=n_current)
    assert (signal.severity, signal.action, signal.value) == ("inconclusive", Action.MONITOR, None)
    assert signal.reason == reason


def test_performance_at_exactly_min_samples_is_conclusive() -> None:
    signal = performance_signal(4.3, 1.0, n_baseline=30, n_current=30)
    assert signal.action is Action.RUN_NOW


@pytest.mark.parametrize(
    ("kl", "inconclusive", "severity", "action"),
    [
        (0.0, False, "none", Action.MONITOR),
        (0.0999, False, "none", Action.MONITOR),
        (0.1, False, "moderate", Action.SCHEDULE),
        (0.5, False, "moderate", Action.SCHEDULE),
        (0.5001, False, "severe", Action.WITHIN_WEEK),
        (math.inf, False, "severe", Action.WITHIN_WEEK),
        (0.9, True, "inconclusive", Action.MONITOR),
        (None, False, "inconclusive", Action.MONITOR),
    ],
)
def test_drift_signal(kl: float | None, inconclusive: bool, severity: str, action: Action) -> None:
    signal = drift_signal(kl, inconclusive=inconclusive)
    assert (signal.name, signal.severity, signal.action) == ("drift", severity, action)


@pytest.mark.parametrize(
    ("samples", "severity", "action"),
    [
        (0, "low", Action.WAIT),
        (4_999, "low", Action.WAIT),
        (5_000, "medium", Action.SCHEDULE),
        (10_000, "medium", Action.SCHEDULE),
        (10_001, "high", Action.RUN_NOW),
    ],
)
def test_volume_signal(samples: int, severity: str, action: Action) -> None:
    signal = volume_signal(samples)
    assert (signal.severity, signal.action, signal.value) == (severity, action, float(samples))


@pytest.mark.parametrize(
    ("passed", "reason", "severity", "action", "expected_reason"),
    [
        (True, "", "ok", Action.MONITOR, "data quality checks passed"),
        (False, "12% empty chunks", "bad_data", Action.SKIP_BAD_DATA, "12% empty chunks"),
    ],
)
def test_quality_signal(
    passed: bool, reason: str, severity: str, action: Action, expected_reason: str
) -> None:
    signal = quality_signal(passed, reason)
    assert (signal.severity, signal.action, signal.reason) == (severity, action, expected_reason)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: time_signal(-1.0), "expected days_since_last_build >= 0 or None, got -1.0"),
        (lambda: time_signal(3.0, every_days=0), "expected every_days > 0, got 0"),
        (lambda: volume_signal(-5), "expected new_samples >= 0, got -5"),
        (lambda: drift_signal(-0.2, inconclusive=False), "expected a KL divergence >= 0, got -0.2"),
        (
            lambda: performance_signal(math.nan, 3.0, **ENOUGH),
            "expected a finite baseline or None, got nan",
        ),
        (
            lambda: performance_signal(4.0, 3.0, **ENOUGH, warning_pct=10.0, critical_pct=10.0),
            "warning_pct (10.0) must be below critical_pct (10.0)",
        ),
        (
            lambda: volume_signal(1, schedule_at=10, now_above=5),
            "schedule_at (10) must be below now_above (5)",
        ),
    ],
)
def test_bad_signal_inputs_are_config_errors(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


# ---- the decision ---------------------------------------------------------------------


def test_urgency_order_is_documented_order() -> None:
    assert [a.urgency_rank for a in Action] == list(range(8))
    assert [a.value for a in Action] == [
        "skip_bad_data",
        "run_now",
        "within_24h",
        "within_week",
        "schedule",
        "investigate",
        "monitor",
        "wait",
    ]
    assert [a for a in Action if a.retrains] == [
        Action.RUN_NOW,
        Action.WITHIN_24H,
        Action.WITHIN_WEEK,
        Action.SCHEDULE,
    ]


def test_rebrand_drop_drives_a_high_urgency_retrain() -> None:
    signals = [
        time_signal(12.0),
        performance_signal(4.3, 3.8, **ENOUGH),
        drift_signal(0.2, inconclusive=False),
        volume_signal(300),
        quality_signal(True),
    ]
    decision = decide(signals)
    assert decision.action is Action.WITHIN_24H
    assert decision.urgency == "high"
    assert decision.driver is signals[1]
    assert decision.alert is True
    assert decision.signals == tuple(signals)
    assert decision.summary == "within_24h (high): performance: dropped 11.6% (4.3 → 3.8) > 10%"


@pytest.mark.parametrize(
    ("signals", "action", "driver"),
    [
        (
            [performance_signal(100, 93, **ENOUGH), drift_signal(0.7, inconclusive=False)],
            Action.WITHIN_WEEK,
            "drift",
        ),
        (
            [drift_signal(0.7, inconclusive=False), volume_signal(20_000)],
            Action.RUN_NOW,
            "volume",
        ),
        (
            [volume_signal(6_000), performance_signal(100, 93, **ENOUGH)],
            Action.SCHEDULE,
            "volume",
        ),
        (
            [volume_signal(100), performance_signal(100, 93, **ENOUGH)],
            Action.INVESTIGATE,
            "performance",
        ),
        ([time_signal(None), drift_signal(0.7, inconclusive=False)], Action.RUN_NOW, "time"),
        ([volume_signal(100)], Action.WAIT, "volume"),
    ],
)
def test_most_urgent_signal_wins_and_is_named(
    signals: list[Signal], action: Action, driver: str
) -> None:
    decision = decide(signals)
    assert (decision.action, decision.driver.name) == (action, driver)


def test_ties_go_to_the_first_signal_given() -> None:
    first, second = volume_signal(20_000), time_signal(None)
    assert decide([first, second]).driver is first
    assert decide([second, first]).driver is second


def test_bad_data_overrides_everything_and_alerts() -> None:
    signals = [
        performance_signal(4.3, 2.0, **ENOUGH),
        volume_signal(50_000),
        time_signal(None),
        quality_signal(False, "embeddings contain NaN"),
    ]
    decision = decide(signals)
    assert decision.action is Action.SKIP_BAD_DATA
    assert decision.driver.name == "quality"
    assert decision.alert is True
    assert decision.action.retrains is False
    assert decision.summary == "skip_bad_data (blocked): quality: embeddings contain NaN"


def test_inconclusive_signals_never_alarm() -> None:
    signals = [
        performance_signal(4.3, 0.5, n_baseline=5, n_current=5),  # 88% drop, 5 ratings
        drift_signal(3.0, inconclusive=True),
        quality_signal(True),
    ]
    decision = decide(signals)
    assert decision.action is Action.MONITOR
    assert decision.alert is False
    assert decision.action.retrains is False


def test_all_quiet_is_monitor_even_with_little_new_data() -> None:
    signals = [
        time_signal(3.0),
        performance_signal(4.3, 4.29, **ENOUGH),
        drift_signal(0.01, inconclusive=False),
        volume_signal(10),
        quality_signal(True),
    ]
    decision = decide(signals)
    assert (decision.action, decision.urgency, decision.alert) == (Action.MONITOR, "none", False)
    assert decision.driver.name == "time"


def test_a_warning_does_not_alert() -> None:
    assert decide([performance_signal(100, 93, **ENOUGH)]).alert is False


def test_decide_needs_signals() -> None:
    with pytest.raises(ConfigError, match=r"^expected at least one signal to decide on$"):
        decide([])


def test_decision_serialises_to_json() -> None:
    decision = decide([drift_signal(0.7, inconclusive=False), volume_signal(100)])
    record = json.loads(json.dumps(decision.as_dict()))
    assert record["action"] == "within_week"
    assert record["driver"] == "drift"
    assert [s["action"] for s in record["signals"]] == ["within_week", "wait"]


# ---- the policy ----------------------------------------------------------------------


def test_policy_defaults_are_the_playbook() -> None:
    policy = TriggerPolicy()
    assert policy.model_dump() == {
        "every_days": 30.0,
        "perf_warning_pct": 5.0,
        "perf_critical_pct": 10.0,
        "perf_urgent_pct": 20.0,
        "perf_min_samples": 30,
        "drift_moderate_kl": 0.1,
        "drift_severe_kl": 0.5,
        "drift_min_samples": 200,
        "volume_schedule": 5000,
        "volume_now": 10000,
    }


def test_policy_thresholds_drive_the_signals() -> None:
    policy = TriggerPolicy(
        every_days=7,
        perf_warning_pct=2,
        perf_critical_pct=4,
        perf_urgent_pct=8,
        perf_min_samples=10,
        drift_moderate_kl=0.05,
        drift_severe_kl=0.2,
        volume_schedule=100,
        volume_now=1000,
    )
    assert policy.time(7.0).action is Action.RUN_NOW
    assert policy.performance(100, 97, n_baseline=10, n_current=10).action is Action.INVESTIGATE
    assert policy.performance(100, 95, n_baseline=10, n_current=10).action is Action.WITHIN_24H
    assert policy.performance(100, 91, n_baseline=10, n_current=10).action is Action.RUN_NOW
    assert policy.drift(0.3, inconclusive=False).action is Action.WITHIN_WEEK
    assert policy.volume(100).action is Action.SCHEDULE
    assert policy.volume(1001).action is Action.RUN_NOW


VALID_KEYS = (
    "every_days, perf_warning_pct, perf_critical_pct, perf_urgent_pct, perf_min_samples, "
    "drift_moderate_kl, drift_severe_kl, drift_min_samples, volume_schedule, volume_now"
)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"perf_warn_pct": 3},
            f"unknown trigger policy key 'perf_warn_pct'; valid keys: {VALID_KEYS}",
        ),
        (
            {"perf_warning_pct": -1},
            (
                "trigger policy perf_warning_pct=-1 is invalid: "
                "input should be greater than or equal to 0"
            ),
        ),
        (
            {"every_days": 0},
            "trigger policy every_days=0 is invalid: input should be greater than 0",
        ),
        (
            {"perf_warning_pct": 10},
            (
                "invalid trigger policy: "
                "perf_warning_pct (10.0) must be below perf_critical_pct (10.0)"
            ),
        ),
        (
            {"perf_urgent_pct": 8},
            "invalid trigger policy: perf_critical_pct (10.0) must be below perf_urgent_pct (8.0)",
        ),
        (
            {"drift_moderate_kl": 0.6},
            "invalid trigger policy: drift_moderate_kl (0.6) must be below drift_severe_kl (0.5)",
        ),
        (
            {"volume_schedule": 10_000},
            "invalid trigger policy: volume_schedule (10000) must be below volume_now (10000)",
        ),
    ],
)
def test_bad_policy_is_a_clear_config_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TriggerPolicy(**values)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert info.value.__cause__ is not None


def test_policy_is_frozen() -> None:
    policy = TriggerPolicy()
    with pytest.raises(Exception, match="frozen"):
        policy.every_days = 1
