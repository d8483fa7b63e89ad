"""Post-deploy monitor: schedule, criteria, anomalies, notices (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kbrefresh.errors import ConfigError
from kbrefresh.release.monitor import (
    FAIL,
    NO_DATA,
    PASS,
    WARN,
    Measurements,
    anomalous_buckets,
    judge,
)
from kbrefresh.release.notify import Notice
from kbrefresh.release.policy import ReleasePolicy, check_times, load_release_policy

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def m(**kw: object) -> Measurements:
    base: dict[str, object] = {"version": 2, "searches": 100, "error_rate": 0.01, "p95_latency_ms": 40.0,
                                   "empty_rate": 0.0, "low_similarity_rate": 0.1, "satisfaction": 4.3,
                                   "feedback": 50, "baseline_satisfaction": 4.3, "golden_accuracy": 0.9,
                                   "validated_accuracy": 0.9}
    return Measurements(**(base | kw))  # type: ignore[arg-type]


def test_default_schedule_is_every_2h_for_a_day_then_daily_for_a_week() -> None:
    hours = [(t - T0) / timedelta(hours=1) for t in check_times(T0, ReleasePolicy())]
    assert hours == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 48, 72, 96, 120, 144, 168]


def test_schedule_scales_to_seconds() -> None:
    policy = ReleasePolicy(first_day_interval=2, first_day=6, daily_interval=5, validation_period=20)
    assert [(t - T0).total_seconds() for t in check_times(T0, policy)] == [2, 4, 6, 11, 16, 20]


@pytest.mark.parametrize(("kw", "name", "outcome"), [
    ({"error_rate": 0.08}, "error_rate", FAIL),
    ({"error_rate": 0.05}, "error_rate", PASS),
    ({"searches": 5}, "error_rate", NO_DATA),
    ({"p95_latency_ms": 5200.0}, "p95_latency", FAIL),
    ({"golden_accuracy": 0.79}, "golden_hit@5", FAIL),
    ({"golden_accuracy": 0.80}, "golden_hit@5", PASS),
    ({"satisfaction": 3.8}, "satisfaction", FAIL),
    ({"satisfaction": 4.0}, "satisfaction", WARN),
    ({"feedback": 3}, "satisfaction", NO_DATA),
])
def test_criteria(kw: dict[str, object], name: str, outcome: str) -> None:
    [criterion] = [c for c in judge(m(**kw), ReleasePolicy()).criteria if c.name == name]
    assert criterion.outcome == outcome


def test_floor_applies_over_margin_and_reason_names_values() -> None:
    j = judge(m(golden_accuracy=0.74, validated_accuracy=0.8), ReleasePolicy(accuracy_floor=0.75))
    assert j.rollback
    assert j.reason() == "golden_hit@5: 0.740 below 0.750 (floor 0.750)"
    j = judge(m(error_rate=0.08), ReleasePolicy())
    assert j.reason() == "error_rate: 8.0% of 100 searches failed, above 5%"
    assert judge(m(), ReleasePolicy()).outcome == PASS


def test_drift_and_anomalies_warn_but_never_roll_back() -> None:
    j = judge(m(drift_kl=0.7, drift_severity="severe", anomalies=("hourly searches 90",)),
              ReleasePolicy())
    assert (j.outcome, j.rollback) == (WARN, False)


def test_anomalous_buckets_use_a_robust_z() -> None:
    reference = [10, 12, 11, 9, 10, 50, 11]  # one outlier barely moves the median/MAD
    # median 11, scaled MAD 1.48: 40 is +19.6 z, 2 is -6.1 z (a drop is an anomaly too)
    assert anomalous_buckets(reference, [10, 11, 40, 2, 15], 3.5) == [2, 3]
    assert anomalous_buckets([5, 5, 5], [6, 20], 3.5) == [1]
    assert anomalous_buckets([1, 2], [100], 3.5) == []


def test_policy_file_errors_are_one_line(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text("release:\n  max_error_rate: 0.02\n  first_day_interval: PT1H\n")
    policy = load_release_policy(good)
    assert (policy.max_error_rate, policy.first_day_interval) == (0.02, timedelta(hours=1))
    bad = tmp_path / "bad.toml"
    bad.write_text("max_error_rate = 2\nretention = 1\n")
    with pytest.raises(ConfigError, match=r"release policy .* is invalid: max_error_rate: .*"
                                          r"retention: Extra inputs are not permitted"):
        load_release_policy(bad)
    with pytest.raises(ValueError, match="must be below satisfaction_critical_drop"):
        ReleasePolicy(satisfaction_warning_drop=0.2)


def test_notice_text_names_kb_versions_reason_metrics_links() -> None:
    n = Notice("rolled_back", "help", {"from": 3, "to": 2}, "error_rate: 8.0%",
               {"error_rate": 0.08, "p95_latency_ms": None}, {"mlflow_run": "http://x/r/1"})
    assert n.text() == ("kbrefresh: 'help' rolled back automatically\nversions: from v3, to v2\n"
                        "reason: error_rate: 8.0%\nmetrics: error_rate 0.08, p95_latency_ms n/a\n"
                        "mlflow_run: http://x/r/1")
    with pytest.raises(ValueError, match="unknown notice kind 'oops'"):
        Notice("oops", "help", {}, "x")
