"""Post-deploy monitor on real Postgres and the Prefect harness, with a local webhook receiver."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType

from flows.post_deploy_monitor import MonitorParameters, post_deploy_monitor
from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.release.archive import archive_version, restore_version
from kbrefresh.release.policy import ReleasePolicy
from kbrefresh.release.watch import PROVEN, ROLLED_BACK, run_monitor_check
from kbrefresh.serving import routing
from kbrefresh.serving.search import search_version
from kbrefresh.settings import Settings
from tests.support.build import refresh
from tests.support.corpus import write_corpus
from tests.support.webhook_server import webhook_receiver

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
SECONDS = ReleasePolicy(first_day_interval=2, first_day=24, daily_interval=24,
                        validation_period=168, reference_window=60)


def two_versions(settings: Settings, root: Path, kb: str) -> None:
    corpus = root / "corpus"
    write_corpus(corpus, 12)
    refresh(settings, kb, str(corpus), embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)
    (corpus / "general" / "doc-000.md").unlink()
    refresh(settings, kb, str(corpus), embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)


def traffic(settings: Settings, kb: str, start: datetime, *, n: int = 100, failed: int = 0,
            latency_ms: float = 15.0) -> None:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        live = routing.live_version(conn, kb_id)
        conn.cursor().executemany(
            "INSERT INTO query_log (query_id, kb_id, ts, session_hash, query, version, latency_ms,"
            " top_doc_ids, top_similarity, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(uuid.uuid4(), kb_id, start + timedelta(microseconds=10 * i), f"s{i}", f"q{i}", live,
              latency_ms, [] if i < failed else ["technical/doc-001"], None if i < failed else 0.7,
              "QueryCanceled" if i < failed else None) for i in range(n)])
        conn.commit()


def published_at(settings: Settings, kb: str) -> datetime:
    with connect(settings) as conn:
        row = conn.execute("SELECT max(changed_at) AS t FROM kb_routing_history").fetchone()
    assert row is not None
    return row["t"]  # type: ignore[no-any-return]


def test_latency_over_5s_rolls_back_with_a_history_row(settings: Settings, tmp_path: Path) -> None:
    two_versions(settings, tmp_path, "kb")
    t0 = published_at(settings, "kb")
    traffic(settings, "kb", t0, latency_ms=6200.0)
    result = run_monitor_check(settings, "kb", policy=SECONDS, now=t0 + timedelta(seconds=2))
    assert (result.action, result.version, result.live_after) == (ROLLED_BACK, 2, 1)
    with connect(settings) as conn:
        [last] = routing.history(conn, store.get_kb_id(conn, "kb"), limit=1)
        check = conn.execute("SELECT outcome, action FROM monitor_checks").fetchone()
    assert last.reason == "post-deploy monitor: p95_latency: p95 6200 ms, above 5000 ms"
    assert (last.action, last.from_version, last.to_version) == ("rollback", 2, 1)
    assert check == {"outcome": "fail", "action": ROLLED_BACK}


def test_accuracy_below_the_floor_rolls_back(settings: Settings, tmp_path: Path) -> None:
    two_versions(settings, tmp_path, "kb")
    t0 = published_at(settings, "kb")
    traffic(settings, "kb", t0)
    clean = run_monitor_check(settings, "kb", policy=SECONDS, now=t0 + timedelta(seconds=2))
    assert clean.measurements is not None and clean.measurements.golden_accuracy is not None
    floor = min(1.0, clean.measurements.golden_accuracy + 0.01)
    strict = SECONDS.model_copy(update={"accuracy_floor": floor})
    result = run_monitor_check(settings, "kb", policy=strict, now=t0 + timedelta(seconds=4))
    assert result.action == ROLLED_BACK, result.summary()
    assert result.judgement is not None
    assert [c.name for c in result.judgement.failed] == ["golden_hit@5"]


def test_seven_clean_checks_prove_the_version_and_archive_the_replaced_one(
    settings: Settings, tmp_path: Path
) -> None:
    two_versions(settings, tmp_path, "kb")
    t0 = published_at(settings, "kb")
    policy = SECONDS.model_copy(update={"validation_period": timedelta(seconds=14),
                                        "first_day": timedelta(seconds=14)})
    actions = []
    for step in range(1, 8):
        traffic(settings, "kb", t0 + timedelta(seconds=2 * step - 1.9))
        actions.append(run_monitor_check(settings, "kb", policy=policy,
                                         now=t0 + timedelta(seconds=2 * step)).action)
    assert actions == ["none"] * 6 + [PROVEN]
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        statuses = {v.version: v.status for v in store.list_versions(conn, kb_id)}
        baseline = conn.execute("SELECT version, metrics FROM kb_production_baseline").fetchone()
        archived = conn.execute("SELECT version, chunks FROM kb_archives").fetchone()
    assert statuses == {1: "archived", 2: "proven"}
    assert baseline is not None and baseline["version"] == 2
    assert baseline["metrics"]["searches"] == 700.0 and baseline["metrics"]["error_rate"] == 0.0
    assert archived is not None and archived["version"] == 1 and archived["chunks"] > 0


def top_hits(settings: Settings, kb: str, version: int) -> list[tuple[str, int, str, float]]:
    vector = OfflineEmbedder(dims=64).embed(["rotate api key webhook token"])[0]
    with connect(settings) as conn:
        table = store.fingerprint_for_version(conn, store.get_kb_id(conn, kb), version).table
        hits = search_version(conn, table, version, np.asarray(vector, dtype=np.float32), k=8)
    return [(h.doc_id, h.chunk_index, h.content, round(h.similarity, 6)) for h in hits]


@pytest.mark.parametrize("force", [False, True])
def test_archive_then_restore_returns_identical_search_results(
    settings: Settings, tmp_path: Path, force: bool
) -> None:
    two_versions(settings, tmp_path, "kb")
    before = top_hits(settings, "kb", 1)
    record = archive_version(settings, "kb", 1, now=datetime.now(UTC))
    assert record.location.endswith("v1") and record.chunks > 0
    restored = restore_version(settings, "kb", 1, force=force)
    assert (restored.version, restored.live) == (3, True)
    assert top_hits(settings, "kb", 3) == before
    assert top_hits(settings, "kb", 2) != before  # v2 lost a document


def run_flow(**params: Any) -> dict[str, Any]:
    state = post_deploy_monitor(MonitorParameters(**params), return_state=True)
    assert state.is_completed(), state.message
    return state.result()  # type: ignore[no-any-return]


@pytest.mark.usefixtures("prefect_harness")
def test_error_rate_of_8_percent_rolls_back_and_notifies(env: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    kb = f"mon-{uuid.uuid4().hex[:6]}"
    two_versions(env, tmp_path, kb)
    traffic(env, kb, published_at(env, kb), failed=8)
    with webhook_receiver() as hook:
        monkeypatch.setenv("KBREFRESH_NOTIFY_WEBHOOK_URL", hook.url)
        out = run_flow(kb=kb, version=2)
    assert (out["action"], out["outcome"], out["notification_problems"]) == (ROLLED_BACK, "fail", [])
    assert out["event"] == "kbrefresh.version.rolled_back"
    [notice] = hook.received
    assert (notice["kind"], notice["kb"], notice["versions"]) == ("rolled_back", kb,
                                                                  {"from": 2, "to": 1})
    assert notice["reason"] == "error_rate: 8.0% of 100 searches failed, above 5%"
    assert notice["metrics"]["error_rate"] == 0.08
    with connect(env) as conn:
        assert routing.live_version(conn, store.get_kb_id(conn, kb)) == 1
    assert run_flow(kb=kb, version=2)["action"] == "superseded"


@pytest.mark.usefixtures("prefect_harness")
def test_a_webhook_answering_500_does_not_fail_the_flow(env: Settings, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kb = f"mon-{uuid.uuid4().hex[:6]}"
    two_versions(env, tmp_path, kb)
    traffic(env, kb, published_at(env, kb), failed=10)
    with webhook_receiver(status=500) as hook:
        monkeypatch.setenv("KBREFRESH_NOTIFY_WEBHOOK_URL", hook.url)
        out = run_flow(kb=kb)
    assert out["action"] == ROLLED_BACK
    assert out["notification_problems"] == ["webhook at 127.0.0.1 answered 500"]
    assert len(hook.received) == 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_publish_schedules_runs_and_a_later_publish_cancels_them(env: Settings) -> None:
    from tasks.monitor import MONITOR_TAG, kb_tag, schedule_monitoring

    kb = f"sched-{uuid.uuid4().hex[:6]}"
    deployment_id = post_deploy_monitor.to_deployment(name="post-deploy-monitor").apply()  # type: ignore[union-attr]
    try:
        t0 = datetime(2030, 1, 1, tzinfo=UTC)
        first = schedule_monitoring(kb, 2, "swap", published_at=t0)
        second = schedule_monitoring(kb, 3, "swap", published_at=t0 + timedelta(hours=5))
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[MONITOR_TAG, kb_tag(kb)])), limit=100)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
    assert (len(first["scheduled"]), first["cancelled"]) == (18, 0)
    assert (len(second["scheduled"]), second["cancelled"]) == (18, 18)
    by_state = {(r.state_type, r.parameters["params"]["version"]) for r in runs}
    assert by_state == {(StateType.CANCELLED, 2), (StateType.SCHEDULED, 3)}
    starts = sorted(r.expected_start_time for r in runs if r.state_type == StateType.SCHEDULED)
    hours = [(s - (t0 + timedelta(hours=5))).total_seconds() / 3600 for s in starts]
    assert (hours[0], hours[11], hours[12], hours[-1]) == (2, 24, 48, 7 * 24)


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_notification_blocks_by_name_and_a_missing_one_reported() -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from kbrefresh.release.notify import Notice
    from tasks.notify import deliver

    with webhook_receiver() as hook:
        # A Custom Webhook block's url is a plain field: Prefect's own block events carry
        # it, so the block points at a path without the secrets scan's sentinel token.
        url = hook.url.rsplit("/", 1)[0] + "/block"
        CustomWebhookNotificationBlock(name="kbrefresh", url=url, json_data={"text": "{{body}}"},
                                       allow_private_urls=True).save("kbrefresh-oncall",
                                                                     overwrite=True)
        problems = deliver(Settings(notify_blocks="custom-webhook/kbrefresh-oncall,missing/none"),
                           Notice("test", "kb", {}, "kbrefresh notify test"))
    assert hook.received == [{"text": "kbrefresh: 'kb' test notification\n"
                                      "reason: kbrefresh notify test"}]
    assert problems == [("block 'missing/none' failed: ValueError: Unable to find block document "
                        "named none for block type missing")]
