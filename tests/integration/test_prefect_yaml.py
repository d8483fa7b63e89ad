"""``prefect deploy --all`` from the repo's prefect.yaml, against the Prefect test harness."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import CronSchedule
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import Automation
from prefect.exceptions import ObjectAlreadyExists
from prefect.workers.process import ProcessWorker

from deployments.serve import rebrand_trigger, retrain_trigger
from flows import scheduled_refresh

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POOL = "kbrefresh-process"


@pytest.fixture(scope="module")
def deployed(prefect_harness: str) -> str:
    """Create the process work pool and run ``prefect --no-prompt deploy --all`` once."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(
                name=POOL, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ))
        except ObjectAlreadyExists:
            pass
    env = os.environ | {"PREFECT_API_URL": prefect_harness}
    env.pop("KBREFRESH_REPO_DIR", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_scheduled_refresh_is_deployed_monthly_to_the_process_pool(deployed: str) -> None:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("scheduled-refresh/scheduled-refresh")

    assert deployment.work_pool_name == POOL
    assert deployment.entrypoint == "flows/scheduled_refresh.py:scheduled_refresh"
    assert deployment.parameters == {
        "params": {"kb": "helpcenter", "source": "kbrefresh/samples/helpcenter/base"}
    }
    assert deployment.description == scheduled_refresh.description
    assert deployment.pull_steps == [{
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $KBREFRESH_REPO_DIR }}"
        }
    }]
    [schedule] = deployment.schedules
    assert _cron(schedule) == ("0 0 1 * *", "UTC", True)
    assert "RefreshRequest" in str(deployment.parameter_openapi_schema)


def test_rollback_is_deployed_without_a_schedule(deployed: str) -> None:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("rollback-kb/rollback-kb")
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}"
        )

    assert deployment.work_pool_name == POOL
    assert deployment.schedules == []
    assert automations == []


def test_retrain_event_triggers_a_refresh_with_the_event_parameters(deployed: str) -> None:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("scheduled-refresh/scheduled-refresh")
        [automation] = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}"
        )

    trigger = automation.trigger
    assert automation.enabled
    assert trigger.model_dump(include={"expect", "match", "for_each", "posture", "threshold"}) == {
        "expect": {"kbrefresh.retrain.requested"},
        "match": {"prefect.resource.id": "kbrefresh.kb.*"},
        "for_each": {"prefect.resource.id"},
        "posture": "Reactive",
        "threshold": 1,
    }
    [action] = automation.actions
    assert action.type == "run-deployment" and action.deployment_id == deployment.id

    named = _render(automation, "kbrefresh.kb.helpcenter",
                    {"kb": "it's; drop--ünï", "source": "/srv/docs", "reason": "drift 0.6"})
    assert named == {"params": {"kb": "it's; drop--ünï", "source": "/srv/docs",
                                "reason": "drift 0.6"}}
    bare = _render(automation, "kbrefresh.kb.helpcenter", {})
    assert bare == {"params": {"kb": "helpcenter", "source": "kbrefresh/samples/helpcenter/base",
                               "reason": "retrain requested"}}


def test_served_trigger_is_the_prefect_yaml_trigger() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    [refresh] = [d for d in spec["deployments"] if d["name"] == "scheduled-refresh"]
    [trigger] = refresh["triggers"]

    served = retrain_trigger(refresh["parameters"]["params"]["source"])

    assert DeploymentEventTrigger.model_validate(trigger).model_dump() == served.model_dump()


def test_served_rebrand_trigger_is_the_prefect_yaml_trigger() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    [refresh] = [d for d in spec["deployments"] if d["name"] == "scheduled-refresh"]
    [rebrand] = [d for d in spec["deployments"] if d["name"] == "urgent-rebrand"]
    [trigger] = rebrand["triggers"]

    served = rebrand_trigger(refresh["parameters"]["params"]["source"])

    assert DeploymentEventTrigger.model_validate(trigger).model_dump() == served.model_dump()


def _cron(schedule: DeploymentSchedule) -> tuple[str, str | None, bool]:
    assert isinstance(schedule.schedule, CronSchedule)
    return schedule.schedule.cron, schedule.schedule.timezone, schedule.active


def _render(automation: Automation, resource_id: str, payload: dict[str, Any]) -> Any:
    """Render the action's parameters the way the server does when the event arrives."""
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    event = ReceivedEvent(
        occurred=datetime.now(UTC), event="kbrefresh.retrain.requested",
        resource={"prefect.resource.id": resource_id}, payload=payload, id=uuid4(),
    )
    parameters = copy.deepcopy(automation.actions[0].parameters) or {}
    RunDeployment._upgrade_v1_templates(parameters)
    return hydrate(parameters, HydrationContext(render_jinja=True, raise_on_error=True,
                                                jinja_context={"event": event}))


def test_drift_event_starts_drift_reembed_with_the_segment(deployed: str) -> None:
    from kbrefresh.retraining.reembed_request import ReembedRequest

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("drift-reembed/drift-reembed")
        [automation] = client.read_resource_related_automations(
            f"prefect.deployment.{deployment.id}"
        )
    assert automation.enabled
    assert automation.trigger.model_dump(include={"expect", "match", "for_each"}) == {
        "expect": {"kbrefresh.retraining.drift.detected"},
        "match": {"prefect.resource.id": "kbrefresh.kb.*"},
        "for_each": {"prefect.resource.id"},
    }
    [action] = automation.actions
    assert action.type == "run-deployment" and action.deployment_id == deployment.id
    # The payload planned_events() emits for drift.
    rendered = _render(automation, "kbrefresh.kb.helpcenter", {
        "kb": "helpcenter", "kl": 0.6, "severity": "severe",
        "segments": ["technical", "billing"]})
    params = ReembedRequest.model_validate(rendered["params"])
    assert (params.kb, params.segment, params.divergence, params.urgency) == (
        "helpcenter", "technical", 0.6, "severe")


def test_served_drift_trigger_is_the_prefect_yaml_trigger() -> None:
    from deployments.serve import drift_trigger

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    [reembed] = [d for d in spec["deployments"] if d["name"] == "drift-reembed"]
    [trigger] = reembed["triggers"]
    assert DeploymentEventTrigger.model_validate(trigger).model_dump() == (
        drift_trigger().model_dump())
