"""Retraining signals and checks on a real embedded PostgreSQL with seeded synthetic traffic."""

from __future__ import annotations

import random
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import ConfigError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.check import CheckOptions, load_check_policy, planned_events, run_check
from kbrefresh.retraining.signals import (
    days_since_last_build,
    golden_accuracy_drop,
    query_drift,
    satisfaction_windows,
)
from kbrefresh.retraining.triggers import Action, TriggerPolicy
from kbrefresh.retraining.volume import source_volume
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
DIMS = 64
CENTRES = np.random.default_rng(42).normal(size=(8, DIMS))
TECHNICAL_CENTRES, GENERAL_CENTRES = (0, 1, 2), (3, 4, 5, 6, 7)
NO_GOLDEN = CheckOptions(golden=False)


def build_kb(settings: Settings, root: Path, kb: str) -> tuple[Path, list[str]]:
    """Build ``kb`` from 12 synthetic docs (general/ and technical/); return source and ids."""
    corpus = root / "corpus"
    ids = write_corpus(corpus, n_docs=12)
    run_refresh(settings, RefreshRequest(kb=kb, source=str(corpus)),
                embedder=OfflineEmbedder(dims=DIMS), policy=SMOKE_ONLY)
    return corpus, ids


def seed_queries(
    settings: Settings, kb: str, now: datetime, *, reference: int, current: int,
    technical_before: float, technical_now: float, seed: int = 0,
) -> None:
    """COPY queries: ``reference`` over days 7..35 before ``now``, ``current`` in the last 7.

    Exactly ``round(n * share)`` queries of each window are technical: their sketch is
    near a technical cluster centre and their top document is a technical one.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[Any, ...]] = []
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        for n, share, (low, high) in ((reference, technical_before, (7, 35)),
                                      (current, technical_now, (0, 7))):
            n_tech = round(n * share)
            for i in range(n):
                technical = i < n_tech
                centre = rng.choice(TECHNICAL_CENTRES if technical else GENERAL_CENTRES)
                sketch = CENTRES[centre] + 0.3 * rng.normal(size=DIMS)
                # write_corpus puts even-numbered docs in general/, odd ones in technical/
                number = int(rng.choice(6)) * 2 + technical
                doc = f"{'technical' if technical else 'general'}/doc-{number:03d}"
                ts = now - timedelta(days=float(rng.uniform(low, high)) + 1e-6)
                rows.append((uuid.uuid4(), kb_id, ts, f"s{i}", f"q{i}", 1, 5.0, [doc],
                             float(rng.uniform(0.2, 0.9)), sketch.astype(np.float32).tolist()))
        with conn.cursor().copy(
            "COPY query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
            " top_doc_ids, top_similarity, query_sketch) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "int4", "timestamptz", "text", "text", "int4", "float4",
                            "text[]", "float4", "float4[]"])
            for row in rows:
                copy.write_row(row)
        conn.commit()


def seed_feedback(
    settings: Settings, kb: str, now: datetime, *, baseline: list[int | bool],
    current: list[int | bool],
) -> None:
    """Insert feedback: ints are ratings, bools thumbs; baseline 8..34 days ago, current 0..6."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        rows = []
        for values, start in ((baseline, 8.0), (current, 0.5)):
            for i, value in enumerate(values):
                rating = None if isinstance(value, bool) else value
                thumbs = value if isinstance(value, bool) else None
                ts = now - timedelta(days=start + (i % 26) * 0.2)
                rows.append((uuid.uuid4(), kb_id, ts, rating, thumbs))
        conn.cursor().executemany(
            "INSERT INTO feedback (query_id, kb_id, ts, rating, thumbs)"
            " VALUES (%s, %s, %s, %s, %s)",
            rows,
        )
        conn.commit()


# Thumbs up counts 5, down 1: (20*5 + 10*5 + 70*4) / 100 = 4.3; (40*4 + 6*3 + 2*5 + 2*1) / 50 = 3.8
SATISFIED: list[int | bool] = [True] * 20 + [5] * 10 + [4] * 70
LESS_SATISFIED: list[int | bool] = [4] * 40 + [3] * 6 + [True] * 2 + [False] * 2


