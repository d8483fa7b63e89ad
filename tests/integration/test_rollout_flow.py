"""The rollout-step flow under the Prefect test harness: analysis, manual moves, approval."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.states import State

from flows import RolloutStepParameters, rollout_step
from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.settings import Settings
from kbrefresh.tracking.registry import registry_state
from tasks.rollout import resume_approval
from tests.support.rollout import FAST, inject, live_and_candidate

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def start(settings: Settings, policy: RolloutPolicy = FAST) -> None:
    from datetime import UTC, datetime

    with connect(settings, autocommit=True) as conn:
        rollout.start(conn, "kb", strategy="canary", policy=policy, now=datetime.now(UTC))


def run(**kw: Any) -> dict[str, Any]:
    state = rollout_step(RolloutStepParameters(kb="kb", **kw), return_state=True)
    assert state.is_completed(), state.message
    result: dict[str, Any] = state.result()
    return result


def test_the_flow_advances_aborts_and_reports(env: Settings, tmp_path: Path) -> None:
    staged = live_and_candidate(env, tmp_path)
    assert run()["detail"] == "no active rollout"
    start(env)
    inject(env, staged.kb_id, 2, 30)
    assert run() | {"detail": ""} == {"kb": "kb", "rollout_id": 1, "action": "advance",
                                     "state": "running", "percent": 50.0, "detail": ""}
    assert registry_state(env, "kb") == {"champion": 1, "challenger": 2}
    assert run(action="pause", reason="holiday")["state"] == "paused"
    done = run(action="abort", reason="not now")
    assert (done["action"], done["state"], done["detail"]) == ("abort", "aborted", "manual: not now")
    assert registry_state(env, "kb") == {"champion": 1, "challenger": None}
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    assert any(a.key == "kbrefresh-rollout-kb" for a in artifact)


def _wait_for_pause(settings: Settings, deadline: float = 90.0) -> str:
    """Return the id of the flow run paused for approval once the API shows it paused."""
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        with connect(settings) as conn:
            r = rollout.active_rollout(conn, "kb")
        run_id = (r.approval or {}).get("flow_run_id") if r else None
        if run_id:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(UUID(run_id)).state
            if state is not None and state.is_paused():
                return str(run_id)
        time.sleep(0.2)
    raise AssertionError("the rollout-step run never paused for approval")


def _in_thread(out: list[State[Any]]) -> threading.Thread:
    def target() -> None:
        out.append(rollout_step(RolloutStepParameters(kb="kb", poll_seconds=1,
                                                      approval_timeout_seconds=120),
                                return_state=True))
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_approval_pauses_the_flow_and_the_input_resumes_it(env: Settings, tmp_path: Path) -> None:
    live_and_candidate(env, tmp_path)
    start(env, FAST.model_copy(update={"require_approval": True}))
    states: list[State[Any]] = []
    thread = _in_thread(states)
    run_id = _wait_for_pause(env)
    with connect(env) as conn:
        waiting = rollout.active_rollout(conn, "kb")
    assert waiting is not None and waiting.state == "awaiting_approval" and waiting.percent == 0
    resume_approval(run_id, True, "reviewed the gate report", "alice")  # what the UI form sends
    thread.join(120)
    assert states and states[0].is_completed(), states
    result = states[0].result()
    assert (result["action"], result["state"], result["percent"]) == ("approve", "running", 5.0)
    assert result["detail"] == "approved by alice: reviewed the gate report"
    with connect(env) as conn:
        logged = [(e["action"], e["actor"]) for e in rollout.events(conn, result["rollout_id"])]
    assert logged[1:] == [("approval-requested", logged[1][1]), ("approve", "alice")]


def test_a_cli_rejection_is_recorded_then_the_paused_run_resumes(
    env: Settings, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    staged = live_and_candidate(env, tmp_path)
    start(env, FAST.model_copy(update={"require_approval": True}))
    states: list[State[Any]] = []
    thread = _in_thread(states)
    run_id = _wait_for_pause(env)
    with connect(env, autocommit=True) as conn:  # what `kbrefresh rollout approve --reject` does
        t = rollout.approve(conn, "kb", approved=False, comment="wrong week", by="bob",
                            now=datetime.now(UTC))
    assert t.event == "kbrefresh.rollout.aborted"
    resume_approval(run_id, False, "wrong week", "bob")
    thread.join(120)
    result = states[0].result()
    assert (result["action"], result["state"]) == ("hold", "aborted")
    assert result["detail"] == "already decided: rollout is aborted"
    with connect(env) as conn:
        assert conn.execute("SELECT status FROM kb_versions WHERE kb_id = %s AND version = 2",
                            (staged.kb_id,)).fetchone() == {"status": "rejected"}


def test_prefect_yaml_deploys_rollout_step_every_ten_minutes() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text("utf-8"))
    [deployment] = [d for d in spec["deployments"] if d["name"] == "rollout-step"]
    assert deployment["entrypoint"] == "flows/rollout_step.py:rollout_step"
    assert deployment["schedules"] == [{"cron": "*/10 * * * *", "timezone": "UTC", "active": True}]
    assert deployment["concurrency_limit"] == 1 and rollout_step.name == "rollout-step"
