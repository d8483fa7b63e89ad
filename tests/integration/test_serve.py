"""``python -m deployments.serve`` registers both deployments with the configured API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.events.schemas.automations import Automation
from prefect.exceptions import ObjectNotFound

from deployments.serve import SAMPLE_SOURCE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAMES = ("scheduled-refresh/scheduled-refresh", "rollback-kb/rollback-kb",
         "retraining-check/retraining-check", "rollout-step/rollout-step",
         "post-deploy-monitor/post-deploy-monitor", "urgent-rebrand/urgent-rebrand")


def test_serve_registers_every_flow_without_a_work_pool(prefect_harness: str) -> None:
    _delete_deployments()  # another test may have deployed the same names to a work pool
    env = os.environ | {"PREFECT_API_URL": prefect_harness, "KBREFRESH_SERVE_KB": "served-kb"}
    env.pop("KBREFRESH_SERVE_SOURCE", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        refresh, rollback, automation = _wait_for_registration(server)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)

    assert refresh.work_pool_name is None and rollback.work_pool_name is None
    assert refresh.parameters == {"params": {"kb": "served-kb", "source": str(SAMPLE_SOURCE)}}
    [schedule] = refresh.schedules
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 0 1 * *", "UTC")
    assert rollback.schedules == []
    assert automation.trigger.model_dump(include={"expect", "match"}) == {
        "expect": {"kbrefresh.retrain.requested"},
        "match": {"prefect.resource.id": "kbrefresh.kb.*"},
    }
    assert ("serving 'scheduled-refresh', 'rollback-kb', 'retraining-check', 'rollout-step',"
            " 'post-deploy-monitor', 'drift-reembed', 'urgent-rebrand' against") in output, output


def _delete_deployments() -> None:
    with get_client(sync_client=True) as client:
        for name in NAMES:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                pass


def _wait_for_registration(
    server: subprocess.Popen[str],
) -> tuple[DeploymentResponse, DeploymentResponse, Automation]:
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                refresh, rollback, *_others = (client.read_deployment_by_name(n) for n in NAMES)
                automations = client.read_resource_related_automations(
                    f"prefect.deployment.{refresh.id}"
                )
                if automations:
                    return refresh, rollback, automations[0]
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, "serve did not register its deployments in 60 s"
            time.sleep(0.5)  # registration happens in another process: poll the API