def test_no_drift_means_monitor_and_the_decision_is_stored(settings: Settings,
                                                           tmp_path: Path) -> None:
    kb, now = "steady", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_queries(settings, kb, now, reference=1000, current=400, technical_before=0.3,
                 technical_now=0.3)

    result = run_check(settings, kb, source=None, now=now)

    assert result.decision.action is Action.MONITOR
    assert result.drift.severity == "none" and not result.drift.inconclusive
    assert (result.drift.reference_size, result.drift.current_size) == (1000, 400)
    assert {v.view: v.kl for v in result.drift.views}["categories"] == pytest.approx(0, abs=1e-6)
    assert result.drift.kl is not None and result.drift.kl < 0.05
    assert result.days_since_build is not None and result.days_since_build < 0.1
    assert result.golden is not None and result.golden.current == result.golden.baseline
    assert planned_events(result, None, request_retrain=True) == ()
    with connect(settings) as conn:
        row = conn.execute("SELECT * FROM retrain_decisions WHERE id = %s",
                           (result.decision_id,)).fetchone()
    assert row is not None
    assert (row["action"], row["urgency"], row["driver"]) == ("monitor", "none", "performance")
    assert row["signals"]["drift"]["views"][0]["view"] == "categories"
    assert [s["name"] for s in row["signals"]["signals"]] == [
        "performance", "performance", "drift", "time"]
    assert row["dispatched"] is None


def test_technical_share_20_to_40_percent_is_moderate_drift_naming_the_segment(
    settings: Settings, tmp_path: Path
) -> None:
    kb, now = "drifting", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_queries(settings, kb, now, reference=1000, current=500, technical_before=0.2,
                 technical_now=0.4)

    result = run_check(settings, kb, source=None, now=now, options=NO_GOLDEN)

    drift = result.drift
    assert drift.severity in ("moderate", "severe") and not drift.inconclusive
    categories = {v.view: v for v in drift.views}["categories"]
    assert [str(g) for g in categories.grown] == ["technical 0.20 → 0.40"]
    assert categories.kl == pytest.approx(0.105, abs=0.002)
    assert drift.segment == "technical"
    clusters = {v.view: v for v in drift.views}["clusters"]
    assert clusters.grown and all(g.name.startswith("technical (cluster ") for g in clusters.grown)
    assert result.decision.action is Action.SCHEDULE
    assert result.decision.driver.name == "drift"
    assert "technical 0.20 → 0.40" in result.decision.driver.reason
    [event] = planned_events(result, None, request_retrain=True)
    assert event.event == "kbrefresh.retraining.drift.detected"
    assert event.payload["kb"] == kb and "technical 0.20 → 0.40" in event.payload["segments"]
    markdown = result.to_markdown()
    assert "technical 0\\.20 → 0\\.40" in markdown and "**Driven by:** drift" in markdown


def test_too_few_queries_is_inconclusive_and_never_alarms(settings: Settings,
                                                          tmp_path: Path) -> None:
    kb, now = "quiet", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_queries(settings, kb, now, reference=150, current=60, technical_before=0.1,
                 technical_now=0.9)

    with connect(settings) as conn:
        drift = query_drift(conn, store.get_kb_id(conn, kb), now, min_samples=200)
    result = run_check(settings, kb, source=None, now=now, options=NO_GOLDEN)

    assert drift.inconclusive and drift.severity == "inconclusive" and drift.kl is None
    assert drift.reason == "too few queries: reference 150, current 60, need 200 each"
    assert all(v.inconclusive for v in drift.views)
    signal = next(s for s in result.decision.signals if s.name == "drift")
    assert (signal.severity, signal.action) == ("inconclusive", Action.MONITOR)
    assert result.decision.action is Action.MONITOR
    assert planned_events(result, None, request_retrain=True) == ()


def test_odd_log_rows_are_left_out_of_clusters_but_counted_by_category(
    settings: Settings, tmp_path: Path
) -> None:
    kb, now = "odd-rows", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_queries(settings, kb, now, reference=300, current=300, technical_before=0.5,
                 technical_now=0.5)
    odd: list[list[float] | None] = [None, [0.5] * 32, [float("nan")] * DIMS, [0.0] * DIMS]
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        conn.cursor().executemany(
            "INSERT INTO query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
            " top_doc_ids, top_similarity, query_sketch) VALUES (%s, %s, %s, 's', 'q', 1, 1,"
            " %s, NULL, %s::real[])",
            [(uuid.uuid4(), kb_id, now - timedelta(hours=1), [] if i == 0 else ["gone"], sketch)
             for i, sketch in enumerate(odd)],
        )
        conn.commit()
        drift = query_drift(conn, kb_id, now, coverage_cutoff=0.1)

    assert (drift.reference_size, drift.current_size, drift.skipped_sketches) == (300, 304, 4)
    assert drift.severity == "none"
    # The four odd queries have no similarity: they count as not covered.
    assert drift.coverage.current_share_below == pytest.approx(4 / 304)
    assert drift.coverage.reference_share_below == 0


