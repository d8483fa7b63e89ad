"""Serve the kbrefresh flows from this process: ``python -m deployments.serve``.

Works against whatever Prefect API is configured (``PREFECT_API_URL``: a local
``prefect server start`` or Prefect Cloud). No work pool or worker is needed: this
process polls for scheduled and triggered runs and executes them itself.

``scheduled-refresh`` runs monthly (``0 0 1 * *`` UTC) with ``kb`` from
``KBREFRESH_SERVE_KB`` (default ``helpcenter``) and ``source`` from
``KBREFRESH_SERVE_SOURCE`` (default: the bundled sample help center), and on every
``kbrefresh.retrain.requested`` event. ``rollback-kb`` has no schedule: run it from
the UI or ``prefect deployment run 'rollback-kb/rollback-kb'``. ``retraining-check``
runs daily (``0 6 * * *`` UTC) with the same ``kb`` and ``source``. ``urgent-rebrand``
has no schedule: it runs on ``kbrefresh.rebrand.requested`` (the check emits it when
satisfaction drops critically while a rename map is on record) or by hand.
``drift-reembed`` runs on ``kbrefresh.retraining.drift.detected``.

``python -m deployments.serve drift-reembed rollout-step`` serves only the named ones.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.events.schemas.automations import Posture
from prefect.logging import get_logger
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

import kbrefresh
from flows import rollback_kb, rollout_step, scheduled_refresh, urgent_rebrand
from flows.drift_reembed import drift_reembed
from flows.post_deploy_monitor import post_deploy_monitor
from flows.retraining_check import retraining_check
from kbrefresh.errors import ConfigError
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.retraining.check import (
    DRIFT_EVENT,
    KB_RESOURCE_PREFIX,
    REBRAND_EVENT,
    RETRAIN_EVENT,
)

MONTHLY_CRON = "0 0 1 * *"
DAILY_CHECK_CRON = "0 6 * * *"
SAMPLE_SOURCE = Path(kbrefresh.__file__).resolve().parent / "samples" / "helpcenter" / "base"

logger = get_logger("kbrefresh.serve")


def kb_event_trigger(
    deployment: str, event: str, description: str, parameters: dict[str, str]
) -> DeploymentEventTrigger:
    """Run ``deployment`` on ``event`` about ``kbrefresh.kb.<name>``, once per KB.

    ``kb`` comes from the payload or, failing that, from the name in the resource id;
    ``parameters`` adds the deployment's other fields (Jinja templates over the event).
    """
    name_start = len(KB_RESOURCE_PREFIX)
    kb = f"{{{{ event.payload.kb | default(event.resource.id[{name_start}:]) }}}}"
    return DeploymentEventTrigger(
        name=f"{deployment} on {event.rsplit('.', 2)[-2]} {event.rsplit('.', 1)[-1]}",
        description=description,
        enabled=True,
        match={"prefect.resource.id": f"{KB_RESOURCE_PREFIX}*"},
        expect={event},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        parameters={"params": {"kb": kb, **parameters}},
    )


def _source_with_default(default_source: str) -> str:
    return f"{{{{ event.payload.source | default({json.dumps(default_source)}) }}}}"


def retrain_trigger(default_source: str) -> DeploymentEventTrigger:
    """Run scheduled-refresh on ``kbrefresh.retrain.requested`` (keep in step with prefect.yaml)."""
    return kb_event_trigger(
        "scheduled-refresh", RETRAIN_EVENT,
        "A retrain was requested for a knowledge base (drift, feedback, rebrand).",
        {"source": _source_with_default(default_source),
         "reason": '{{ event.payload.reason | default("retrain requested") }}'})


def drift_trigger() -> DeploymentEventTrigger:
    """Run drift-reembed on the drift event with the grown segment (keep in step with prefect.yaml)."""
    return kb_event_trigger(
        "drift-reembed", DRIFT_EVENT,
        "Query drift grew a segment; re-embed it with its profile and canary it.",
        {"segment": "{{ event.payload.segments | first }}",
         "divergence": "{{ event.payload.kl }}",
         "urgency": "{{ event.payload.severity }}"})


def rebrand_trigger(default_source: str) -> DeploymentEventTrigger:
    """Run urgent-rebrand on ``kbrefresh.rebrand.requested`` with the KB's rename map on record."""
    return kb_event_trigger(
        "urgent-rebrand", REBRAND_EVENT,
        "Satisfaction dropped critically while a rename map is on record.",
        {"source": _source_with_default(default_source),
         "reason": '{{ event.payload.reason | default("rebrand requested") }}'})


