"""The drift event starts ``drift-reembed`` for real: served deployment, trigger, flow run.

The test harness's server runs the reactive-triggers and actions services (Prefect 3.9
marks them ``RunInEphemeralServers``), so an emitted event is matched by the deployment
trigger and the automation creates a flow run; ``python -m deployments.serve`` in a
subprocess picks it up and runs it against this test's database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectNotFound

from kbrefresh.cli.demo import SAMPLES, copy_tree
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import ConfigError
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.check import DRIFT_EVENT, kb_resource
from kbrefresh.settings import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "drift-reembed/drift-reembed"
KB = "hc-event"
# Registration (~19 s), then the trigger, the runner's poll and the run (~18 s) measured on
# a quiet machine; the margin is for a loaded one.
DEADLINE_SECONDS = 180


@pytest.fixture
def live_helpcenter(env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Live v1 of the help center with bare chunks (technical answers are hard to find)."""
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")  # MLflow's store costs seconds
    env = Settings()
    work = tmp_path / "hc"
    copy_tree(SAMPLES / "base", work)
    run_refresh(env, RefreshRequest(kb=KB, source=str(work), header_template="{text}"),
                embedder=OfflineEmbedder(dims=64),
                policy=AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None))
    for name in ("smoke", "technical", "general"):
        load_golden(env, KB, SAMPLES / "golden" / f"{name}.jsonl")
    return env


def test_drift_event_runs_the_served_drift_reembed_deployment_to_completion(
    prefect_harness: str, live_helpcenter: Settings, tmp_path: Path,
) -> None:
    _delete_deployment()  # prefect.yaml's test deploys the same name to a work pool
    log = tmp_path / "serve.log"
    env = os.environ | {"PREFECT_API_URL": prefect_harness, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with log.open("w", encoding="utf-8") as out:
        server = subprocess.Popen([sys.executable, "-m", "deployments.serve", "drift-reembed"],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        deployment_id = _wait_for_trigger(server, log, deadline)
        emit_event(DRIFT_EVENT, resource=kb_resource(KB), payload={  # as planned_events() sends it
            "kb": KB, "kl": 0.6, "severity": "severe", "segments": ["technical", "general"]})
        EventsWorker.drain_all()
        run = _wait_for_final_run(server, log, deployment_id, deadline)
    finally:
        server.terminate()
        server.wait(timeout=60)

    assert run.state is not None and run.state.is_completed(), (run.state, _tail(log))
    assert run.parameters == {"params": {"kb": KB, "segment": "technical", "divergence": 0.6,
                                         "urgency": "severe"}}
    with connect(live_helpcenter) as conn:
        version = conn.execute("SELECT status, verdict->'segment'->>'segment' AS segment "
                               "FROM kb_versions WHERE version = 2").fetchone()
        canary = conn.execute("SELECT r.canary_version, r.canary_percent::float AS canary_percent FROM kb_routing r "
                              "JOIN kb k ON k.id = r.kb_id WHERE k.name = %s", (KB,)).fetchone()
    assert version == {"status": "canary", "segment": "technical"}
    assert canary == {"canary_version": 2, "canary_percent": 10}


def test_serve_names_what_it_serves() -> None:
    from deployments.serve import build_deployments, select_deployments

    deployments = build_deployments()
    assert [d.name for d in select_deployments(deployments, ["drift-reembed"])] == [
        "drift-reembed"]
    assert len(select_deployments(deployments, [])) == len(deployments) == 7
    with pytest.raises(ConfigError) as err:
        select_deployments(deployments, ["drift-reembed", "drift"])
    assert str(err.value) == (
        "no deployment named 'drift'; expected one of scheduled-refresh, rollback-kb, "
        "retraining-check, rollout-step, post-deploy-monitor, drift-reembed, urgent-rebrand")


def _delete_deployment() -> None:
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            return
        client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
        client.delete_deployment(deployment.id)


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:]


def _wait_for_trigger(server: subprocess.Popen[Any], log: Path, deadline: float) -> UUID:
    """Poll the API until serve has registered the deployment and its trigger."""
    with get_client(sync_client=True) as client:
        while True:
            assert server.poll() is None, _tail(log)
            try:
                deployment = client.read_deployment_by_name(DEPLOYMENT)
                if client.read_resource_related_automations(
                        f"prefect.deployment.{deployment.id}"):
                    return deployment.id
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, f"no trigger registered\n{_tail(log)}"
            time.sleep(0.5)  # registration happens in another process: poll the API


def _wait_for_final_run(
    server: subprocess.Popen[Any], log: Path, deployment_id: UUID, deadline: float,
) -> FlowRun:
    """Poll the API until the triggered flow run reaches a final state."""
    runs_of = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        while True:
            assert server.poll() is None, _tail(log)
            runs = client.read_flow_runs(flow_run_filter=runs_of)
            assert len(runs) <= 1, [r.name for r in runs]
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return runs[0]
            state = runs[0].state_name if runs else "no flow run yet"
            assert time.monotonic() < deadline, f"{state} after the event\n{_tail(log)}"
            time.sleep(1)  # the run happens in the served process: poll the API