def test_satisfaction_43_to_38_is_critical_within_24h_driven_by_performance(
    settings: Settings, tmp_path: Path
) -> None:
    kb, now = "rebrand", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_feedback(settings, kb, now, baseline=SATISFIED, current=LESS_SATISFIED)

    with connect(settings) as conn:
        sat = satisfaction_windows(conn, store.get_kb_id(conn, kb), now)
    result = run_check(settings, kb, source=None, now=now, options=NO_GOLDEN)

    assert (sat.baseline, sat.current) == (pytest.approx(4.3), pytest.approx(3.8))
    assert (sat.n_baseline, sat.n_current) == (100, 50)
    assert result.decision.action is Action.WITHIN_24H
    assert (result.decision.urgency, result.decision.driver.name) == ("high", "performance")
    assert result.decision.alert
    assert result.decision.driver.reason.startswith("satisfaction dropped 11.6% (4.3 → 3.8)")
    events = planned_events(result, "/srv/docs", request_retrain=True)
    assert [e.event for e in events] == [
        "kbrefresh.performance.degraded", "kbrefresh.retrain.requested"]
    assert events[0].payload == {"kb": kb, "drop_pct": pytest.approx(11.627906977),
                                 "band": "critical", "reason": result.decision.driver.reason}
    assert events[1].resource["prefect.resource.id"] == f"kbrefresh.kb.{kb}"
    assert events[1].payload == {
        "kb": kb, "reason": f"performance: {result.decision.driver.reason}", "urgency": "high",
        "action": "within_24h", "segment": None, "source": "/srv/docs"}
    no_source = planned_events(result, None, request_retrain=True)[1]
    assert "source" not in no_source.payload


def test_a_slow_decline_is_caught_against_the_proven_baseline(settings: Settings,
                                                             tmp_path: Path) -> None:
    """Both trailing windows sit at 3.8, so they show no drop; the proven week was 4.3."""
    kb, now = "slow", datetime.now(UTC)
    build_kb(settings, tmp_path, kb)
    seed_feedback(settings, kb, now, baseline=LESS_SATISFIED * 2, current=LESS_SATISFIED)
    before = run_check(settings, kb, source=None, now=now, options=NO_GOLDEN, record=False)
    assert before.proven is None
    assert before.decision.action is not Action.WITHIN_24H
    with connect(settings) as conn:
        conn.execute("INSERT INTO kb_production_baseline (kb_id, version, metrics, set_at) "
                     "VALUES (%s, 1, %s, %s)",
                     (store.get_kb_id(conn, kb), '{"satisfaction": 4.3, "feedback": 100}',
                      now - timedelta(days=40)))
        conn.commit()

    result = run_check(settings, kb, source=None, now=now, options=NO_GOLDEN, record=False)

    assert result.proven is not None and result.proven.n_feedback == 100
    assert result.decision.action is Action.WITHIN_24H
    assert result.decision.driver.reason.startswith(
        "satisfaction against proven v1 dropped 11.6% (4.3 → 3.8)")
    assert "- Proven baseline: v1 satisfaction 4.3 (n=100, set " in result.to_markdown()
    assert result.as_dict()["proven"]["satisfaction"] == 4.3


def test_volume_counts_new_and_changed_documents_against_the_live_manifest(
    settings: Settings, tmp_path: Path
) -> None:
    kb, now = "growing", datetime.now(UTC)
    corpus, ids = build_kb(settings, tmp_path, kb)
    source = tmp_path / "next"
    shutil.copytree(corpus, source)
    rng = random.Random(3)
    for doc_id in ids[:2]:
        (source / f"{doc_id}.md").write_text(markdown_doc(f"Changed {doc_id}", doc_id.split("/")[0],
                                                          rng), "utf-8")
    for i in range(3):
        (source / "technical" / f"new-{i}.md").write_text(
            markdown_doc(f"New {i}", "technical", rng), "utf-8")
    (source / f"{ids[-1]}.md").unlink()

    volume = source_volume(settings, kb, str(source), now=now)
    default = run_check(settings, kb, source=str(source), now=now, options=NO_GOLDEN)
    policy_file = tmp_path / "helpcenter.yaml"
    policy_file.write_text("volume_schedule: 2\nvolume_now: 4\ncoverage_cutoff: 0.25\n", "utf-8")
    policy, options = load_check_policy(policy_file)
    eager = run_check(settings, kb, source=str(source), now=now, policy=policy,
                      options=options.model_copy(update={"golden": False}))

    assert (volume.new, volume.changed, volume.deleted, volume.unchanged) == (3, 2, 1, 9)
    assert (volume.documents, volume.new_samples, volume.live_version) == (14, 5, 1)
    assert volume.quality.passed
    assert default.decision.action is Action.MONITOR
    assert [(s.name, s.action) for s in default.decision.signals if s.name in
            ("quality", "volume")] == [("volume", Action.WAIT), ("quality", Action.MONITOR)]
    assert (eager.decision.action, eager.decision.driver.name) == (Action.RUN_NOW, "volume")
    assert eager.drift.coverage.cutoff == 0.25


