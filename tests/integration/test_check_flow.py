"""The retraining-check flow under the Prefect test harness: events, artifact, scheduled runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import ReceivedEvent
from prefect.exceptions import ObjectNotFound

from flows.retraining_check import CheckParameters, retraining_check
from flows.scheduled_refresh import scheduled_refresh
from kbrefresh.db import connect
from kbrefresh.settings import Settings
from tasks import artifact_key
from tests.integration.test_signals import (
    LESS_SATISFIED,
    SATISFIED,
    build_kb,
    seed_feedback,
    seed_queries,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

REPO = Path(__file__).resolve().parents[2]
REFRESH = "scheduled-refresh/scheduled-refresh"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll the harness API until ``probe`` returns something; events are persisted async."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.25)
    return found


def read_events(name: str, kb: str) -> list[ReceivedEvent] | None:
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(
            event=EventNameFilter(name=[name]),
            resource=EventResourceFilter(id=[f"kbrefresh.kb.{kb}"]),
        ), limit=50)  # the client's default (100) is above the server's maximum
    return page.events or None


def run_check_flow(**params: Any) -> tuple[dict[str, Any], UUID]:
    state = retraining_check(CheckParameters(**params), return_state=True)
    assert state.is_completed(), state.message
    assert state.state_details.flow_run_id is not None
    return state.result(), state.state_details.flow_run_id


def test_critical_feedback_drop_requests_a_retrain_by_event(env: Settings,
                                                            tmp_path: Path) -> None:
    kb = f"check-{uuid.uuid4().hex[:8]}"
    corpus, _ = build_kb(env, tmp_path, kb)
    seed_feedback(env, kb, datetime.now(UTC), baseline=SATISFIED, current=LESS_SATISFIED)

    result, run_id = run_check_flow(kb=kb, source=str(corpus))

    assert (result["action"], result["urgency"], result["driver"]) == (
        "within_24h", "high", "performance")
    assert result["dispatched"]["events"] == [
        "kbrefresh.performance.degraded", "kbrefresh.retrain.requested"]
    [requested] = wait_for("kbrefresh.retrain.requested",
                           lambda: read_events("kbrefresh.retrain.requested", kb))
    assert requested.payload == {
        "kb": kb, "reason": requested.payload["reason"], "urgency": "high",
        "action": "within_24h", "segment": None, "source": str(corpus)}
    assert requested.payload["reason"].startswith("performance: satisfaction dropped 11.6%")
    [degraded] = wait_for("kbrefresh.performance.degraded",
                          lambda: read_events("kbrefresh.performance.degraded", kb))
    assert (degraded.payload["band"], round(degraded.payload["drop_pct"], 1)) == ("critical", 11.6)
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("check", kb)]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert result["artifact"] == artifact_key("check", kb) == f"kbrefresh-check-{kb}"
    assert isinstance(artifact.data, str)
    assert "**Driven by:** performance (alert)" in artifact.data
    assert "satisfaction dropped 11\\.6%" in artifact.data
    with connect(env) as conn:
        row = conn.execute("SELECT * FROM retrain_decisions WHERE id = %s",
                           (result["decision_id"],)).fetchone()
    assert row is not None and row["flow_run_id"] == str(run_id)
    assert (row["action"], row["driver"]) == ("within_24h", "performance")
    assert row["dispatched"]["events"] == result["dispatched"]["events"]


@pytest.fixture
def refresh_deployment(tmp_path: Path) -> Iterator[UUID]:
    """The scheduled-refresh deployment (created here unless another test deployed it)."""
    created = None
    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name(REFRESH).id
        except ObjectNotFound:
            deployment = scheduled_refresh.to_deployment(
                name="scheduled-refresh",
                parameters={"params": {"kb": "helpcenter", "source": "/srv/default"}})
            created = deployment_id = deployment.apply()  # type: ignore[union-attr]
    yield deployment_id
    if created is not None:
        with get_client(sync_client=True) as client:
            client.delete_deployment(created)


def test_moderate_drift_schedules_one_refresh_in_the_future(
    env: Settings, tmp_path: Path, refresh_deployment: UUID
) -> None:
    kb, now = f"drift-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    corpus, _ = build_kb(env, tmp_path, kb)
    seed_queries(env, kb, now, reference=1000, current=500, technical_before=0.2,
                 technical_now=0.4)

    first, _ = run_check_flow(kb=kb, source=str(corpus))
    again, _ = run_check_flow(kb=kb, source=str(corpus))
    nowhere, _ = run_check_flow(kb=kb, refresh_deployment="missing/deployment", dispatch=True)
    quiet, _ = run_check_flow(kb=kb, dispatch=False)

    assert (first["action"], first["driver"]) == ("schedule", "drift")
    assert first["dispatched"]["events"] == ["kbrefresh.retraining.drift.detected"]
    scheduled = first["dispatched"]["schedule"]
    assert scheduled["scheduled"] is True
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(scheduled["flow_run_id"]))
        try:
            assert run.deployment_id == refresh_deployment
            assert run.state is not None and run.state.type is StateType.SCHEDULED
            assert run.expected_start_time is not None
            assert run.expected_start_time > now + timedelta(days=19.9)
            params = run.parameters["params"]
            assert (params["kb"], params["source"]) == (kb, str(corpus))
            assert params["reason"].startswith("drift: ") and " is moderate " in params["reason"]
            assert "technical 0.20 → 0.40" in params["reason"]
        finally:
            client.delete_flow_run(run.id)
    assert again["dispatched"]["schedule"] == {
        "scheduled": False, "deployment": REFRESH, "reason": "already scheduled",
        "flow_run_id": scheduled["flow_run_id"]}
    assert nowhere["dispatched"]["schedule"] == {
        "scheduled": False, "deployment": "missing/deployment",
        "reason": "no deployment to schedule"}
    assert quiet["dispatched"] == {"dispatch": False, "events": ["kbrefresh.retraining.drift.detected"]}
    with connect(env) as conn:
        stored = conn.execute("SELECT dispatched FROM retrain_decisions WHERE id = %s",
                              (nowhere["decision_id"],)).fetchone()
    assert stored is not None and stored["dispatched"]["schedule"]["reason"] == (
        "no deployment to schedule")


def test_retraining_check_is_deployed_daily() -> None:
    from deployments.serve import DAILY_CHECK_CRON, build_deployments

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    [check] = [d for d in spec["deployments"] if d["name"] == "retraining-check"]
    [refresh] = [d for d in spec["deployments"] if d["name"] == "scheduled-refresh"]
    served = {d.name: d for d in build_deployments()}["retraining-check"]

    assert check["entrypoint"] == "flows/retraining_check.py:retraining_check"
    assert check["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
    assert check["parameters"] == refresh["parameters"]
    assert check["work_pool"]["name"] == "kbrefresh-process"
    [schedule] = served.schedules or []
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (DAILY_CHECK_CRON, "UTC")
    assert CheckParameters.model_validate(served.parameters["params"]).kb == "helpcenter"