def build_deployments() -> list[RunnerDeployment]:
    """Return the served deployments; invalid defaults fail here, before serving."""
    defaults = RefreshRequest(
        kb=os.environ.get("KBREFRESH_SERVE_KB", "helpcenter"),
        source=os.environ.get("KBREFRESH_SERVE_SOURCE", str(SAMPLE_SOURCE)),
    )
    # Called outside an event loop, async_dispatch returns the deployment itself.
    refresh = cast(RunnerDeployment, scheduled_refresh.to_deployment(
        name="scheduled-refresh",
        schedules=[Cron(MONTHLY_CRON, timezone="UTC")],
        parameters={"params": {"kb": defaults.kb, "source": defaults.source}},
        triggers=[retrain_trigger(defaults.source)],
        tags=["kbrefresh"],
    ))
    rollback = cast(
        RunnerDeployment, rollback_kb.to_deployment(name="rollback-kb", tags=["kbrefresh"])
    )
    check = cast(RunnerDeployment, retraining_check.to_deployment(
        name="retraining-check",
        schedules=[Cron(DAILY_CHECK_CRON, timezone="UTC")],
        parameters={"params": {"kb": defaults.kb, "source": defaults.source}},
        tags=["kbrefresh"],
    ))
    rollout = cast(RunnerDeployment, rollout_step.to_deployment(
        name="rollout-step", schedules=[Cron("*/10 * * * *", timezone="UTC")],
        parameters={"params": {"kb": defaults.kb}}, tags=["kbrefresh", "rollout"],
    ))
    # No schedule: publishes create its runs (2-hourly for a day, then daily for a week).
    monitor = cast(RunnerDeployment, post_deploy_monitor.to_deployment(
        name="post-deploy-monitor", parameters={"params": {"kb": defaults.kb}},
        tags=["kbrefresh", "monitor"],
    ))
    reembed = cast(RunnerDeployment, drift_reembed.to_deployment(
        name="drift-reembed", triggers=[drift_trigger()], tags=["kbrefresh", "drift"],
    ))
    rebrand = cast(RunnerDeployment, urgent_rebrand.to_deployment(
        name="urgent-rebrand", triggers=[rebrand_trigger(defaults.source)],
        tags=["kbrefresh", "rebrand"],
    ))
    return [refresh, rollback, check, rollout, monitor, reembed, rebrand]


def select_deployments(
    deployments: list[RunnerDeployment], names: list[str]
) -> list[RunnerDeployment]:
    """Keep the deployments named in ``names`` (all of them when it is empty).

    Raises:
        ConfigError: a name is not one of the served deployments.
    """
    known = [d.name for d in deployments]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no deployment named {unknown[0]!r}; expected one of "
                          f"{', '.join(known)}")
    return [d for d in deployments if not names or d.name in names]


def main(argv: list[str] | None = None) -> None:
    """Serve the deployments (or those named on the command line) until interrupted."""
    deployments = select_deployments(build_deployments(), sys.argv[1:] if argv is None else argv)
    logger.info(
        "serving %s against %s; scheduled-refresh runs %r UTC and on %r events",
        ", ".join(repr(d.name) for d in deployments), PREFECT_API_URL.value() or "an ephemeral API",
        MONTHLY_CRON, RETRAIN_EVENT,
    )
    serve(*deployments, print_starting_message=False)


if __name__ == "__main__":
    main()