def test_bad_source_data_blocks_the_retrain_with_an_alert(settings: Settings,
                                                          tmp_path: Path) -> None:
    kb, now = "shrinking", datetime.now(UTC)
    corpus, ids = build_kb(settings, tmp_path, kb)
    for doc_id in ids[:8]:
        (corpus / f"{doc_id}.md").unlink()

    result = run_check(settings, kb, source=str(corpus), now=now + timedelta(days=40),
                       options=NO_GOLDEN)

    assert result.decision.action is Action.SKIP_BAD_DATA and result.decision.alert
    assert result.decision.driver.name == "quality"
    assert result.decision.driver.reason.startswith(
        "1 quality error: source shrank from 12 to 4 documents (-66.7%)")
    time = next(s for s in result.decision.signals if s.name == "time")
    assert time.action is Action.RUN_NOW  # due, but bad data wins
    assert planned_events(result, str(corpus), request_retrain=True) == ()


def test_time_and_golden_are_measured_from_the_live_version(settings: Settings,
                                                            tmp_path: Path) -> None:
    kb, now = "aging", datetime.now(UTC)
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, kb)
        conn.commit()
        assert days_since_last_build(conn, kb_id, now) is None
    assert golden_accuracy_drop(settings, kb) is None
    build_kb(settings, tmp_path, kb)

    with connect(settings) as conn:
        days = days_since_last_build(conn, kb_id, now + timedelta(days=31))
    golden = golden_accuracy_drop(settings, kb)
    result = run_check(settings, kb, source=None, now=now + timedelta(days=31))

    assert days == pytest.approx(31, abs=0.01)
    assert golden is not None and golden.version == 1 and golden.metric == "hit@5"
    assert golden.n_queries == 12 and golden.current == golden.baseline
    assert (result.decision.action, result.decision.driver.name) == (Action.RUN_NOW, "time")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every_days: 14\nevery_dayz: 3\n", "policy.yaml: unknown key 'every_dayz'; valid keys: "),
        ("drift_moderate_kl: 0.6\n",
         ("policy.yaml: invalid trigger policy: drift_moderate_kl (0.6) must be below "
          "drift_severe_kl (0.5)")),
        ("coverage_cutoff: 2\n",
         ("policy.yaml: check option coverage_cutoff=2 is invalid: input should be less than or "
          "equal to 1")),
        ("every_days: -1\n",
         "policy.yaml: trigger policy every_days=-1 is invalid: input should be greater than 0"),
        ("a: [\n",
         "policy.yaml line 2: invalid YAML (expected the node content, but found '<stream end>')"),
        ("- 1\n", "policy.yaml: expected a mapping of keys, got list"),
    ],
)
def test_policy_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_check_policy(path)
    assert str(info.value).startswith(message)
    assert message.endswith(": ") or str(info.value) == message


def test_policy_file_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "kb.toml"
    path.write_text("every_days = 7\ndrift_min_samples = 50\nn_clusters = 4\n", "utf-8")
    policy, options = load_check_policy(path)
    assert policy == TriggerPolicy(every_days=7, drift_min_samples=50)
    assert options == CheckOptions(n_clusters=4)


def test_check_command_prints_signals_and_refreshes_with_run(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kbrefresh.cli import app

    kb, now = "cli-check", datetime.now(UTC)
    corpus, _ = build_kb(settings, tmp_path, kb)
    seed_feedback(settings, kb, now, baseline=SATISFIED, current=LESS_SATISFIED)
    assert settings.database_url is not None
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("KBREFRESH_EMBEDDING_DIMS", "64")
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    shown = runner.invoke(app, ["check", "--kb", kb])
    refused = runner.invoke(app, ["check", "--kb", kb, "--run"])
    ran = runner.invoke(app, ["check", "--kb", kb, "--run", "--source", str(corpus)])

    assert shown.exit_code == 0, shown.output
    assert "performance ←" in shown.output
    assert "decision: within_24h (high): performance: satisfaction dropped 11.6%" in shown.output
    assert "a refresh is due now: rerun with --run --source PATH_OR_URL" in shown.output
    assert refused.exit_code == 1
    assert f"error: the decision is 'within_24h': pass --source to refresh {kb!r}" in refused.output
    assert ran.exit_code == 0, ran.output
    assert f"live version of {kb!r}: v2 (was v1)" in ran.output
    with connect(settings) as conn:
        rows = conn.execute("SELECT dispatched FROM retrain_decisions ORDER BY id").fetchall()
    assert [r["dispatched"] for r in rows] == [
        {"mode": "cli", "run": False, "refresh": None},
        {"mode": "cli", "run": True, "refresh": "in-process"},
    ]
